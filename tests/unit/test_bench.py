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
from servekit.module_utils.node_nccl import all_reduce_max_bytes, nccl_gate, parse_size
from servekit.module_utils.node_preflight import debian_multiarch
from servekit.module_utils.node_rdma import parse_pcie_link_gbps

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PERF = (FIXTURES / "public" / "all_reduce_perf-2x8gpu.txt").read_text()
GDR_LOG = (FIXTURES / "nccl" / "multinode-ib-gdrdma-lines.txt").read_text()
SOCKET_LOG = (FIXTURES / "nccl" / "h100-1gpu-no-rdma-socket-fallback.log").read_text()
SPARK_LOG = (FIXTURES / "nccl" / "vllm-ray-2spark-ib-gdr-unsupported.log").read_text()
SPARK_BOTH = (FIXTURES / "nccl" / "all_reduce_perf-2spark-both-halves.txt").read_text()
SPARK_ONE = (FIXTURES / "nccl" / "all_reduce_perf-2spark-one-half.txt").read_text()
# A DGX Spark QSFP port: two PCIe functions, each a 200 Gb/s port on a Gen5 x4 link
# (sysfs ports/1/rate "200 Gb/sec (2X NDR)", device/current_link_speed "32.0 GT/s PCIe",
# device/current_link_width "4").
SPARK_HALF = {"ports": {"1": {"state": "ACTIVE", "rate_gbps": 200.0}},
              "pcie_gbps": parse_pcie_link_gbps("32.0 GT/s PCIe\n", "4\n")}
SPARK_FACTS = {"rdma": {"rocep1s0f0": SPARK_HALF, "roceP2p1s0f0": SPARK_HALF}}


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
             "vars_files": [str(ROOT / "roles/bench/defaults/main.yml"),
                            str(ROOT / "roles/bench/vars/main.yml")],
             "vars": {"cluster_rdma_enabled": True, "servekit_node": {"multiarch": multiarch}},
             "tasks": [{"ansible.builtin.copy": {"content": "{{ __bench_mpi_home }}",
                                                 "dest": str(tmp_path / "mpi_home")}}]}]
    proc = ansible_playbook(write_play(tmp_path / "play.yml", play), timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "mpi_home").read_text() == expected
