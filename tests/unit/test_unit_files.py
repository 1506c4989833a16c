"""Every systemd unit the roles write, rendered by their own templates and checked by systemd-analyze.

The rdma, ray, vllm (launch, readiness watchdog, API proxy) and firewall
units of inventory/example-2node-roce, native runtime, rendered on localhost
by tests/render_cluster.py (each host's RDMA sysfs from recorded GID
tables). ``systemd-analyze verify`` loads each host's units together (their
Requires=/After= name each other). Binaries that live only on a node
(nginx, the venv's vLLM launcher) are absent here: only systemd's "Command
... is not executable: No such file or directory" lines for those are
ignored; any other complaint fails.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, write_play
from render_cluster import EXAMPLE_SYSFS, SYSTEMD_ANALYZE, systemd_verify

HOSTS = EXAMPLE_SYSFS["example-2node-roce"][0]
UNITS = {
    "spark-01": {"servekit-rdma.service", "servekit-ray.service", "servekit-vllm.service",
                 "servekit-vllm-watchdog.service", "servekit-api-proxy.service", "servekit-firewall.service"},
    # the ray executor runs vLLM on the head only; Ray and the firewall everywhere
    "spark-02": {"servekit-rdma.service", "servekit-ray.service", "servekit-firewall.service"},
}
# What systemd says of an ExecStart= binary that is not installed on this machine.
NOT_INSTALLED = re.compile(r"^\S+\.service: Command (/\S+) is not executable: No such file or directory$")
NODE_ONLY = {"/usr/sbin/nginx", "/usr/sbin/nft", "/opt/servekit/bin/vllm", "/usr/bin/python3",
             "/opt/servekit/router/bin/vllm-router"}


def complaints(stderr: str) -> tuple[list[str], set[str]]:
    """systemd-analyze's lines other than missing node-only binaries, and the binaries it missed."""
    other, missing = [], set()
    for line in filter(None, stderr.splitlines()):
        match = NOT_INSTALLED.match(line)
        if match and match.group(1) in NODE_ONLY:
            missing.add(match.group(1))
        else:
            other.append(line)
    return other, missing


@pytest.fixture
def rendered(example_render) -> Path:
    """The session's one render of the example under the native runtime (tests/conftest.py)."""
    return example_render("example-2node-roce", "native") / "out"


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_every_unit_passes_systemd_analyze_verify(rendered, host):
    units = sorted((rendered / host).glob("*.service"))
    assert {u.name for u in units} == UNITS[host]
    check = systemd_verify(*units)
    other, _ = complaints(check.stderr)
    assert not other, f"{host}: systemd-analyze verify: {other}"
    for unit in units:
        assert unit.read_text().startswith("#\n# Ansible managed"), (
            f"{unit.name}: templates start with {{{{ ansible_managed | comment }}}}")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_the_filter_lets_only_missing_node_binaries_through(rendered, tmp_path):
    broken = tmp_path / "servekit-api-proxy.service"
    broken.write_text((rendered / "spark-01" / "servekit-api-proxy.service").read_text()
                      .replace("Restart=always", "Restart=sometimes"))
    other, _ = complaints(systemd_verify(broken).stderr)
    assert any("restart specifier" in line and "sometimes" in line for line in other), other


