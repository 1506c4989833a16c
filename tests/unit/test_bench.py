"""The NCCL gate (bench stage, GPU part), run as the nccl_gate module on real-format output.

The all_reduce_perf rows are from a public 2x8-GPU run, the NCCL INFO lines
from real multi-node and single-H100 logs (tests/fixtures/README.md). The
bench stage that produces such output on a cluster cannot run here (no GPU,
no RDMA NIC).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_play

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PERF = (FIXTURES / "public" / "all_reduce_perf-2x8gpu.txt").read_text()
GDR_LOG = (FIXTURES / "nccl" / "multinode-ib-gdrdma-lines.txt").read_text()
SOCKET_LOG = (FIXTURES / "nccl" / "h100-1gpu-no-rdma-socket-fallback.log").read_text()


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


def test_link_speed_from_the_node_facts_of_the_h100_host(tmp_path):
    """The rate comes from the HCA's sysfs port as node_facts reports it."""
    facts = {"rdma": {"mlx5_0": {"ports": {"1": {"state": "ACTIVE", "rate_gbps": 400.0}}},
                      "mlx5_1": {"ports": {"1": {"state": "ACTIVE", "rate_gbps": 400.0}}}}}
    rc, out = gate(tmp_path, GDR_LOG + PERF, facts=facts, hcas=["mlx5_0:1", "mlx5_1"])
    assert rc == 0, out["msg"]
    assert out["link_gbps"] == 800.0
    rc, out = gate(tmp_path, GDR_LOG + PERF, facts=facts, hcas=["mlx5_0", "mlx5_9"])
    assert rc != 0 and "link speed unknown" in out["msg"]


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
