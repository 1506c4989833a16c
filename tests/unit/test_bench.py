"""The NCCL gate (bench stage, GPU part): its verdicts on real-format output, and the module's wiring.

The all_reduce_perf rows are from a public 2x8-GPU run, the NCCL INFO lines
from real multi-node and single-H100 logs (tests/fixtures/README.md). The
bench stage that produces such output on a cluster cannot run here (no GPU,
no RDMA NIC).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, run_task, run_tasks, write_play
from servekit.module_utils.node_nccl import all_reduce_max_bytes, nccl_gate, parse_nccl_version, parse_size
from servekit.module_utils.node_preflight import debian_multiarch
from servekit.module_utils.node_rdma import parse_pcie_link_gbps

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PERF = (FIXTURES / "public" / "all_reduce_perf-2x8gpu.txt").read_text()
GDR_LOG = (FIXTURES / "nccl" / "multinode-ib-gdrdma-lines.txt").read_text()
SOCKET_LOG = (FIXTURES / "nccl" / "h100-1gpu-no-rdma-socket-fallback.log").read_text()
SPARK_LOG = (FIXTURES / "nccl" / "vllm-ray-2spark-ib-gdr-unsupported.log").read_text()
SPARK_BOTH = (FIXTURES / "nccl" / "all_reduce_perf-2spark-both-halves.txt").read_text()
SPARK_ONE = (FIXTURES / "nccl" / "all_reduce_perf-2spark-one-half.txt").read_text()
# Recorded from two DGX Sparks through a switch on port 1 (tests/fixtures/nccl/README.md):
# NCCL's INFO lines of one run, and all_gather_perf tables of a healthy and a degraded run.
SPARK_AG_INFO = (FIXTURES / "nccl" / "all_gather_perf-2spark-nccl-info-lines.txt").read_text()
SPARK_AG = (FIXTURES / "nccl" / "all_gather_perf-2spark-switch.txt").read_text()
SPARK_AG_SLOW = (FIXTURES / "nccl" / "all_gather_perf-2spark-degraded.txt").read_text()
# NVIDIA's floor for all_gather_perf busbw between Sparks (spark_cluster_setup.py,
# MIN_NCCL_TEST_BW = 21.875 # 175 Gbps); the Spark example inventory sets it.
SPARK_EXAMPLE_BENCH = yaml.safe_load(
    (ROOT / "inventory" / "example-2node-roce" / "group_vars" / "all" / "bench.yml").read_text())
# A DGX Spark QSFP port: two PCIe functions, each a 200 Gb/s port on a Gen5 x4 link
# (sysfs ports/1/rate "200 Gb/sec (2X NDR)", device/current_link_speed "32.0 GT/s PCIe",
# device/current_link_width "4").
SPARK_HALF = {"ports": {"1": {"state": "ACTIVE", "rate_gbps": 200.0}},
              "pcie_gbps": parse_pcie_link_gbps("32.0 GT/s PCIe\n", "4\n")}
SPARK_FACTS = {"rdma": {"rocep1s0f0": SPARK_HALF, "roceP2p1s0f0": SPARK_HALF}}
# The same halves of port 1, as the recorded all_gather runs (and the example inventory) use them.
SPARK_PORT1_FACTS = {"rdma": {"rocep1s0f1": SPARK_HALF, "roceP2p1s0f1": SPARK_HALF}}


NO_GDR = "\n".join(line for line in GDR_LOG.splitlines() if "GDRDMA" not in line and "Direct" not in line)
# NCCL's "GPU Direct RDMA Enabled for HCA" lines without any GDRDMA channel
ENABLED_ONLY = "\n".join(line for line in GDR_LOG.splitlines() if "GDRDMA" not in line)
H100_FACTS = {"rdma": {"mlx5_0": {"ports": {"1": {"state": "ACTIVE", "rate_gbps": 400.0}}},
                       "mlx5_1": {"ports": {"1": {"state": "ACTIVE", "rate_gbps": 400.0}}}}}
BENCH_DEFAULTS = yaml.safe_load((ROOT / "roles" / "bench" / "defaults" / "main.yml").read_text())


@pytest.mark.parametrize(("output", "args", "problem"), [
    # 300.5 GB/s peak over 8 x 400 Gb/s HCAs would be 75 %; over 2400 Gb/s it is 100 %.
    (GDR_LOG + PERF, {"link_gbps": 2400}, None),
    (GDR_LOG + PERF, {"link_gbps": 3200},
     "300.5 GB/s is 75% of the 3200 Gb/s link (400.0 GB/s); the gate is 80%"),
    (GDR_LOG + PERF, {"link_gbps": 3200, "min_share": 0.7}, None),
    (SOCKET_LOG + PERF, {"link_gbps": 2400}, "socket transport (NET/Socket)"),
    (NO_GDR + "\n" + PERF, {"link_gbps": 2400}, "without GPUDirect RDMA"),
    (NO_GDR + "\n" + PERF, {"link_gbps": 2400, "expect_gdr": False}, None),
    (GDR_LOG, {"link_gbps": 400}, "no all_reduce_perf result rows"),
    # only `via NET/IB/<n>/GDRDMA` channels prove GPUDirect RDMA, not `enabled for HCA`
    (ENABLED_ONLY + "\n" + PERF, {"link_gbps": 2400}, "no `via NET/IB/<n>/GDRDMA` channel"),
    (GDR_LOG + PERF, {"link_gbps": 2400, "min_busbw_gbs": 350},
     "300.5 GB/s is under the floor bench_nccl_min_busbw_gbs=350 GB/s"),
    # DGX Spark: summed sysfs rate (400 Gb/s) would demand 40 GB/s; PCIe Gen5 x4 halves carry ~100 Gb/s
    (SPARK_LOG + SPARK_BOTH, {"facts": SPARK_FACTS, "hcas": ["rocep1s0f0", "roceP2p1s0f0"],
                              "min_busbw_gbs": 20, "expect_gdr": False}, None),
    (SPARK_LOG + SPARK_ONE, {"facts": SPARK_FACTS, "hcas": ["rocep1s0f0"], "expect_gdr": False,
                             "min_busbw_gbs": BENCH_DEFAULTS["bench_nccl_min_busbw_gbs"]},
     "11.0 GB/s is under the floor bench_nccl_min_busbw_gbs=12 GB/s"),
    # the link speed from the HCAs' sysfs ports, as node_facts reports them
    (GDR_LOG + PERF, {"facts": H100_FACTS, "hcas": ["mlx5_0:1", "mlx5_1"]}, None),
    (GDR_LOG + PERF, {"facts": H100_FACTS, "hcas": ["mlx5_0", "mlx5_9"]},
     "no bandwidth floor: the link speed is unknown"),
], ids=["good", "low-share", "lower-gate-share", "socket", "no-gdr", "no-gdr-not-expected",
        "no-rows", "gdr-enabled-is-no-proof", "absolute-floor", "spark-both-halves",
        "spark-one-half-default-floor", "h100-link-from-facts", "unknown-hca"])
def test_gate_verdict(output, args, problem):
    problems = nccl_gate(output, **args)["problems"]
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(("table", "problem"), [
    # peak out-of-place busbw 22.14 GB/s (its Avg bus bandwidth line: 21.4033)
    (SPARK_AG, None),
    (SPARK_AG_SLOW,
     "all_gather bus bandwidth 2.8 GB/s is under the floor bench_nccl_min_busbw_gbs=21.875 GB/s"),
], ids=["healthy", "degraded"])
def test_spark_all_gather_against_nvidias_floor(table, problem):
    """The Spark example gates all_gather_perf, the collective NVIDIA's 21.875 GB/s applies to."""
    assert SPARK_EXAMPLE_BENCH["bench_nccl_collective"] == "all_gather"
    verdict = nccl_gate(SPARK_AG_INFO + table, facts=SPARK_PORT1_FACTS, hcas=["rocep1s0f1", "roceP2p1s0f1"],
                        expect_gdr=False, collective="all_gather",
                        min_busbw_gbs=SPARK_EXAMPLE_BENCH["bench_nccl_min_busbw_gbs"])
    assert verdict["collective"] == "all_gather" and verdict["pcie_limited"]
    assert verdict["transport"]["network"] == "IB", verdict["transport"]
    assert verdict["problems"] == ([problem] if problem else []), verdict["problems"]