def test_a_replica_engines_watchdog_unit_watches_that_engine_only(tmp_path):
    """The per-replica watchdog (templates/servekit-replica-watchdog.service.j2), rendered by
    ansible-playbook with the role's defaults and vars for one replica: systemd-analyze
    accepts it, and its ExecStart parses with the watchdog's own argument parser, aimed at
    that replica's port and unit, with the grace of that replica's registry entry."""
    sys.path.insert(0, str(ROOT / "roles/vllm/files"))
    import watchdog

    replica = {"deployment": "lab-tiny", "replica": 1, "model": "slow-entry", "node": "n1",
               "devices": [2, 3], "port": 8102, "unit": "servekit-vllm-lab-tiny-2.service"}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {
        "n1": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                      "validate_registry": {"models": {"slow-entry": {"ready-timeout": 2400}}}}}}}))
    (tmp_path / "vars.json").write_text(json.dumps(
        {"item": replica, "cluster_data_address": "10.0.0.7", "vllm_watchdog_grace": 600}))
    play = [{"hosts": "n1", "gather_facts": False,
             "vars_files": [str(ROOT / f"roles/{role}/{kind}/main.yml") for role, kind in
                            (("cluster", "defaults"), ("vllm", "defaults"), ("vllm", "vars"))],
             "tasks": [{"ansible.builtin.template": {
                 "src": str(ROOT / "roles/vllm/templates/servekit-replica-watchdog.service.j2"),
                 "dest": str(tmp_path / "servekit-vllm-lab-tiny-2-watchdog.service"), "mode": "0644"}}]}]
    proc = ansible_playbook("-i", inventory, write_play(tmp_path / "play.yml", play),
                            "-e", f"@{tmp_path / 'vars.json'}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    unit = tmp_path / "servekit-vllm-lab-tiny-2-watchdog.service"
    text = unit.read_text()
    assert "After=network-online.target servekit-vllm-lab-tiny-2.service" in text
    exec_start = shlex.split(next(line for line in text.splitlines() if line.startswith("ExecStart="))[10:])
    args = watchdog.build_parser().parse_args(exec_start[2:])
    assert exec_start[:3] == ["/usr/bin/python3", "/opt/servekit/bin/servekit-vllm-watchdog", "watch"]
    options = dict(zip(exec_start[3::2], exec_start[4::2], strict=True))
    assert options["--url"] == "http://10.0.0.7:8102"
    assert options["--metrics"] == "http://10.0.0.7:8102/metrics"
    assert options["--unit"] == "servekit-vllm-lab-tiny-2.service"
    assert options["--grace"] == "2400", "the registry entry's ready-timeout outranks vllm_watchdog_grace"
    assert options["--metrics-file"].endswith("/servekit-watchdog-servekit-vllm-lab-tiny-2.prom")
    assert (args.func, args.unit, args.grace, args.failures) == (
        watchdog.watch, "servekit-vllm-lab-tiny-2.service", 2400, 3)
    if SYSTEMD_ANALYZE is not None:
        other, _ = complaints(systemd_verify(unit).stderr)
        assert not [line for line in other if "servekit-vllm-lab-tiny-2.service" not in line], other


def _replica_unit_task() -> dict:
    tasks = yaml.safe_load((ROOT / "roles/vllm/tasks/replicas.yml").read_text())
    return next(t for t in tasks if t.get("name") == "Write each replica engine's unit")


INSIDE = {"deployment": "chat", "replica": 0, "model": "lab-tiny-tp1", "node": "n1", "nodes": ["n1"],
          "devices": [1], "port": 8101, "unit": "servekit-vllm-chat-1.service"}
ACROSS = {"deployment": "lab-tiny", "replica": 1, "model": "lab-tiny", "node": "n1",
          "nodes": ["n1", "n2"], "devices": [0], "port": 8100, "unit": "servekit-vllm-lab-tiny-2.service"}


def _write_replica_units(tmp_path: Path, **extra: object) -> None:
    """Run the role's own task for INSIDE and ACROSS on n1, units written to ``tmp_path``."""
    registry = yaml.safe_load((ROOT / "config/model_registry.yml").read_text())
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "hosts": {"localhost": dict(host, validate_registry=registry)},
        "children": {"head": {"hosts": {"n1": dict(host, ansible_host="10.0.0.1")}},
                     "workers": {"hosts": {"n2": dict(host, ansible_host="10.0.0.2")}}}}}))
    (tmp_path / "vars.json").write_text(json.dumps({
        "cluster_executor": "ray", "vllm_unit_dir": str(tmp_path), "__vllm_stage_items": [],
        "__vllm_ray_auth_env": {}, "cluster_env_checksum": "0" * 40,
        "__vllm_venv_requirements": {"stat": {"checksum": "1" * 40}}, **extra}))
    task = dict(_replica_unit_task(), loop=[INSIDE, ACROSS])
    play = [{"hosts": "n1", "gather_facts": False,
             "vars_files": [str(ROOT / f"roles/{role}/{kind}/main.yml") for role, kind in
                            (("cluster", "defaults"), ("vllm", "defaults"), ("vllm", "vars"))],
             "tasks": [task]}]
    proc = ansible_playbook("-i", inventory, write_play(tmp_path / "play.yml", play),
                            "-e", f"@{tmp_path / 'vars.json'}")
    assert proc.returncode == 0, proc.stdout[-3000:]


def _exec_start(text: str, key: str = "ExecStart=") -> list[str]:
    return shlex.split(next(line for line in text.splitlines() if line.startswith(key))[len(key):])


def _unit_env(text: str) -> dict[str, str]:
    return dict(shlex.split(line[12:])[0].split("=", 1) for line in text.splitlines()
                if line.startswith("Environment="))


