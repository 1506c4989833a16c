"""The parsers and decisions on output recorded on a real H100 host.

tests/fixtures/device-h100/ is what tests/device/gpu-check.sh recorded on a lent
machine (one NVIDIA H100 80GB HBM3, open kernel module 580.159.04, kernel
6.18.44, NCCL 2.28.9, no RDMA NIC) on 2026-11-27; gpu-check.log is its output.
"""

from __future__ import annotations

from pathlib import Path

from servekit.module_utils.node_gpu import (
    gpudirect_decision,
    kallsyms_exports,
    parse_gpu_query,
    parse_nvidia_driver_file,
    parse_nvidia_smi_xml,
    parse_topo_matrix,
)
from servekit.module_utils.node_nccl import nccl_transport, nccl_transport_problems

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "device-h100"


def _read(name: str) -> str:
    return (FIX / name).read_text()


def _facts() -> dict:
    gpus = parse_gpu_query(_read("nvidia-smi-query-gpu.csv"))
    driver = parse_nvidia_driver_file(_read("nvidia-version.txt"))
    return {
        "gpus": gpus,
        "driver_version": gpus[0]["driver_version"],
        "kernel": _read("uname.txt").split()[2],
        "nvidia_kernel_module": driver["kernel_module"],
        "peer_memory_exporter": kallsyms_exports(_read("kallsyms-peer-memory.txt")),
        "peermem_available": False,
        "peermem_loaded": False,
        "rdma": {},  # /sys/class/infiniband is empty there (infiniband.txt)
    }


def test_gpu_query_of_a_real_h100():
    (gpu,) = parse_gpu_query(_read("nvidia-smi-query-gpu.csv"))
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert (gpu["memory_total_mib"], gpu["compute_cap"], gpu["driver_version"]) == (
        81559, "9.0", "580.159.04")


def test_xml_and_driver_file_of_a_real_h100():
    xml = parse_nvidia_smi_xml(_read("nvidia-smi-q.xml"))
    assert (xml["driver_version"], xml["cuda_version"]) == ("580.159.04", "13.0")
    assert parse_nvidia_driver_file(_read("nvidia-version.txt")) == {
        "kernel_module": "open", "version": "580.159.04"}


def test_topology_of_one_gpu_and_no_nic():
    topo = parse_topo_matrix(_read("nvidia-smi-topo-m.txt"))
    assert topo["devices"] == ["GPU0"]
    assert topo["affinity"]["GPU0"]["CPU Affinity"] == "0-15"
    assert topo["nic_legend"] == {}


def test_nvidia_p2p_symbols_are_not_the_peer_memory_export():
    # the nvidia module's own nvidia_p2p_* symbols are there; ib_core's export is not
    assert "nvidia_p2p_get_pages" in _read("kallsyms-peer-memory.txt")
    assert kallsyms_exports(_read("kallsyms-peer-memory.txt")) is None


def test_dmabuf_capable_host_without_an_rdma_nic_expects_no_gdrdma():
    # Found on the H100: open module 580 on kernel 6.18 is DMA-BUF capable, but
    # with no RDMA device NCCL can only use sockets, so no GDRDMA channel may
    # be expected (the gpudirect stage said "expected" before).
    decision = gpudirect_decision(_facts())
    assert decision["mode"] == "dmabuf"
    assert decision["expect_gdr"] is False
    assert "no RDMA device" in decision["reason"]


def test_dmabuf_capable_host_with_an_rdma_nic_expects_gdrdma():
    facts = _facts() | {"rdma": {"mlx5_0": {"ports": {"1": {"state": "ACTIVE"}}}}}
    decision = gpudirect_decision(facts)
    assert (decision["mode"], decision["expect_gdr"]) == ("dmabuf", True)


def test_nccl_2_28_on_a_host_without_rdma_reports_the_socket_transport():
    info = nccl_transport(_read("nccl-one-rank.log"))
    assert info["network"] == "Socket" and info["socket_fallback"]
    assert info["ib_devices"] == []  # "NET/IB : Using [RO]; OOB eth0:..." lists no HCA
    assert info["gdr_disabled_hcas"] == ["eth0"]
    (problem,) = nccl_transport_problems(info, expect_gdr=False)
    assert "socket transport" in problem