@pytest.mark.parametrize(("log", "version"), [
    (SPARK_AG_INFO, "2.28.9+cuda13.0"),
    (SOCKET_LOG, "2.28.9+cuda13.0"),
    # NCCL_DEBUG=VERSION: the bare line (a public B200 all_gather run)
    ("#  Rank 15 Group  0 Pid  22763 on nccl-gib-test-1 device  7 [0000:cc:00] NVIDIA B200\n"
     "NCCL version 2.26.6+cuda12.8\n#\n", "2.26.6+cuda12.8"),
    (PERF, None)])
def test_the_run_says_which_nccl_it_loaded(log, version):
    assert parse_nccl_version(log) == version
    assert nccl_gate(log + PERF, link_gbps=2400)["nccl_version"] == version


def test_gate_reports_peak_transport_and_link():
    verdict = nccl_gate(GDR_LOG + PERF, link_gbps=2400)
    assert verdict["peak_busbw_gbs"] == pytest.approx(300.51)
    assert verdict["transport"]["network"] == "IB"
    assert "GPU Direct RDMA Enabled for HCA 0 'mlx5_0'" in ENABLED_ONLY
    assert nccl_gate(GDR_LOG + PERF, facts=H100_FACTS, hcas=["mlx5_0:1", "mlx5_1"])["link_gbps"] == 800.0


