"""The monitoring stage: its files rendered by the role's own tasks, checked by promtool.

roles/monitoring/tasks/files.yml (the alert rules and the scrape
configuration, each written through ``validate: promtool check ...``) and
grafana.yml run on localhost for every shipped inventory; then promtool
checks the configuration and unit-tests every alert (``promtool test
rules``), and the tests read the scrape targets. The vLLM watchdog's
counters are parsed by prometheus_client's parser and ``promtool check
metrics``, and its loop is run against a stand-in API. The lab runs the
same files for real (.ci/monitoring-check).

promtool comes from Debian's prometheus package, unpacked by ``make unit``
($SERVEKIT_PROMTOOL), amtool from Debian's prometheus-alertmanager the same
way ($SERVEKIT_AMTOOL); without them these tests fail and say how to get them.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, write_play
from prometheus_client.parser import text_string_to_metric_families

INVENTORIES = ["lab", "example-2node-roce", "example-2x8-h100"]
LAB_HOSTS = {"lab-head": "10.77.0.2", "lab-worker-1": "10.77.0.3"}


def _debian_tool(name: str, package: str) -> str:
    """``name`` from $SERVEKIT_<NAME>, PATH, what `make unit` unpacked from Debian's ``package``
    into .cache/tools, or /usr/bin; fails saying how to get it."""
    env = f"SERVEKIT_{name.upper()}"
    named = os.environ.get(env)
    unpacked = ROOT / ".cache/tools" / package.removeprefix("prometheus-") / "usr/bin" / name
    found = named or shutil.which(name) or next(
        (str(p) for p in (unpacked, Path("/usr/bin") / name) if p.is_file()), None)
    if not found or not os.access(found, os.X_OK):
        pytest.fail(f"{name} not found ({'$' + env + '=' + named if named else 'not on PATH'}): "
                    f"run `make unit`, which unpacks Debian's {package} package into "
                    f"{unpacked.parent.parent.parent.relative_to(ROOT)}, or set {env}")
    return found


def _promtool() -> str:
    return _debian_tool("promtool", "prometheus")


def _amtool() -> str:
    return _debian_tool("amtool", "prometheus-alertmanager")


def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_amtool(), *args], capture_output=True, text=True, check=False, timeout=60)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, check=False, timeout=60)


def _inventory(tmp: Path, name: str) -> Path:
    """A shipped inventory; the lab's with the hosts.yml `servekit lab up` would write."""
    if name != "lab":
        return ROOT / "inventory" / name / "hosts.yml"
    inv = tmp / "lab"
    shutil.copytree(ROOT / "inventory" / "lab" / "group_vars", inv / "group_vars",
                    ignore=shutil.ignore_patterns("lab.yml", "vault.yml"))
    hosts = {"all": {"children": {"cluster": {"children": {
        "head": {"hosts": {"lab-head": {"ansible_host": LAB_HOSTS["lab-head"]}}},
        "workers": {"hosts": {"lab-worker-1": {"ansible_host": LAB_HOSTS["lab-worker-1"]}}}}}}}}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (inv / "group_vars" / "all" / "lab.yml").write_text(yaml.safe_dump({
        "lab_wheelhouse": "/opt/servekit/wheelhouse", "lab_model_source": str(tmp / "model")}))
    return inv / "hosts.yml"


def render(tmp: Path, inventory: str, tasks_from: str = "files.yml",
           **extra_vars) -> subprocess.CompletedProcess:
    """Run the monitoring role's ``tasks_from`` on localhost for each inventory host (files: tmp/out/HOST)."""
    out = str(tmp / "out" / "{{ inventory_hostname }}")
    play = [{
        "name": "Render the monitoring files with the role's own tasks",
        "hosts": "head:workers",
        "gather_facts": False,
        "roles": ["cluster"],
        "tasks": [
            {"ansible.builtin.file": {"path": out, "state": "directory", "mode": "0755"}},
            # the role's own checks first, as tasks/main.yml runs them (and its defaults, for the conditions)
            {"ansible.builtin.import_role": {"name": "monitoring", "tasks_from": "check.yml"}},
        ] + ([] if tasks_from == "check.yml" else [
            {"ansible.builtin.include_role": {"name": "monitoring", "tasks_from": tasks_from},
             # Prometheus's files on its host, Grafana's on its host
             "when": {"files.yml": "inventory_hostname == monitoring_host",
                      "grafana.yml": "inventory_hostname == monitoring_grafana_host"}[tasks_from]},
        ]),
    }]
    values = {"__monitoring_config_dir": out, "__monitoring_promtool": _promtool(),
              "__monitoring_amtool": _amtool(), "__monitoring_reload": False,
              # Alertmanager's config goes to the prometheus group on a node; here, ours
              "__monitoring_alertmanager_group": grp.getgrgid(os.getgid()).gr_name,
              "monitoring_grafana_provisioning_dir": out + "/grafana",
              "monitoring_grafana_dashboards_dir": out + "/dashboards", **extra_vars}
    args = ["-i", _inventory(tmp, inventory), write_play(tmp / "render.yml", play),
            "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}"]
    for key, value in values.items():
        args += ["-e", json.dumps({key: value})]
    return ansible_playbook(*args, env={"ANSIBLE_NOCOLOR": "1"})


