"""Day-2 commands: `servekit status`, `logs`, `down`, `completion`.

What runs for real here: argument parsing, the status playbook on localhost
(a node where nothing serves: no systemd, no Ray, no API), the table/JSON
and exit-code decision on documents in the playbook's own format (unit
headers rendered by vllm_launch's render_unit, the watchdog's restart line,
``systemctl show`` blocks as systemctl(1) prints them: ``Key=Value``, one
block per unit, blank-line separated), the generated bash completion with
bash, and ``--syntax-check`` of the status and down playbooks on every
inventory. Not run here: the playbooks against a serving cluster (the
lead's lab commands in the report).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook
from servekit.module_utils.vllm_registry import NodeSpec, build_launch_plan, load_registry_file, render_unit

from servekit import commands, status
from servekit.cli import build_parser
from servekit.completion import bash_completion

SERVEKIT = str(Path(sys.executable).with_name("servekit"))
UNITS = {"ray": "servekit-ray.service", "vllm": "servekit-vllm.service",
         "watchdog": "servekit-vllm-watchdog.service", "proxy": "servekit-api-proxy.service"}
INVENTORIES = [ROOT / "inventory" / n / "hosts.yml" for n in ("example-2node-roce", "example-2x8-h100")]


def _show(unit: str, active: str = "active", sub: str = "running", load: str = "loaded") -> str:
    return f"Id={unit}\nLoadState={load}\nActiveState={active}\nSubState={sub}\nNRestarts=0\n"


def _unit_header(rank: int) -> str:
    registry = load_registry_file(str(ROOT / "config" / "model_registry.yml"))
    node = NodeSpec(node_rank=rank, nnodes=2, head_address="10.0.0.1",
                    host_address=f"10.0.0.{rank + 1}", devices_per_node=1, executor="mp",
                    runtime="native", api_port=8001)
    plan = build_launch_plan("lab-tiny", registry["lab-tiny"], node, ["vllm"])
    # the line the vllm role's status greps (below the ansible_managed header)
    return next(line for line in render_unit(plan).splitlines() if line.startswith("# Managed by servekit"))


def _document(ready_status=200, worker_vllm="active", restarts=0, worker_reachable=True) -> dict:
    restart = f"3 failed completions in a row: restarting {UNITS['vllm']}"

    def vllm(rank, head, state):
        units = [_show(UNITS["vllm"], *state.split("/")) if "/" in state else _show(UNITS["vllm"], state),
                 _show(UNITS["watchdog"])]
        if head:
            units.append(_show(UNITS["proxy"]))
        return {"units": "\n".join(units), "launch": _unit_header(rank),
                "watchdog_journal": ["no completion from http://127.0.0.1:8001 (timed out)"]
                + [restart] * restarts,
                "ready_status": ready_status if head else None, "ready_model": None,
                "ready_error": "" if ready_status == 200 else "Connection refused"}
    ray = {"unit": _show(UNITS["ray"]), "nodes": "", "error": ""}
    return {"nodes": [
        {"name": "lab-head", "head": True, "address": "10.0.0.1", "ray": ray,
         "vllm": vllm(0, True, "active")},
        {"name": "lab-worker-1", "head": False, "address": "10.0.0.2",
         "ray": ray if worker_reachable else None,
         "vllm": vllm(1, False, worker_vllm) if worker_reachable else None},
    ]}


def test_a_cluster_whose_head_answers_serves():
    result = status.cluster_status(_document(), UNITS, "mp")
    assert result.serving and result.problems == []
    head, worker = result.nodes
    assert (head.rank, head.role, head.model, head.ready) == (0, "head", "lab-tiny", True)
    assert (worker.rank, worker.vllm_unit, worker.proxy_unit) == (1, "active/running", "-")


@pytest.mark.parametrize(
    ("doc", "serving", "problem"),
    [
        ({"ready_status": -1}, False, "lab-head: no completion (HTTP -1: Connection refused)"),
        ({"worker_vllm": "failed/failed"}, True, "lab-worker-1: vLLM unit failed/failed"),
        ({"restarts": 2}, True, "lab-worker-1: the watchdog restarted vLLM 2 time(s) in the last hour"),
        ({"worker_reachable": False}, True, "lab-worker-1: unreachable"),
    ],
    ids=["head-silent", "worker-failed", "restarts", "unreachable"],
)
def test_what_is_wrong_is_named_and_only_a_silent_head_means_not_serving(doc, serving, problem):
    result = status.cluster_status(_document(**doc), UNITS, "mp")
    assert result.serving is serving
    assert problem in result.problems


def test_ray_liveness_and_devices_come_from_the_heads_view():
    doc = _document()
    doc["nodes"][0]["ray"]["nodes"] = json.dumps({"10.0.0.1": 1.0})  # the worker's Ray is gone
    result = status.cluster_status(doc, UNITS, "ray")
    assert [(n.ray_alive, n.ray_devices) for n in result.nodes] == [(True, 1.0), (False, None)]
    assert "lab-worker-1: not a live node of the Ray cluster" in result.problems


def test_an_absent_unit_reads_absent():
    assert status.unit_state(status.parse_systemctl_show(
        _show("servekit-vllm.service", "inactive", "dead", "not-found"))["servekit-vllm.service"]) == "absent"


def test_table_and_json_carry_every_node_and_the_verdict():
    result = status.cluster_status(_document(ready_status=500), UNITS, "mp")
    table = status.format_table(result)
    assert table.splitlines()[0].split()[:3] == ["NODE", "ADDRESS", "REACHABLE"]
    assert "lab-head (head)" in table and "lab-worker-1" in table and "serving: NO" in table
    data = json.loads(status.format_json(result))
    assert data["serving"] is False and [n["name"] for n in data["nodes"]] == ["lab-head", "lab-worker-1"]
    assert data["nodes"][0]["ready_detail"].startswith("HTTP 500")


def _local_inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "inv" / "hosts.yml"
    inv.parent.mkdir()
    inv.write_text(yaml.safe_dump({"all": {"children": {"cluster": {"children": {
        "head": {"hosts": {"local-head": {"ansible_host": "127.0.0.1", "ansible_connection": "local",
                                          "ansible_python_interpreter": sys.executable}}},
        "workers": {"hosts": {}}}}}}}))
    return inv


def test_status_on_a_node_that_serves_nothing_exits_1_with_the_reason(tmp_path):
    proc = subprocess.run([SERVEKIT, "status", "-i", str(_local_inventory(tmp_path)), "--format", "json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    node = data["nodes"][0]
    assert node["name"] == "local-head" and node["reachable"] is True and node["ready"] is False
    assert data["serving"] is False and data["problems"][0].startswith("local-head: no completion")


@pytest.mark.parametrize(
    "argv",
    [["status", "--format", "yaml"], ["logs", "--unit", "nginx"], ["completion", "zsh"], ["down", "--purge"]],
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_flags_parse_into_what_the_commands_read():
    args = build_parser().parse_args(["logs", "lab-head", "-u", "vllm", "-u", "watchdog", "-f", "-n", "5"])
    assert (args.node, args.unit, args.follow, args.lines, args.func) == (
        "lab-head", ["vllm", "watchdog"], True, 5, commands.cmd_logs)
    args = build_parser().parse_args(["down", "-i", "inventory/x", "--yes", "--purge-models"])
    assert (args.inventory, args.yes, args.purge_models, args.purge_runtime) == (
        "inventory/x", True, True, False)
    assert build_parser().parse_args(["status"]).format == "text"


def test_down_asks_and_refuses_without_a_terminal_or_yes(tmp_path):
    proc = subprocess.run([SERVEKIT, "down", "-i", str(_local_inventory(tmp_path))],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--yes" in proc.stderr


@pytest.mark.parametrize("verb", ["status", "down", "logs"])
def test_example_inventories_are_refused(verb):
    proc = subprocess.run([SERVEKIT, verb, "-i", str(INVENTORIES[0]), *(["--yes"] if verb == "down" else [])],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "example inventory" in proc.stderr


def test_journal_cursor_is_followed():
    assert commands.journal_argv(["a.service"], 20) == [
        "journalctl", "--no-pager", "-o", "short-iso", "--show-cursor", "-u", "a.service", "-n", "20"]
    assert commands.journal_argv(["a.service"], 20, "s=1;i=2")[-1] == "--after-cursor=s=1;i=2"
    out = "2026-01-01T00:00:00+0000 lab-head vllm[1]: INFO ready\n-- cursor: s=abc;i=5f;b=1"
    assert commands.split_cursor(out) == (
        ["2026-01-01T00:00:00+0000 lab-head vllm[1]: INFO ready"], "s=abc;i=5f;b=1")
    assert commands.split_cursor("-- No entries --") == ([], None)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_subcommands_flags_and_choices():
    script = bash_completion(build_parser())

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        proc = subprocess.run(["bash", "-c", f"{script}\nCOMP_WORDS=(servekit {line}); "
                               f"COMP_CWORD={len(words)}; _servekit; echo \"${{COMPREPLY[@]}}\""],
                              capture_output=True, text=True, check=True)
        return proc.stdout.split()
    assert complete("sta") == ["status"]
    assert "--follow" in complete("logs", "--f")
    assert complete("logs", "-u", "wat") == ["watchdog"]
    assert complete("lab", "st") == ["status", "stop", "start"]


@pytest.mark.parametrize("playbook", ["playbooks/status.yml", "playbooks/down.yml"])
@pytest.mark.parametrize("inventory", INVENTORIES, ids=[i.parent.name for i in INVENTORIES])
def test_day2_playbooks_pass_syntax_check(playbook, inventory):
    proc = ansible_playbook("-i", inventory, "--syntax-check", playbook, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_status_shows_the_deployments_placement_in_the_table_and_the_json():
    result = status.cluster_status(_document(), UNITS, "mp")
    assert "placement" not in json.loads(status.format_json(result)), "no deployments: output as before"
    assert "placement" not in status.format_table(result)
    placed = [{"deployment": "lab-tiny", "replica": 0, "model": "lab-tiny",
               "nodes": ["lab-head", "lab-worker-1"], "devices": {"lab-head": [0], "lab-worker-1": [0]}}]
    result.placement = placed
    assert json.loads(status.format_json(result))["placement"] == placed
    table = status.format_table(result)
    assert ("placement (cluster_deployments):\nDEPLOYMENT  REPLICA  MODEL     NODE          DEVICES\n"
            "lab-tiny    1        lab-tiny  lab-head      0\nlab-tiny    1        lab-tiny  lab-worker-1  0\n"
            "\nserving: yes") in table, table


def test_status_json_carries_the_placement_of_the_inventory_deployments(tmp_path):
    inv = _local_inventory(tmp_path)
    (inv.parent / "group_vars" / "all").mkdir(parents=True)
    (inv.parent / "group_vars" / "all" / "deployments.yml").write_text(yaml.safe_dump({
        "cluster_deployments": [{"name": "llama-3.1-8b-instruct", "model": "llama-3.1-8b-instruct"}]}))
    proc = subprocess.run([SERVEKIT, "status", "-i", str(inv), "--format", "json"], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={k: v for k, v in os.environ.items() if k != "MODEL_NAME"})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(proc.stdout)["placement"] == [
        {"deployment": "llama-3.1-8b-instruct", "replica": 0, "model": "llama-3.1-8b-instruct",
         "nodes": ["local-head"], "devices": {"local-head": [0]}}]


# --------------------------------------------------------------------------
# replica engines: the records each node keeps, the router's GET /workers
# (in vllm-router 0.1.17's own format, as the lab's router answered it)
# --------------------------------------------------------------------------


def _router_workers(healthy: dict[str, bool]) -> str:
    return json.dumps({"workers": [
        {"id": f"id-{i}", "url": url, "model_id": "lab-tiny", "priority": 50, "cost": 1.0,
         "worker_type": "regular", "is_healthy": ok, "load": 0, "connection_mode": "Http",
         "metadata": {"model_id": "lab-tiny"}} for i, (url, ok) in enumerate(healthy.items())],
        "total": len(healthy), "stats": {"total_workers": len(healthy)}})


def _replica(deployment, index, node_address, port, ready_status=200):
    unit = f"servekit-vllm-{deployment}-{index + 1}.service"
    return {"deployment": deployment, "replica": index, "model": "lab-tiny-tp1", "node": "x", "devices": [0],
            "port": port, "unit": unit, "url": f"http://{node_address}:{port}", "argv": ["vllm", "serve"],
            "ready_status": ready_status}


def _replica_document(head_ready=200, worker_ready=200, rotation=None) -> dict:
    doc = _document(ready_status=None)
    head, worker = doc["nodes"]
    replicas = {"lab-head": [_replica("lab-tiny", 0, "10.0.0.1", 8100, head_ready),
                             _replica("lab-tiny-b", 0, "10.0.0.1", 8101)],
                "lab-worker-1": [_replica("lab-tiny", 1, "10.0.0.2", 8100, worker_ready)]}
    for node in (head, worker):
        node["vllm"]["replicas"] = replicas[node["name"]]
        node["vllm"]["replica_units"] = "\n".join(_show(r["unit"]) for r in replicas[node["name"]])
    rotation = rotation or {}
    head["vllm"]["router_workers"] = _router_workers(
        {r["url"]: rotation.get(r["url"], True) for rs in replicas.values() for r in rs})
    return doc


def test_replica_engines_serve_when_every_deployment_has_one_in_rotation():
    result = status.cluster_status(_replica_document(), UNITS, "ray")
    assert result.serving and result.problems == [], result.problems
    assert [(r.deployment, r.replica, r.node, r.port, r.ready, r.in_rotation) for r in result.replicas] == [
        ("lab-tiny", 1, "lab-head", 8100, True, True), ("lab-tiny", 2, "lab-worker-1", 8100, True, True),
        ("lab-tiny-b", 1, "lab-head", 8101, True, True)]
    table = status.format_table(result)
    header = ("DEPLOYMENT  REPLICA  MODEL         NODE          DEVICES  PORT  UNIT            READY  "
              "IN ROTATION")
    assert header in table, table
    assert json.loads(status.format_json(result))["replicas"][1]["unit"] == "servekit-vllm-lab-tiny-2.service"


def test_a_replica_out_of_rotation_is_named_and_a_deployment_without_one_is_not_serving():
    doc = _replica_document(worker_ready=-1, rotation={"http://10.0.0.2:8100": False})
    one_down = status.cluster_status(doc, UNITS, "ray")
    assert one_down.serving, "lab-tiny's other replica still serves"
    assert one_down.problems == [
        "lab-tiny replica 2 (servekit-vllm-lab-tiny-2.service on lab-worker-1): no completion "
        "(unit active/running)",
        "lab-tiny replica 2 (servekit-vllm-lab-tiny-2.service on lab-worker-1): out of the router's rotation"]
    b_out = status.cluster_status(_replica_document(rotation={"http://10.0.0.1:8101": False}), UNITS, "ray")
    assert not b_out.serving
    assert b_out.problems[-1] == "deployment lab-tiny-b: no replica serves"


def test_logs_select_a_deployments_replica_engines_by_their_unit_names(tmp_path):
    parser = build_parser()
    names = {"ray": "servekit-ray.service", "vllm": "servekit-vllm.service",
             "watchdog": "servekit-vllm-watchdog.service", "proxy": "servekit-api-proxy.service",
             "router": "servekit-router.service", "keeper": "servekit-router-keeper.service"}

    def units(*argv):
        return commands.log_units(parser.parse_args(["logs", *argv]), names)

    assert units("--deployment", "org/Chat.v2", "--replica", "3") == ["servekit-vllm-org-chat-v2-3.service"]
    assert units("-d", "lab-tiny") == ["servekit-vllm-lab-tiny-[0-9]*.service"]
    assert units("-u", "router") == ["servekit-router.service"]
    assert units("-u", "keeper") == ["servekit-router-keeper.service"]
    assert units()[-3:] == ["servekit-router.service", "servekit-router-keeper.service",
                            "servekit-vllm-*-[0-9]*.service"]
    with pytest.raises(commands.UsageError, match="--replica: needs --deployment NAME"):
        units("--replica", "1")
    # the patterns as journalctl -u matches them (fnmatch): lab-tiny's replicas, not lab-tiny-b's
    # nor the watchdog

    present = ["servekit-vllm-lab-tiny-1.service", "servekit-vllm-lab-tiny-2.service",
               "servekit-vllm-lab-tiny-b-1.service", "servekit-vllm-watchdog.service",
               "servekit-vllm.service"]
    assert fnmatch.filter(present, units("-d", "lab-tiny")[0]) == present[:2]
    assert fnmatch.filter(present, units()[-1]) == present[:3]