def test_dgx_spark_halves_are_pcie_limited():
    verdict = nccl_gate(SPARK_LOG + SPARK_BOTH, facts=SPARK_FACTS, hcas=["rocep1s0f0", "roceP2p1s0f0"],
                        min_busbw_gbs=20, expect_gdr=False)
    assert verdict["peak_busbw_gbs"] == pytest.approx(22.14) and verdict["pcie_limited"] is True
    assert "only the absolute floor" in verdict["notes"][0]


@pytest.mark.parametrize(("args", "message"), [
    ({"min_share": 1.5}, "min_share: 1.5 is out of range; allowed: more than 0, at most 1"),
    ({"min_share": 0}, "min_share: 0 is out of range; allowed: more than 0, at most 1"),
    ({"min_busbw_gbs": -1}, "min_busbw_gbs: -1 is out of range; allowed: 0 or more"),
    ({"collective": "alltoall"}, "collective: 'alltoall' is not known; allowed: all_reduce, all_gather"),
])
def test_gate_options_name_their_range(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        nccl_gate(PERF, link_gbps=400, **args)


GATE_MODULE_CASES = {
    "pass": ({"output": GDR_LOG + PERF, "link_gbps": 2400}, None),
    "fail": ({"output": GDR_LOG + PERF, "link_gbps": 3200}, "300.5 GB/s is 75% of the 3200 Gb/s link"),
    "bad-option": ({"output": PERF, "link_gbps": 400, "min_share": 1.5},
                   "min_share: 1.5 is out of range; allowed: more than 0, at most 1"),
}


@pytest.fixture(scope="module")
def gate_module(tmp_path_factory) -> dict[str, dict]:
    """The nccl_gate module on each case, in one ansible-playbook run (helpers.run_tasks)."""
    results = run_tasks(tmp_path_factory.mktemp("gate"),
                        [{"nccl_gate": args} for args, _ in GATE_MODULE_CASES.values()])
    return dict(zip(GATE_MODULE_CASES, results, strict=True))


@pytest.mark.parametrize("case", list(GATE_MODULE_CASES))
def test_gate_module_through_ansible(gate_module, case):
    """The module's wiring: options in, verdict out, a failure carries the problems."""
    out = gate_module[case]
    message = GATE_MODULE_CASES[case][1]
    assert bool(out.get("failed")) is (message is not None), out.get("msg")
    if message:
        assert message in out["msg"]
    else:
        assert out["peak_busbw_gbs"] == pytest.approx(300.51) and out["problems"] == []


@pytest.mark.parametrize(("speed", "width", "gbps"), [
    ("32.0 GT/s PCIe", "4", 126.0), ("16.0 GT/s PCIe", "16", 252.1), ("8.0 GT/s", "8", 63.0),
    ("2.5 GT/s PCIe", "1", 2.0), ("Unknown", "4", None), ("", "", None)])
def test_pcie_link_from_sysfs(speed, width, gbps):
    assert parse_pcie_link_gbps(speed, width) == gbps


@pytest.mark.parametrize(("requested", "free", "available", "expected"), [
    ("8G", [80000], None, 8 << 30),      # idle H100: the request fits
    ("8G", [8000, 9000], None, 512 << 20),  # beside vLLM at 0.9: a quarter of 8000 MiB for 2 buffers
    ("8G", [None], 12 << 20, 1 << 30),   # GB10: [N/A] framebuffer, MemAvailable 12 GiB
    ("256M", [None], 12 << 20, 256 << 20),
    ("8G", [], None, 8 << 30),
])
def test_all_reduce_size_fits_beside_vllm(requested, free, available, expected):
    assert all_reduce_max_bytes(requested, free, available) == expected


def test_sizes_and_architectures_name_what_is_allowed():
    assert parse_size("512M") == 512 << 20 and parse_size("1024") == 1024
    with pytest.raises(ValueError, match="'8X': expected an integer with an optional K, M, G or T"):
        parse_size("8X")
    assert debian_multiarch("aarch64") == "aarch64-linux-gnu"
    with pytest.raises(ValueError, match="machine 'riscv64': no Debian multiarch triplet known; allowed: "):
        debian_multiarch("riscv64")


def test_bench_size_module(tmp_path):
    facts = {"spark-01": {"gpus": [{"memory_free_mib": None}], "mem_available_kib": 12 << 20},
             "spark-02": {"gpus": [{"memory_free_mib": None}], "mem_available_kib": 6 << 20}}
    rc, out = run_task(tmp_path, {"nccl_bench_size": {"requested": "8G", "facts": facts}})
    assert rc == 0 and out["max_bytes"] == 512 << 20
    assert out["per_node"] == {"spark-01": 1 << 30, "spark-02": 512 << 20}


@pytest.mark.parametrize(("multiarch", "expected"), [
    ("aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu/openmpi"),
    ("x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu/openmpi")])
def test_mpi_home_follows_the_node_architecture(tmp_path, multiarch, expected):
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             # the cluster role's defaults: the contract the bench role reads
             "vars_files": [str(ROOT / "roles/cluster/defaults/main.yml"),
                            str(ROOT / "roles/bench/defaults/main.yml"),
                            str(ROOT / "roles/bench/vars/main.yml")],
             "vars": {"cluster_rdma_enabled": True, "servekit_node": {"multiarch": multiarch}},
             "tasks": [{"ansible.builtin.copy": {"content": "{{ __bench_mpi_home }}",
                                                 "dest": str(tmp_path / "mpi_home")}}]}]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "mpi_home").read_text() == expected