def _head(inventory: str) -> str:
    if inventory == "lab":
        return "lab-head"
    hosts = yaml.safe_load((ROOT / "inventory" / inventory / "hosts.yml").read_text())

    def find(node):
        if isinstance(node, dict):
            if "head" in node:
                return next(iter(node["head"]["hosts"]))
            for value in node.values():
                if (found := find(value)) is not None:
                    return found
        return None
    return find(hosts)


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """``renders(inventory)``: the folder of this module's one render of ``inventory``; GPU exporters
    on for the GPU examples."""
    done: dict[str, Path] = {}

    def get(inventory: str) -> Path:
        if inventory not in done:
            tmp = tmp_path_factory.mktemp(inventory)
            extra = {} if inventory == "lab" else {"monitoring_gpu_exporter": "enabled"}
            proc = render(tmp, inventory, **extra)
            assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
            done[inventory] = tmp
        return done[inventory]
    return get


@pytest.fixture(params=INVENTORIES)
def rendered(request, renders) -> tuple[str, Path]:
    """(inventory, the Prometheus host's output dir)."""
    return request.param, renders(request.param) / "out" / _head(request.param)


def _config(out: Path) -> dict:
    return yaml.safe_load((out / "prometheus.yml").read_text())


def _targets(config: dict, job: str) -> dict[str, str]:
    for scrape in config["scrape_configs"]:
        if scrape["job_name"] == job:
            return {t: sc["labels"]["node"] for sc in scrape["static_configs"] for t in sc["targets"]}
    return {}