def test_replica_engine_units_as_the_vllm_role_writes_them(tmp_path):
    """The vllm role's own "Write each replica engine's unit" task (roles/vllm/tasks/replicas.yml),
    run by ansible-playbook with the role's defaults and vars for two replicas: one inside a node
    runs vLLM's mp executor on its devices; one across two nodes runs the Ray executor under
    vLLM's Ray data-parallel backend, its placement group held to its own nodes' Ray addresses
    (VLLM_RAY_DP_PLACEMENT_NODE_IPS, vLLM 0.32 v1/engine/utils.py), with no device mask of its own."""
    _write_replica_units(tmp_path)

    def unit(name: str) -> tuple[list[str], dict[str, str], str]:
        text = (tmp_path / name).read_text()
        return _exec_start(text), _unit_env(text), text

    argv, env, _ = unit("servekit-vllm-chat-1.service")
    assert argv[argv.index("--distributed-executor-backend") + 1] == "mp"
    assert "--data-parallel-backend" not in argv
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "VLLM_RAY_DP_PLACEMENT_NODE_IPS" not in env
    argv, env, text = unit("servekit-vllm-lab-tiny-2.service")
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert argv[argv.index("--data-parallel-backend") + 1] == "ray"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--served-model-name") + 1] == "lab-tiny"
    assert (argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]) == ("10.0.0.1", "8100")
    assert env["VLLM_RAY_DP_PLACEMENT_NODE_IPS"] == "10.0.0.1,10.0.0.2"
    assert env["VLLM_RAY_DP_PACK_STRATEGY"] == "span"
    assert env["VLLM_DP_MASTER_IP"] == "10.0.0.1", "the first node's Ray address, not vLLM's 127.0.0.1"
    assert "CUDA_VISIBLE_DEVICES" not in env, "Ray gives each rank its device"
    assert re.search(r"(?m)^After=.*servekit-ray\.service", text), text


def test_replica_engines_on_the_container_runtime_run_in_the_nodes_ray_container(tmp_path):
    """cluster_runtime: container: each replica engine's unit execs vLLM in the node's Ray container
    like the single engine (Podman here), its environment passed by name (the secrets never on the
    command line), its PID in a file of its own there so that stopping one replica stops only it."""
    _write_replica_units(tmp_path, cluster_runtime="container", cluster_container_engine="podman",
                         vllm_api_key="sk-not-in-argv")
    starts, stops = [], []
    for name in ("servekit-vllm-chat-1.service", "servekit-vllm-lab-tiny-2.service"):
        text = (tmp_path / name).read_text()
        argv, stop, env = _exec_start(text), _exec_start(text, "ExecStop="), _unit_env(text)
        assert "sk-not-in-argv" not in text
        box = argv.index("servekit-ray")
        assert argv[:2] == ["/usr/bin/podman", "exec"]
        assert stop[:3] == ["/usr/bin/podman", "exec", "servekit-ray"]
        assert sorted(argv[2:box]) == sorted(f"--env={key}" for key in [*env, "VLLM_API_KEY"]), argv[:box]
        assert argv[box + 1:box + 3] == ["/bin/sh", "-c"] and argv[box + 4:box + 6] == ["vllm", "vllm"]
        assert re.search(r"(?m)^After=.*servekit-ray\.service", text), "the exec needs the Ray container"
        pid = f"/tmp/{name.removesuffix('.service')}.pid"
        # systemd turns $$ into $: sh gets `echo $$ > PID && exec "$@"`
        assert argv[box + 3] == f'echo $$$$ > {pid} && exec "$$@"' and pid in stop[-1]
        starts.append(argv)
        stops.append(stop)
    inside, across = starts
    assert "--env=CUDA_VISIBLE_DEVICES" in inside and "--env=VLLM_RAY_DP_PLACEMENT_NODE_IPS" in across
    assert stops[0] != stops[1]