def render_bench_var(tmp_path, name: str, variables: dict) -> object:
    """A bench role variable as the role renders it (defaults and vars/main.yml) for the given inputs."""
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             # the cluster role's defaults: the contract the bench role reads
             "vars_files": [str(ROOT / "roles/cluster/defaults/main.yml"),
                            str(ROOT / "roles/bench/defaults/main.yml"),
                            str(ROOT / "roles/bench/vars/main.yml")],
             # task vars: above vars_files, as an inventory's are above role defaults
             "tasks": [{"ansible.builtin.copy": {"content": "{{ " + name + " | to_json }}",
                                                 "dest": str(tmp_path / "out.json")},
                        "vars": variables}]}]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    return yaml.safe_load((tmp_path / "out.json").read_text())


SPARK_PAIR = {"cluster_rdma_enabled": True, "cluster_nodes": ["spark-01", "spark-02"],
              "cluster_head": "spark-01",
              "cluster_addresses": {"spark-01": "192.168.100.1", "spark-02": "192.168.100.2"},
              "cluster_devices_per_node": 1, "cluster_rdma_netdev": "enp1s0f1np1",
              "cluster_env_file": "/etc/servekit/cluster.env", "cluster_runtime": "container",
              "cluster_venv": "/opt/servekit/venv", "cluster_container_engine_bin": "/usr/bin/docker",
              "cluster_container_bin_dir": None, "cluster_container_image": "nvcr.io/nvidia/vllm:26.05-py3",
              "bench_nccl_collective": "all_gather", "__bench_size": {"max_bytes": 1 << 30}}