def test_promtool_checks_the_rendered_config_and_rules(rendered):
    _inventory_name, out = rendered
    proc = promtool("check", "config", str(out / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
    assert _config(out)["rule_files"] == [str(out / "servekit-rules.yml")]


def test_lab_targets_come_from_the_inventory(renders):
    tmp_path = renders("lab")  # the module's one render of the lab inventory
    config = _config(tmp_path / "out" / "lab-head")
    head, worker = LAB_HOSTS["lab-head"], LAB_HOSTS["lab-worker-1"]
    assert _targets(config, "node") == {f"{head}:9100": "lab-head", f"{worker}:9100": "lab-worker-1"}
    assert _targets(config, "ray") == {f"{head}:6384": "lab-head", f"{worker}:6384": "lab-worker-1"}
    assert _targets(config, "vllm") == {f"{head}:8000": "lab-head"}
    assert _targets(config, "prometheus") == {f"{head}:9090": "lab-head"}, "Prometheus on the data address"
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": [f"{head}:9093"]}]}]}
    assert _targets(config, "dcgm") == {}, "no GPU on the lab: no DCGM exporter"
    vllm = next(s for s in config["scrape_configs"] if s["job_name"] == "vllm")
    assert vllm["scheme"] == "http"  # the lab's API has no TLS (inventory/lab cluster_api_tls: false)
    assert config["global"]["scrape_interval"] == "5s", "the lab inventory's short interval"
    assert not (tmp_path / "out" / "lab-worker-1" / "prometheus.yml").exists(), "Prometheus only on the head"


def test_gpu_clusters_scrape_dcgm_and_vllm_over_https(rendered):
    name, out = rendered
    config = _config(out)
    vllm = next(s for s in config["scrape_configs"] if s["job_name"] == "vllm")
    if name == "lab":
        assert _targets(config, "dcgm") == {} and vllm["scheme"] == "http"
        return
    nodes = set(_targets(config, "node").values())
    assert len(nodes) >= 2
    assert set(_targets(config, "dcgm").values()) == nodes
    assert all(t.endswith(":9400") for t in _targets(config, "dcgm"))
    assert vllm["scheme"] == "https", "the example inventories keep the proxy's TLS (cluster_api_tls default)"


def test_a_wildcard_listen_address_is_refused(tmp_path):
    proc = render(tmp_path, "lab", tasks_from="check.yml", monitoring_prometheus_address="0.0.0.0")
    assert proc.returncode != 0
    assert "monitoring_prometheus_address = \"0.0.0.0\": Prometheus has no authentication" in proc.stdout


def test_a_monitoring_host_outside_the_cluster_is_refused(tmp_path):
    proc = render(tmp_path, "lab", tasks_from="check.yml", monitoring_host="elsewhere")
    assert proc.returncode != 0
    assert "monitoring_host = \"elsewhere\"" in proc.stdout and "lab-head, lab-worker-1" in proc.stdout


# --------------------------------------------------------------------------
# Alertmanager's configuration, checked by amtool
# --------------------------------------------------------------------------

# Secrets as a vault would give them: none may reach the play's output.
SECRETS = {"hook": "https://hooks.example.net/T0K3N-webhook", "pw": "s3cr3t-smtp-pw",
           "slack": "https://chat.example.net/hooks/T0K3N-slack"}
RECEIVERS = [
    {"name": "ops-hook", "type": "webhook", "url": SECRETS["hook"]},
    {"name": "ops-mail", "type": "email", "to": "oncall@example.net", "from": "servekit@example.net",
     "smarthost": "smtp.example.net:587", "auth_username": "servekit", "auth_password": SECRETS["pw"]},
    {"name": "ops-chat", "type": "slack", "api_url": SECRETS["slack"], "channel": "#gpu-alerts"},
]


def _alertmanager(out: Path) -> dict:
    return yaml.safe_load((out / "alertmanager.yml").read_text())


def test_amtool_checks_alertmanager_config_as_each_inventory_sets_it(rendered):
    name, out = rendered
    path = out / "alertmanager.yml"
    proc = amtool("check-config", str(path))
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o640", "may hold receivers' secrets: not world-readable"
    config = _alertmanager(out)
    assert config["receivers"][0] == {"name": "null"} and config["route"]["receiver"] == "null"
    if name == "lab":
        # the lab's "someone": .ci/webhook-receiver on the bridge's host address
        assert config["receivers"][1:] == [{"name": "lab-webhook", "webhook_configs": [
            {"url": "http://10.213.0.1:19095/alerts", "send_resolved": True}]}], config["receivers"]
        assert config["route"]["routes"] == [{"receiver": "lab-webhook", "continue": True}]
    else:
        assert config["receivers"] == [{"name": "null"}]
        assert "routes" not in config["route"]
    # every alert grouped per alert and per node: the label the rules put the node in
    assert config["route"]["group_by"] == ["alertname", "node"]
    assert (config["route"]["group_wait"], config["route"]["group_interval"],
            config["route"]["repeat_interval"]) == (("5s", "30s") if name == "lab" else ("30s", "300s")) + (
                "14400s",), "the role's defaults; the lab's short ones (inventory/lab monitoring.yml)"
    node_down, critical = config["inhibit_rules"]
    assert node_down["source_matchers"] == ['alertname="NodeDown"'] and node_down["equal"] == ["node"]
    silenced = set(re.fullmatch(r'alertname=~"(.*)"', node_down["target_matchers"][0]).group(1).split("|"))
    # every other alert of its node; a deployment with no replica left is the cluster's, not a node's
    assert silenced == set(_alerts(out)) - {"NodeDown", "DeploymentUnavailable"}, \
        "NodeDown silences every other alert of its node"
    assert critical == {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                        "equal": ["alertname", "node"]}
    # Prometheus's config with the alerting block still passes promtool (test_promtool_checks_...)
    assert _config(out)["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0].endswith(":9093")


def test_every_receiver_type_passes_amtool_and_no_secret_reaches_the_output(tmp_path):
    proc = render(tmp_path, "lab", monitoring_alert_receivers=RECEIVERS)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for secret in SECRETS.values():
        assert secret not in proc.stdout + proc.stderr
    out = tmp_path / "out" / "lab-head"
    assert amtool("check-config", str(out / "alertmanager.yml")).returncode == 0
    config = _alertmanager(out)
    assert config["route"]["routes"] == [{"receiver": r["name"], "continue": True} for r in RECEIVERS]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["null"] == {"name": "null"}
    assert receivers["ops-hook"]["webhook_configs"] == [{"url": SECRETS["hook"], "send_resolved": True}]
    assert receivers["ops-mail"]["email_configs"] == [{
        "to": "oncall@example.net", "from": "servekit@example.net", "smarthost": "smtp.example.net:587",
        "auth_username": "servekit", "auth_password": SECRETS["pw"], "send_resolved": True}]
    assert receivers["ops-chat"]["slack_configs"] == [
        {"api_url": SECRETS["slack"], "channel": "#gpu-alerts", "send_resolved": True}]


REMOTE_WRITE = [
    {"name": "team", "url": "https://prom.example.net/api/v1/write", "auth": "basic",
     "username": "servekit", "password": "rw-Pa55-s3cret", "ca_file": "/etc/ssl/team-ca.pem"},
    {"name": "mimir", "url": "https://mimir.example.net/api/v1/push", "auth": "bearer", "token": "rw-T0K3N"},
    {"name": "local", "url": "http://10.0.0.9:9090/api/v1/write", "auth": "none"},
]


def test_remote_write_passes_promtool_and_its_secrets_stay_in_their_own_files(tmp_path):
    """issue 25 item 3: every series to a team's Prometheus; the config promtool checks
    names password and token files, root:prometheus 0640, and no secret is in the
    config or the play's output."""
    proc = render(tmp_path, "lab", monitoring_remote_write=REMOTE_WRITE)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = tmp_path / "out" / "lab-head"
    text = (out / "prometheus.yml").read_text()
    for secret in ("rw-Pa55-s3cret", "rw-T0K3N"):
        assert secret not in proc.stdout + proc.stderr and secret not in text
    assert promtool("check", "config", str(out / "prometheus.yml")).returncode == 0
    team, mimir, local = _config(out)["remote_write"]
    assert team == {"name": "team", "url": "https://prom.example.net/api/v1/write",
                    "basic_auth": {"username": "servekit",
                                   "password_file": str(out / "servekit-remote-write-0.secret")},
                    "tls_config": {"ca_file": "/etc/ssl/team-ca.pem", "insecure_skip_verify": False}}
    assert mimir["authorization"] == {"type": "Bearer",
                                      "credentials_file": str(out / "servekit-remote-write-1.secret")}
    assert local == {"name": "local", "url": "http://10.0.0.9:9090/api/v1/write"}
    assert (out / "servekit-remote-write-0.secret").read_text() == "rw-Pa55-s3cret"
    assert (out / "servekit-remote-write-1.secret").read_text() == "rw-T0K3N"
    assert oct((out / "servekit-remote-write-1.secret").stat().st_mode & 0o777) == "0o640"
    assert not (out / "servekit-remote-write-2.secret").exists()

    # a run with one target left: the others' secret files go (the same files, rendered again)
    again = tmp_path / "again"
    shutil.copytree(tmp_path / "out", again / "out")
    proc = render(again, "lab", monitoring_remote_write=REMOTE_WRITE[1:2])
    assert proc.returncode == 0, proc.stdout[-4000:]
    out = again / "out" / "lab-head"
    assert sorted(p.name for p in out.glob("servekit-remote-write-*")) == ["servekit-remote-write-0.secret"]
    assert (out / "servekit-remote-write-0.secret").read_text() == "rw-T0K3N"
    assert [t["name"] for t in _config(out)["remote_write"]] == ["mimir"]


def test_amtool_refuses_a_receiver_it_cannot_use_and_the_failure_shows_no_secret(tmp_path):
    """The validate step can fail: an email receiver with no smarthost (the validate stage's rule skipped)."""
    broken = [dict(RECEIVERS[1], smarthost="")]
    proc = render(tmp_path, "lab", monitoring_alert_receivers=broken)
    assert proc.returncode != 0
    assert "Write Alertmanager's configuration" in proc.stdout
    assert SECRETS["pw"] not in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "lab-head" / "alertmanager.yml").exists()


def test_alertmanager_can_be_turned_off(tmp_path):
    proc = render(tmp_path, "lab", monitoring_alertmanager_enabled=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    out = tmp_path / "out" / "lab-head"
    assert not (out / "alertmanager.yml").exists()
    assert "alerting" not in _config(out)
    assert promtool("check", "config", str(out / "prometheus.yml")).returncode == 0


def test_a_wildcard_alertmanager_address_is_refused(tmp_path):
    proc = render(tmp_path, "lab", tasks_from="check.yml", monitoring_alertmanager_address="::")
    assert proc.returncode != 0
    assert 'monitoring_alertmanager_address = "::": Alertmanager has no authentication' in proc.stdout


# --------------------------------------------------------------------------
# every alert, unit-tested with promtool test rules
# --------------------------------------------------------------------------


def _alerts(out: Path) -> dict[str, dict]:
    groups = yaml.safe_load((out / "servekit-rules.yml").read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def _seconds(duration: str | None) -> int:
    return int(duration.rstrip("s")) if duration else 0


def _rules_test(out: Path) -> dict:
    """A promtool test file for the rendered rules: each alert fires on its condition after its `for`,
    and not before; the values come from the rendered rules (the inventory's thresholds)."""
    alerts = _alerts(out)
    wait = max(_seconds(a.get("for")) for a in alerts.values())
    threshold = float(re.search(r"> ([0-9.]+)$", alerts["VllmKvCacheHigh"]["expr"]).group(1))
    window = int(re.search(r"\[([0-9]+)s\]", alerts["VllmRankRestarted"]["expr"]).group(1))
    expiry = int(re.search(r"< ([0-9]+)$", alerts["ApiCertificateExpiringSoon"]["expr"]).group(1))
    expiry_days = expiry // 86400
    kv = round(threshold + (1 - threshold) / 2, 4)
    steps = (wait + 300) // 15
    unit = 'unit="servekit-vllm.service"'
    late = f"{wait + 120}s"
    # what the certificate alert's summary says is left at `late` (Prometheus's humanizeDuration)
    left_s = (expiry_days - 1) * 86400 - (wait + 120)
    left = f"{left_s // 86400}d {left_s % 86400 // 3600}h {left_s % 3600 // 60}m {left_s % 60}s"
    series = [
        # the head's probes fail from the start; its /metrics answers
        {"series": f'servekit_watchdog_last_probe_success{{node="head",{unit}}}', "values": f"0x{steps}"},
        {"series": 'up{job="vllm",node="head"}', "values": f"1x{steps}"},
        # the worker node stops answering after the first scrape
        {"series": 'up{job="node",node="worker"}', "values": f"1 0x{steps}"},
        {"series": 'up{job="node",node="head"}', "values": f"1x{steps}"},
        {"series": 'up{job="ray",node="worker"}', "values": f"1 0x{steps}"},
        {"series": 'vllm:kv_cache_usage_perc{engine="0",model_name="m",node="head"}',
         "values": f"{kv}x{steps}"},
        # the vLLM unit on the head restarted once, 60 s in
        {"series": f'servekit_watchdog_unit_start_time_seconds{{node="head",{unit}}}',
         "values": f"100x3 160x{steps}"},
        {"series": f'servekit_watchdog_unit_start_time_seconds{{node="worker",{unit}}}',
         "values": f"100x{steps}"},
        {"series": 'DCGM_FI_DEV_XID_ERRORS{gpu="0",node="head"}', "values": f"0x3 79x{steps}"},
        # the API's certificate (promtool's clock starts at 0): one ends one day before the alert's
        # window does, the other one day after it
        {"series": 'servekit_tls_cert_not_after_seconds{node="head",path="/a.crt"}',
         "values": f"{(expiry_days - 1) * 86400}x{steps}"},
        {"series": 'servekit_tls_cert_not_after_seconds{node="worker",path="/b.crt"}',
         "values": f"{(expiry_days + 1) * 86400}x{steps}"},
        # replica engines: deployment d's replica 2 (on worker) answers scrapes but the router keeps
        # it out of rotation; deployment e's only replica stops answering altogether; d's replica 3
        # answers /health and scrapes, but the rotation keeper took it out (its completions hang):
        # the router's gauge keeps its last value, 1
        *({"series": f'vllm_router_worker_health{{job="router",node="head",worker="{w}"}}', "values": v}
          for w, v in (("http://h:8100", f"1x{steps}"), ("http://w:8100", f"1 0x{steps}"),
                       ("http://h:8101", f"1 0x{steps}"), ("http://w:8101", f"1x{steps}"))),
        *({"series": f'servekit_router_keeper_out{{job="node",node="head",worker="{w}"}}', "values": v}
          for w, v in (("http://h:8100", f"0x{steps}"), ("http://w:8101", f"0 1x{steps}"))),
        *({"series": f'up{{job="vllm_replica",node="{n}",deployment="{d}",replica="{r}",worker="{w}"}}',
           "values": v}
          for n, d, r, w, v in (("head", "d", "1", "http://h:8100", f"1x{steps}"),
                                ("worker", "d", "2", "http://w:8100", f"1x{steps}"),
                                ("head", "e", "1", "http://h:8101", f"1 0x{steps}"),
                                ("worker", "d", "3", "http://w:8101", f"1x{steps}"))),
    ]
    fired = [
        {"alertname": "VllmNotReady", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "node": "head", "unit": "servekit-vllm.service"},
            "exp_annotations": {"summary": "vLLM on head does not serve completions"}}]},
        # (while the restart is inside its window: no `for`, so not at the late time)
        {"alertname": "VllmRankRestarted", "eval_time": "120s", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "node": "head", "unit": "servekit-vllm.service"},
            "exp_annotations": {"summary": f"vLLM on head restarted in the last {window} s"}}]},
        {"alertname": "VllmKvCacheHigh", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "node": "head", "model_name": "m"},
            "exp_annotations": {"summary": f"KV cache of m on head at {kv * 100:g}%"}}]},
        {"alertname": "NodeDown", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "node": "worker", "job": "node"},
            "exp_annotations": {"summary": "node worker does not answer scrapes"}}]},
        {"alertname": "ScrapeTargetDown", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "node": "worker", "job": "ray"},
            "exp_annotations": {"summary": "ray on worker does not answer scrapes"}}]},
        {"alertname": "ReplicaOutOfRotation", "exp_alerts": [
            {"exp_labels": {"severity": "warning", "node": n, "worker": w, "deployment": d, "replica": r},
             "exp_annotations": {"summary": f"{d} replica {r} on {n} is out of rotation"}}
            for w, d, r, n in (("http://w:8100", "d", "2", "worker"), ("http://h:8101", "e", "1", "head"),
                               ("http://w:8101", "d", "3", "worker"))]},
        {"alertname": "DeploymentUnavailable", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "deployment": "e"},
            "exp_annotations": {"summary": "no replica of e is in rotation"}}]},
        {"alertname": "GpuXidError", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "node": "head", "gpu": "0"},
            "exp_annotations": {"summary": "GPU 0 on head reported Xid 79"}}]},
        # only the certificate inside the window (not the one on worker)
        {"alertname": "ApiCertificateExpiringSoon", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "node": "head", "path": "/a.crt"},
            "exp_annotations": {"summary": f"API certificate /a.crt on head expires in {left}"}}]},
    ]
    tests = [{"interval": "15s", "input_series": series,
              "alert_rule_test": [{"eval_time": late, **case} for case in fired]}]
    # before the conditions held for `for`, the waiting alerts are silent, and no restart yet
    early = [{"alertname": name, "eval_time": "30s", "exp_alerts": []}
             for name, rule in alerts.items() if _seconds(rule.get("for")) > 30] + [
        {"alertname": "VllmRankRestarted", "eval_time": "30s", "exp_alerts": []}]
    tests.append({"interval": "15s", "input_series": series, "alert_rule_test": early})
    # a restart older than the window no longer fires
    tests.append({"interval": "15s", "input_series": series, "alert_rule_test": [
        {"alertname": "VllmRankRestarted", "eval_time": f"{window + 180}s", "exp_alerts": []}]})
    assert set(alerts) == {case["alertname"] for case in fired}, "every alert needs a case here"
    return {"rule_files": [str(out / "servekit-rules.yml")], "evaluation_interval": "15s", "tests": tests}


