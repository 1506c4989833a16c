"""The NCCL gate (bench stage, GPU part), run as the nccl_gate module on real-format output.

The all_reduce_perf rows are from a public 2x8-GPU run, the NCCL INFO lines
from real multi-node and single-H100 logs (tests/fixtures/README.md). The
bench stage that produces such output on a cluster cannot run here (no GPU,
no RDMA NIC).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ANSIBLE_PLAYBOOK, ROOT, run_play
from servekit.module_utils.node_facts import (
    all_reduce_max_bytes,
    debian_multiarch,
    parse_pcie_link_gbps,
    parse_size,
)

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


def gate(tmp_path, output: str, **args) -> tuple[int, dict]:
    return run_play(tmp_path, {"nccl_gate": {"output": output, **args}})


def test_good_run_passes_and_reports_peak(tmp_path):
    # 300.5 GB/s peak over 8 x 400 Gb/s HCAs would be 75 %; over 2400 Gb/s it is 100 %.
    rc, out = gate(tmp_path, GDR_LOG + PERF, link_gbps=2400)
    assert rc == 0, out["msg"]
    assert out["peak_busbw_gbs"] == pytest.approx(300.51)
    assert out["transport"]["network"] == "IB"
    assert out["problems"] == []


def test_low_bandwidth_fails_with_the_share(tmp_path):
    rc, out = gate(tmp_path, GDR_LOG + PERF, link_gbps=3200)
    assert rc != 0
    assert "300.5 GB/s is 75% of the 3200 Gb/s link (400.0 GB/s); the gate is 80%" in out["msg"]


def test_lower_gate_share_passes_the_same_run(tmp_path):
    rc, out = gate(tmp_path, GDR_LOG + PERF, link_gbps=3200, min_share=0.7)
    assert rc == 0, out["msg"]


def test_socket_transport_fails_even_with_good_numbers(tmp_path):
    rc, out = gate(tmp_path, SOCKET_LOG + PERF, link_gbps=2400)
    assert rc != 0
    assert "socket transport (NET/Socket)" in out["msg"]


def test_missing_gpudirect_fails_only_where_expected(tmp_path):
    no_gdr = "\n".join(line for line in GDR_LOG.splitlines() if "GDRDMA" not in line and "Direct" not in line)
    rc, out = gate(tmp_path, no_gdr + "\n" + PERF, link_gbps=2400)
    assert rc != 0 and "without GPUDirect RDMA" in out["msg"]
    rc, out = gate(tmp_path, no_gdr + "\n" + PERF, link_gbps=2400, expect_gdr=False)
    assert rc == 0, out["msg"]


def test_no_result_rows_fails(tmp_path):
    rc, out = gate(tmp_path, GDR_LOG, link_gbps=400)
    assert rc != 0 and "no all_reduce_perf result rows" in out["msg"]


def test_bad_share_names_the_allowed_range(tmp_path):
    rc, out = gate(tmp_path, PERF, link_gbps=400, min_share=1.5)
    assert rc != 0 and out["msg"] == "min_share: 1.5 is out of range; allowed: more than 0, at most 1"


def test_gdr_enabled_for_hca_is_no_proof_of_gpudirect(tmp_path):
    """Only `via NET/IB/<n>/GDRDMA` channels prove GPUDirect RDMA, not `enabled for HCA`."""
    enabled_only = "\n".join(line for line in GDR_LOG.splitlines() if "GDRDMA" not in line)
    assert "GPU Direct RDMA Enabled for HCA 0 'mlx5_0'" in enabled_only
    rc, out = gate(tmp_path, enabled_only + "\n" + PERF, link_gbps=2400)
    assert rc != 0 and "no `via NET/IB/<n>/GDRDMA` channel" in out["msg"]


def test_dgx_spark_both_halves_pass_on_the_absolute_floor(tmp_path):
    """Summed sysfs rate (400 Gb/s) would demand 40 GB/s; PCIe Gen5 x4 halves carry ~100 Gb/s."""
    rc, out = gate(tmp_path, SPARK_LOG + SPARK_BOTH, facts=SPARK_FACTS, hcas=["rocep1s0f0", "roceP2p1s0f0"],
                   min_busbw_gbs=20, expect_gdr=False)
    assert rc == 0, out["msg"]
    assert out["peak_busbw_gbs"] == pytest.approx(22.14) and out["pcie_limited"] is True
    assert "only the absolute floor" in out["notes"][0]


def test_dgx_spark_one_half_fails_the_default_floor(tmp_path):
    defaults = yaml.safe_load((ROOT / "roles" / "bench" / "defaults" / "main.yml").read_text())
    floor = defaults["bench_nccl_min_busbw_gbs"]
    rc, out = gate(tmp_path, SPARK_LOG + SPARK_ONE, facts=SPARK_FACTS, hcas=["rocep1s0f0"],
                   min_busbw_gbs=floor, expect_gdr=False)
    assert rc != 0
    assert "11.0 GB/s is under the floor bench_nccl_min_busbw_gbs=12 GB/s" in out["msg"]


def test_absolute_floor_applies_beside_the_share(tmp_path):
    rc, out = gate(tmp_path, GDR_LOG + PERF, link_gbps=2400, min_busbw_gbs=350)
    assert rc != 0 and "300.5 GB/s is under the floor bench_nccl_min_busbw_gbs=350 GB/s" in out["msg"]


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
    rc, out = run_play(tmp_path, {"nccl_bench_size": {"requested": "8G", "facts": facts}})
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
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = subprocess.run([ANSIBLE_PLAYBOOK, str(tmp_path / "play.yml")], cwd=ROOT, capture_output=True,
                          text=True, check=False, timeout=120,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "mpi_home").read_text() == expected


def test_link_speed_from_the_node_facts_of_the_h100_host(tmp_path):
    """The rate comes from the HCA's sysfs port as node_facts reports it."""
    facts = {"rdma": {"mlx5_0": {"ports": {"1": {"state": "ACTIVE", "rate_gbps": 400.0}}},
                      "mlx5_1": {"ports": {"1": {"state": "ACTIVE", "rate_gbps": 400.0}}}}}
    rc, out = gate(tmp_path, GDR_LOG + PERF, facts=facts, hcas=["mlx5_0:1", "mlx5_1"])
    assert rc == 0, out["msg"]
    assert out["link_gbps"] == 800.0
    rc, out = gate(tmp_path, GDR_LOG + PERF, facts=facts, hcas=["mlx5_0", "mlx5_9"])
    assert rc != 0 and "no bandwidth floor: the link speed is unknown" in out["msg"]


def test_serving_benchmark_rejects_bad_levels(capsys):
    from servekit import bench

    with pytest.raises(SystemExit) as exc:
        bench.main(["--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--concurrency", "1,x"])
    assert exc.value.code == 2
    assert "--concurrency: '1,x' is not a list of integers" in capsys.readouterr().err


def test_percentiles_pick_observed_values():
    from servekit.bench import _percentile

    values = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert _percentile(values, 0.5) == 0.3
    assert _percentile(values, 0.95) == 0.5
    assert _percentile([], 0.5) is None