def test_mpirun_pins_mpi_to_the_data_interface_and_runs_the_serving_nccl(tmp_path):
    argv = render_bench_var(tmp_path, "__bench_mpirun_argv", SPARK_PAIR)
    pairs = {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--mca"}
    # Open MPI's daemon wiring (oob) and TCP BTL stay on the fabric, never docker0
    assert pairs["oob_tcp_if_include"] == "enp1s0f1np1" and pairs["btl_tcp_if_include"] == "enp1s0f1np1"
    assert argv[argv.index("-H") + 1] == "192.168.100.1:1,192.168.100.2:1"
    script = argv[-1]
    assert script.startswith("set -a; . /etc/servekit/cluster.env; set +a; ")
    assert "LD_LIBRARY_PATH=/opt/nccl-tests-serving-nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" in script
    assert script.endswith("exec /opt/nccl-tests/build/all_gather_perf -b 8 -e 1073741824 -f 2 -g 1")


def test_mpi_pin_takes_a_subnet_where_names_differ(tmp_path):
    argv = render_bench_var(tmp_path, "__bench_mpirun_argv",
                            {**SPARK_PAIR, "bench_nccl_mpi_if_include": "192.168.100.0/24"})
    assert argv[argv.index("oob_tcp_if_include") + 1] == "192.168.100.0/24"


@pytest.mark.parametrize(("runtime", "expected"), [
    ("native", ["/opt/servekit/venv/bin/python", "/opt/nccl-tests-serving_nccl.py",
                "/opt/nccl-tests-serving-nccl"]),
    ("container", ["/usr/bin/docker", "run", "--rm", "--network", "none", "--entrypoint", "python3",
                   "-v", "/opt/nccl-tests-serving-nccl:/servekit-nccl",
                   "-v", "/opt/nccl-tests-serving_nccl.py:/servekit-nccl.py:ro",
                   "nvcr.io/nvidia/vllm:26.05-py3", "/servekit-nccl.py", "/servekit-nccl"])])
def test_the_nccl_measured_is_the_serving_stacks(tmp_path, runtime, expected):
    argv = render_bench_var(tmp_path, "__bench_serving_nccl_argv", {**SPARK_PAIR, "cluster_runtime": runtime})
    assert argv == expected


@pytest.mark.parametrize(("maps", "library"), [
    # /proc/<pid>/maps lines after `import torch`: a PyPI wheel venv, an NGC image
    ("ffff8a000000-ffff8c000000 r-xp 00000000 103:02 1234 "
     "/opt/servekit/venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2\n",
     "/opt/servekit/venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2"),
    ("ffff8a000000-ffff8c000000 r-xp 00000000 00:3a 99 /usr/lib/aarch64-linux-gnu/libnccl.so.2.28.9\n",
     "/usr/lib/aarch64-linux-gnu/libnccl.so.2.28.9"),
    ("ffff8a000000-ffff8a001000 rw-p 00000000 00:00 0 \n", None)])
def test_serving_nccl_is_the_library_torch_mapped(maps, library):
    import importlib.util
    spec = importlib.util.spec_from_file_location("serving_nccl", ROOT / "roles/bench/files/serving_nccl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.loaded_nccl(maps) == library


def render_with_services(tmp_path, task: dict, services: dict, variables: dict, result: str) -> object:
    """``result`` after ``task`` on localhost, where service_facts found ``services``.

    service_facts' own view of a unit: state 'running' only while systemd's SUB
    is running (else 'stopped'), status its ACTIVE state (active, activating...).
    """
    task = dict(task, vars={**task.get("vars", {}), "ansible_facts": {"services": services}, **variables})
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars_files": [str(ROOT / "roles/vllm/defaults/main.yml")],
             "tasks": [task, {"ansible.builtin.copy": {"content": "{{ " + result + " | to_json }}",
                                                       "dest": str(tmp_path / "out.json")},
                              "vars": task["vars"]}]}]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    return yaml.safe_load((tmp_path / "out.json").read_text())


