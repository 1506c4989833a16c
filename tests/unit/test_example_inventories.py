"""The shipped example inventories match real machines and every file they lead to checks out.

- ``example-2node-roce``: two DGX Sparks, both RoCE halves of the cabled
  ConnectX-7 port in NCCL_IB_HCA (NVIDIA's "Connect Two Sparks" playbook).
- ``example-2x8-h100``: two 8-GPU H100 nodes, 8 RoCE rails each, a model
  that needs TP 8 x PP 2.

On localhost only: the validate stage (it connects to no host), then every
file rendered by the roles' own tasks with each host's RDMA sysfs written
from recorded GID tables (tests/rdma_sysfs.py), checked with ``bash -n``,
``systemd-analyze verify`` and ``docker-compose config``. The example
addresses are never contacted (``ansible_connection=local``).
"""

from __future__ import annotations

import shlex
import subprocess

import pytest
from render_cluster import COMPOSE, EXAMPLE_SYSFS, SYSTEMD_ANALYZE, env_lines, systemd_verify

EXAMPLES = {
    "example-2node-roce": {"hosts": EXAMPLE_SYSFS["example-2node-roce"][0], "model": "gpt-oss-20b",
                           "devices": 2, "hca": "=rocep1s0f0,roceP2p1s0f0",
                           "netdevs": ["enp1s0f0np0", "enP2p1s0f0np0"], "address": "192.168.100.{n}"},
    "example-2x8-h100": {"hosts": EXAMPLE_SYSFS["example-2x8-h100"][0], "model": "deepseek-r1",
                         "devices": 16, "hca": "=" + ",".join(f"mlx5_{i}" for i in range(8)),
                         "netdevs": [f"gpu{i}_eth" for i in range(8)], "address": "10.200.0.1{n}"},
}


@pytest.fixture(params=sorted(EXAMPLES))
def example(request, example_render):
    """The session's one render of the example (tests/conftest.py), as its inventory sets the runtime."""
    name = request.param
    return name, EXAMPLES[name], example_render(name) / "out"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_validate_stage_passes_on_localhost(name, example_validate):
    proc = example_validate(name)  # one run per session, shared (tests/conftest.py)
    assert proc.returncode == 0, proc.stdout[-3000:]
    spec = EXAMPLES[name]
    assert f"model {spec['model']}: {spec['devices']} device(s) over 2 of 2 node(s)" in proc.stdout


def test_every_rail_reaches_the_environment_and_the_roce_unit(example):
    _, spec, out = example
    for host, n in spec["hosts"].items():
        env = env_lines(out / host / "cluster.env")
        assert env["NCCL_IB_HCA"] == spec["hca"]
        assert "NCCL_IB_GID_INDEX" not in env
        assert env["VLLM_HOST_IP"] == spec["address"].format(n=n)
        unit = (out / host / "servekit-rdma.service").read_text()
        assert [line for line in unit.splitlines() if line.startswith("BindsTo=")] == [
            f"BindsTo=sys-subsystem-net-devices-{netdev}.device" for netdev in spec["netdevs"]]
        script = out / host / "servekit-rdma-defaults"
        for hca, netdev in zip(spec["hca"][1:].split(","), spec["netdevs"], strict=True):
            assert f"  '{hca} {netdev}'\n" in script.read_text()
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


def test_vllm_launch_spans_both_nodes(example):
    name, spec, out = example
    head = next(iter(spec["hosts"]))
    # the container runtime runs vLLM inside the Ray container: `docker exec ... vllm serve ...`
    unit = (out / head / "servekit-vllm.service").read_text()
    argv = shlex.split(next(line for line in unit.splitlines() if line.startswith("ExecStart="))[10:])
    if name == "example-2x8-h100":
        assert argv[argv.index("--tensor-parallel-size") + 1] == "8"
        assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert "--distributed-executor-backend" in argv


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_units_pass_systemd_analyze_verify(example):
    _, spec, out = example
    for host in spec["hosts"]:
        units = [out / host / f"servekit-{name}.service" for name in ("rdma", "ray", "vllm")]
        check = systemd_verify(*[u for u in units if u.exists()])
        assert check.returncode == 0, f"{host}: {check.stderr}"
        assert "Requires=servekit-rdma.service" in units[1].read_text()


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose not installed (apt-get install docker-compose)")
def test_compose_projects_pass_a_real_compose_checker(example):
    _, spec, out = example
    files = sorted(out.glob("*/compose/*/compose.yaml"))
    assert len(files) == len(spec["hosts"]), "one Ray container per node; vLLM runs inside it"
    for path in files:
        proc = subprocess.run([COMPOSE, "-f", str(path), "config", "--quiet"], capture_output=True, text=True,
                              check=False, timeout=60)
        assert proc.returncode == 0, f"{path}: {proc.stderr}"


def test_vllm_unit_is_the_vllm_roles_own(example):
    """plan.yml's unit, not a copy of its arguments: vLLM behind the API proxy, the secrets file loaded."""
    _, spec, out = example
    head = next(iter(spec["hosts"]))
    unit = (out / head / "servekit-vllm.service").read_text()
    argv = shlex.split(next(line for line in unit.splitlines() if line.startswith("ExecStart="))[10:])
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8001"
    assert "EnvironmentFile=-/etc/servekit/vllm-secrets.env" in unit.splitlines()