@pytest.mark.parametrize(("local", "driver"), [
    ([{"unit": "servekit-vllm-lab-tiny-2.service", "nodes": ["n1", "n2"]}], True),
    ([{"unit": "servekit-vllm-chat-1.service", "nodes": ["n1"]}], False),
    ([], False),
])
def test_the_first_node_of_a_spanning_replica_keeps_secrets_out_of_its_ranks(tmp_path, local, driver):
    """tasks/secrets.yml writes ray_non_carry_over_env_vars.json where a Ray driver runs
    (__vllm_ray_driver_here): without it, vLLM copies HF_TOKEN and VLLM_API_KEY into the engine
    actor's runtime env (seen on the 4-node lab, 2026-12-07). A spanning replica's first node runs
    one; a node with only single-node (mp) replicas does not."""
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"head": {"hosts": {"n1": host}}}}}))
    (tmp_path / "vars.json").write_text(json.dumps({
        "cluster_executor": "ray", "__vllm_local_replicas": local, "__vllm_single_active": False}))
    play = [{"hosts": "n1", "gather_facts": False,
             "vars_files": [str(ROOT / f"roles/{role}/{kind}/main.yml") for role, kind in
                            (("cluster", "defaults"), ("vllm", "defaults"), ("vllm", "vars"))],
             "tasks": [{"ansible.builtin.copy": {"content": "{{ __vllm_ray_driver_here | bool }}",
                                                 "dest": str(tmp_path / "out"), "mode": "0644"}}]}]
    proc = ansible_playbook("-i", inventory, write_play(tmp_path / "play.yml", play),
                            "-e", f"@{tmp_path / 'vars.json'}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "out").read_text() == str(driver)


def test_the_router_and_its_rotation_keeper_as_the_vllm_role_writes_them(tmp_path):
    """The head's router unit and its rotation keeper's (templates/servekit-router.service.j2,
    servekit-router-keeper.service.j2), rendered by ansible-playbook with the role's defaults and
    vars: systemd-analyze accepts both; the keeper stops and restarts with the router, reads the
    API key from the root-only file (never its command line), and its ExecStart parses with
    router_workers.py's own parser; the router retries a request 6 times (its 6th attempt reaches
    another replica once the failing one's circuit opens, vllm-router 0.1.17)."""
    sys.path.insert(0, str(ROOT / "roles/vllm/files"))
    import router_workers

    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"head": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    (tmp_path / "vars.json").write_text(json.dumps({
        "cluster_data_address": "10.0.0.7", "vllm_api_key": "sk-not-in-argv",
        "vllm_router_probe_interval": 7}))
    play = [{"hosts": "head", "gather_facts": False,
             "vars_files": [str(ROOT / f"roles/{role}/{kind}/main.yml") for role, kind in
                            (("cluster", "defaults"), ("vllm", "defaults"), ("vllm", "vars"))],
             "tasks": [{"ansible.builtin.template": {
                 "src": str(ROOT / f"roles/vllm/templates/{name}.j2"), "dest": str(tmp_path / name),
                 "mode": "0644"}} for name in ("servekit-router.service", "servekit-router-keeper.service")]}]
    proc = ansible_playbook("-i", inventory, write_play(tmp_path / "play.yml", play),
                            "-e", f"@{tmp_path / 'vars.json'}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    router, keeper = (tmp_path / "servekit-router.service"), (tmp_path / "servekit-router-keeper.service")
    router_argv = _exec_start(router.read_text())
    assert router_argv[router_argv.index("--retry-max-retries") + 1] == "6"
    assert "--health-failure-threshold" not in router_argv, "ignored in --enable-igw mode (0.1.17)"
    register = _exec_start(router.read_text(), "ExecStartPost=")
    assert router_workers.build_parser().parse_args(register[2:]).func == router_workers.register
    text = keeper.read_text()
    assert "sk-not-in-argv" not in text
    assert re.search(r"(?m)^PartOf=servekit-router\.service$", text), "the keeper stops with the router"
    assert re.search(r"(?m)^After=servekit-router\.service$", text)
    assert re.search(r"(?m)^EnvironmentFile=-/etc/servekit/vllm-secrets\.env$", text)
    assert re.search(r"(?m)^WantedBy=servekit-router\.service$", text), "the router's start pulls it in"
    argv = _exec_start(text)
    assert argv[:3] == ["/usr/bin/python3", "/opt/servekit/bin/servekit-router-workers", "keep"]
    args = router_workers.build_parser().parse_args(argv[2:])
    assert (args.func, args.router, args.workers, args.interval, args.timeout) == (
        router_workers.keep, "http://127.0.0.1:8200", "/etc/servekit/router-workers.json", 7.0, 8.0)
    assert args.state == "/run/servekit-router-keeper/removed.json"
    assert re.search(r"(?m)^RuntimeDirectory=servekit-router-keeper$", text), "where --state lives"
    if SYSTEMD_ANALYZE is not None:
        other, missing = complaints(systemd_verify(router, keeper).stderr)
        assert not other, other
        assert missing <= {"/opt/servekit/router/bin/vllm-router"}, missing