def test_serving_check_knows_the_engine_by_its_configured_unit(tmp_path):
    check = yaml.safe_load((ROOT / "roles/bench/tasks/serving_check.yml").read_text())[1]
    assert check["name"].startswith("Serving engines - fail")
    services = {"llm-engine.service": {"state": "running", "status": "active"},
                "servekit-vllm-chat-1.service": {"state": "running", "status": "active"},
                "servekit-vllm-chat-0.service": {"state": "stopped", "status": "inactive"},
                "servekit-vllm-chat-1-watchdog.service": {"state": "running", "status": "active"},
                "ssh.service": {"state": "running", "status": "active"}}
    # its engine list only: the assert is the role's, the list what it checks
    listing = {"ansible.builtin.debug": {"msg": "the engines are read below"}, "vars": check["vars"]}
    live = render_with_services(tmp_path, listing, services, {"vllm_unit_name": "llm-engine.service"},
                                "__bench_live_engines")
    assert sorted(live) == ["llm-engine.service", "servekit-vllm-chat-1.service"], (
        "the NCCL run's check must know the engine by vllm_unit_name, as pause.yml does")


def test_pause_stops_engines_and_watchdogs_still_starting(tmp_path):
    note = yaml.safe_load((ROOT / "roles/vllm/tasks/pause.yml").read_text())[1]
    assert note["name"].startswith("Pause - note")
    # activating: a worker rank in ExecStartPre waiting for its head, or waiting out RestartSec
    services = {"servekit-vllm.service": {"state": "stopped", "status": "activating"},
                "servekit-vllm-chat-1.service": {"state": "running", "status": "active"},
                "servekit-vllm-chat-0.service": {"state": "stopped", "status": "inactive"},
                "servekit-vllm-watchdog.service": {"state": "running", "status": "active"},
                "servekit-vllm-chat-1-watchdog.service": {"state": "stopped", "status": "activating"},
                "servekit-vllm-chat-0-watchdog.service": {"state": "stopped", "status": "failed"},
                "ssh.service": {"state": "running", "status": "active"}}
    paused = render_with_services(tmp_path, note, services, {}, "__vllm_paused")
    assert paused == {
        "engines": ["servekit-vllm-chat-1.service", "servekit-vllm.service"],
        "watchdogs": ["servekit-vllm-chat-1-watchdog.service", "servekit-vllm-watchdog.service"]}, (
        "an engine or watchdog still starting must be stopped for the NCCL run (and started again after it)")