def test_every_alert_passes_promtool_test_rules(rendered, tmp_path):
    _name, out = rendered
    assert promtool("check", "rules", str(out / "servekit-rules.yml")).returncode == 0
    test_file = tmp_path / "alerts-test.yml"
    test_file.write_text(yaml.safe_dump(_rules_test(out), sort_keys=False))
    proc = promtool("test", "rules", str(test_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules_catches_a_wrong_expectation(rendered, tmp_path):
    """The harness can fail: an alert expected on the wrong node is refused."""
    _name, out = rendered
    broken = _rules_test(out)
    broken["tests"][0]["alert_rule_test"][3]["exp_alerts"][0]["exp_labels"]["node"] = "head"
    test_file = tmp_path / "broken-test.yml"
    test_file.write_text(yaml.safe_dump(broken, sort_keys=False))
    assert promtool("test", "rules", str(test_file)).returncode != 0


# --------------------------------------------------------------------------
# Grafana provisioning
# --------------------------------------------------------------------------


def test_grafana_provisioning_and_dashboards(tmp_path):
    proc = render(tmp_path, "example-2node-roce", tasks_from="grafana.yml",
                  monitoring_grafana_host=_head("example-2node-roce"))
    assert proc.returncode == 0, proc.stdout[-4000:]
    out = tmp_path / "out" / _head("example-2node-roce")
    source = yaml.safe_load((out / "grafana/datasources/servekit.yml").read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://192.168.100.1:9090"
    provider = yaml.safe_load((out / "grafana/dashboards/servekit.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == str(out / "dashboards")
    ray = json.loads((out / "dashboards/ray-default.json").read_text())
    assert ray["uid"] == "rayDefaultDashboard" and len(ray["panels"]) > 10
    vllm = json.loads((out / "dashboards/vllm-servekit.json").read_text())
    exprs = [t["expr"] for p in vllm["panels"] for t in p["targets"]]
    assert any("vllm:generation_tokens_total" in e for e in exprs)
    # every query of servekit's dashboard is valid PromQL: promtool parses it as a recording rule
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"servekit:dashboard_query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    check = promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert not (tmp_path / "out" / "spark-02" / "grafana").exists()


# --------------------------------------------------------------------------
# the vLLM watchdog's counters (roles/vllm/files/watchdog.py)
# --------------------------------------------------------------------------

WATCHDOG = ROOT / "roles" / "vllm" / "files" / "watchdog.py"
_spec = importlib.util.spec_from_file_location("servekit_vllm_watchdog_metrics", WATCHDOG)
watchdog = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = watchdog
_spec.loader.exec_module(watchdog)


def _samples(text: str) -> dict[str, float]:
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_watchdog_metrics_parse_with_prometheus_client_and_promtool(tmp_path):
    counters = watchdog.Counters(probes=7, failed_probes=3, restarts=1, last_probe_ok=False, unit_active=True,
                                 unit_started_at=1795732315.28, unit_systemd_restarts=2)
    text = watchdog.render_metrics(counters, 'servekit-vllm.service')
    samples = _samples(text)
    assert samples["servekit_watchdog_probes_total"] == 7
    assert samples["servekit_watchdog_failed_probes_total"] == 3
    assert samples["servekit_watchdog_restarts_total"] == 1
    assert samples["servekit_watchdog_last_probe_success"] == 0
    assert samples["servekit_watchdog_unit_start_time_seconds"] == 1795732315.28, "no precision lost"
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["servekit_watchdog_restarts"] == "counter"
    proc = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True, text=True,
                          check=False, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert watchdog.started_at({"ActiveEnterTimestamp": "@1795732315"}) == 1795732315.0
    assert watchdog.started_at({"ActiveEnterTimestamp": ""}) == 0.0


def test_watchdog_metrics_file_is_replaced_whole(tmp_path):
    path = tmp_path / "textfile" / "servekit-watchdog.prom"
    watchdog.write_metrics(str(path), watchdog.Counters(probes=1), "u")
    watchdog.write_metrics(str(path), watchdog.Counters(probes=2), "u")
    assert _samples(path.read_text())["servekit_watchdog_probes_total"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["servekit-watchdog.prom"], "no temp file left"
    assert oct(path.stat().st_mode & 0o777) == "0o644", "node_exporter runs as user prometheus"


def test_the_watch_loop_counts_probes_and_failures_in_its_metrics_file(tmp_path):
    """The real loop against a stand-in API that fails every completion; systemctl says the unit is active."""
    from test_watchdog import _FakeVllm

    _FakeVllm.mode = "dead"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeVllm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    # what `systemctl show ... --timestamp=unix` prints for an active unit
    (fake_bin / "systemctl").write_text(
        "#!/bin/sh\necho ActiveState=active\necho ActiveEnterTimestampMonotonic=1\n"
        "echo ActiveEnterTimestamp=@1795732315\necho NRestarts=4\n")
    (fake_bin / "systemctl").chmod(0o755)
    metrics = tmp_path / "servekit-watchdog.prom"
    proc = subprocess.Popen(
        [sys.executable, str(WATCHDOG), "watch", "--url", f"http://127.0.0.1:{server.server_address[1]}",
         "--interval", "0.2", "--timeout", "2", "--failures", "1000", "--grace", "0",
         "--metrics-file", str(metrics)],
        env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        samples: dict[str, float] = {}
        while time.monotonic() < deadline:
            if metrics.exists():
                samples = _samples(metrics.read_text())
                if samples.get("servekit_watchdog_failed_probes_total", 0) >= 2:
                    break
            time.sleep(0.1)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0]
        server.shutdown()
        server.server_close()
    assert samples.get("servekit_watchdog_failed_probes_total", 0) >= 2, output
    assert samples["servekit_watchdog_probes_total"] >= samples["servekit_watchdog_failed_probes_total"]
    assert samples["servekit_watchdog_last_probe_success"] == 0
    assert samples["servekit_watchdog_unit_active"] == 1
    assert samples["servekit_watchdog_unit_start_time_seconds"] == 1795732315
    assert samples["servekit_watchdog_unit_systemd_restarts"] == 4
    assert samples["servekit_watchdog_restarts_total"] == 0


# --------------------------------------------------------------------------
# the firewall: scrape ports only for the cluster's own addresses
# --------------------------------------------------------------------------


def test_the_operators_cidrs_reach_prometheus_and_alertmanager_through_the_extra_ports(tmp_path):
    """docs/monitoring.md: firewall_extra_tcp_ports/cidrs, the firewall's one way to open a port further."""
    from test_firewall_render import input_rules
    from test_firewall_render import render as render_firewall

    rulesets = render_firewall(tmp_path, "198.51.100.7 50022 192.168.100.1 22",
                               firewall_extra_tcp_ports=[9090, 9093], firewall_extra_cidrs=["203.0.113.0/24"])
    for text in rulesets.values():
        opened = [r for r in input_rules(text) if re.search(r"dport 909[03] accept$", r)]
        assert opened == ["ip saddr 203.0.113.0/24 tcp dport 9090 accept",
                          "ip saddr 203.0.113.0/24 tcp dport 9093 accept"]


def test_the_firewall_opens_scrape_ports_only_to_cluster_nodes(tmp_path):
    from test_firewall_render import input_rules
    from test_firewall_render import render as render_firewall

    rulesets = render_firewall(tmp_path, "198.51.100.7 50022 192.168.100.1 22")
    defaults = yaml.safe_load((ROOT / "roles/monitoring/defaults/main.yml").read_text())
    cluster = yaml.safe_load((ROOT / "roles/cluster/defaults/main.yml").read_text())
    scrape_ports = {defaults["monitoring_prometheus_port"], defaults["monitoring_node_exporter_port"],
                    defaults["monitoring_gpu_exporter_port"], cluster["cluster_ray_metrics_export_port"],
                    defaults["monitoring_alertmanager_port"]}
    allowed_generic = {'iif "lo" accept', "ct state established,related accept", "ct state invalid drop",
                       "meta l4proto icmp accept", "meta l4proto ipv6-icmp accept",
                       "ip saddr @cluster4 accept", "ip6 saddr @cluster6 accept"}
    for host, text in rulesets.items():
        for rule in input_rules(text):
            if rule in allowed_generic:
                continue
            port = int(re.search(r"tcp dport (\d+) accept$", rule).group(1))
            assert port not in scrape_ports, f"{host}: {rule} opens a scrape port beyond the cluster"
        assert "elements = { 192.168.100.1, 192.168.100.2 }" in text


def test_a_restart_and_a_reload_notified_together_restart_only(tmp_path):
    """The role's handlers, run by ansible-playbook against a stand-in `systemctl` that
    logs what it is asked: a run that changed both the settings (restart) and the
    configuration (reload) restarts Prometheus and Alertmanager once each and sends no
    SIGHUP after the restart, which killed a slow-starting Alertmanager on the lab
    (Go's default action for SIGHUP, a clean exit for systemd: it stayed down).
    A run that changed only the configuration still reloads."""
    calls, stub = tmp_path / "systemctl-calls", tmp_path / "stub-bin"
    stub.mkdir()
    (stub / "systemctl").write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {calls}\n'
        'if [[ $1 == show ]]; then printf "Id=%s\\nLoadState=loaded\\nActiveState=active\\n" "$2"; fi\n')
    (stub / "systemctl").chmod(0o755)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    handlers = ROOT / "roles/monitoring/handlers/main.yml"

    def run(*notified: str) -> list[str]:
        calls.unlink(missing_ok=True)
        play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
                 "environment": {"PATH": f"{stub}:{os.environ['PATH']}"},
                 "vars": {"__monitoring_reload": True, "__monitoring_url": url,
                          "__monitoring_alertmanager_url": url, "ansible_python_interpreter": sys.executable},
                 "tasks": [{"name": f"Change what needs: {name}", "ansible.builtin.command": "true",
                            "changed_when": True, "notify": name} for name in notified],
                 "handlers": [{"ansible.builtin.import_tasks": str(handlers)}]}]
        proc = ansible_playbook("-i", "localhost,", write_play(tmp_path / "play.yml", play),
                                env={"ANSIBLE_NOCOLOR": "1"})
        assert proc.returncode == 0, proc.stdout[-3000:]
        return [line for line in calls.read_text().splitlines() if not line.startswith("show")]

    try:
        both = run("Restart Prometheus", "Reload Prometheus", "Restart Alertmanager", "Reload Alertmanager")
        assert both == ["restart prometheus.service", "restart prometheus-alertmanager.service"], both
        reload_only = run("Reload Alertmanager")
        assert reload_only == ["reload prometheus-alertmanager.service"], reload_only
    finally:
        server.shutdown()
        server.server_close()
