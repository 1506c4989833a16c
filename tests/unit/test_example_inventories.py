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

import hashlib
import shlex
import subprocess

import pytest
import yaml
from helpers import ROOT
from render_cluster import COMPOSE, EXAMPLE_SYSFS, SYSTEMD_ANALYZE, env_lines, systemd_verify

EXAMPLES = {
    "example-2node-roce": {"hosts": EXAMPLE_SYSFS["example-2node-roce"][0], "model": "gpt-oss-20b",
                           "devices": 2, "hca": "=rocep1s0f1,roceP2p1s0f1",
                           "netdevs": ["enp1s0f1np1", "enP2p1s0f1np1"], "address": "192.168.100.{n}"},
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
        assert [line for line in unit.splitlines() if line.startswith("Wants=")] == [
            f"Wants=sys-subsystem-net-devices-{netdev}.device" for netdev in spec["netdevs"]]
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
        assert "Wants=servekit-rdma.service" in units[1].read_text()


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


def test_heads_vllm_runs_without_ray_log_deduplication(example):
    """Both examples use the Ray executor in containers: the driver (the head's vLLM, exec'd in
    the Ray container) gets RAY_DEDUP_LOGS=0, so its journal keeps every rank's NCCL lines."""
    _, spec, out = example
    head = next(iter(spec["hosts"]))
    unit = (out / head / "servekit-vllm.service").read_text()
    assert "Environment=RAY_DEDUP_LOGS=0" in unit.splitlines()
    argv = shlex.split(next(line for line in unit.splitlines() if line.startswith("ExecStart="))[10:])
    assert "--env=RAY_DEDUP_LOGS" in argv[: argv.index("vllm")]


def test_watchdog_grace_follows_the_models_ready_timeout(example):
    """DeepSeek-R1's registry ready-timeout (2700 s) reaches the watchdog; gpt-oss-20b keeps the default."""
    name, spec, out = example
    head = next(iter(spec["hosts"]))
    unit = (out / head / "servekit-vllm-watchdog.service").read_text()
    argv = shlex.split(next(line for line in unit.splitlines() if line.startswith("ExecStart="))[10:])
    assert argv[argv.index("--grace") + 1] == ("2700" if name == "example-2x8-h100" else "900")


def test_env_file_checksum_is_in_the_ray_unit_container_and_vllm_unit(example):
    """Ray and vLLM read cluster.env only when they start: its SHA-1 in what they run makes a change
    to it (a rail, NCCL_IB_HCA, TC/SL) rewrite those, which restarts Ray and vLLM (issue 24, item 4)."""
    _, spec, out = example
    head = next(iter(spec["hosts"]))
    for host in spec["hosts"]:
        env_file = out / host / "cluster.env"
        sha1 = hashlib.sha1(env_file.read_bytes()).hexdigest()  # noqa: S324 - a fingerprint, not security
        assert f"# {env_file} sha1 {sha1}:" in (out / host / "servekit-ray.service").read_text()
        compose = yaml.safe_load((out / host / "compose/servekit-ray/compose.yaml").read_text())
        assert compose["services"]["ray"]["labels"] == {"servekit.cluster-env-sha1": sha1}
        if host == head:
            vllm = (out / host / "servekit-vllm.service").read_text()
            assert f"# {env_file} sha1 {sha1}: read at start" in vllm


def test_ray_container_mounts_vllm_config_root(example):
    """The examples serve hub ids (no model folder to mount) and need VLLM_CONFIG_ROOT in the container."""
    _, spec, out = example
    for host in spec["hosts"]:
        compose = yaml.safe_load((out / host / "compose/servekit-ray/compose.yaml").read_text())
        root = out / host / "vllm-config"
        assert compose["services"]["ray"]["volumes"][1] == f"{root}:{root}:ro"
        assert len(compose["services"]["ray"]["volumes"]) == 3, "hf cache, config root, Ray token"


def test_spark_example_names_an_arm64_image(example):
    """Sparks are aarch64 with GB10 kernels: NVIDIA's NGC vLLM image, the tag of its two-Spark
    recipe (NVIDIA/dgx-spark-playbooks nvidia/vllm/README.md); the H100s keep vLLM's x86 image."""
    name, spec, out = example
    head = next(iter(spec["hosts"]))
    compose = yaml.safe_load((out / head / "compose/servekit-ray/compose.yaml").read_text())
    expected = "nvcr.io/nvidia/vllm:26.05-py3" if name == "example-2node-roce" else "vllm/vllm-openai:v0.32.0"
    assert compose["services"]["ray"]["image"] == expected


def test_dgx_os_example_adds_no_second_toolkit_repository():
    """DGX OS (the Sparks) ships the NVIDIA Container Toolkit; nvidia.github.io's apt source beside it
    drifts the version or breaks apt ("Conflicting values set for option Signed-By")."""
    settings = yaml.safe_load((ROOT / "inventory/example-2node-roce/group_vars/all/cluster.yml").read_text())
    assert settings["runtime_nvidia_toolkit"] is False
