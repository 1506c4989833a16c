"""GPU / RDMA parsers and preflight decisions on real output (tests/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
from servekit.module_utils.node_gpu import (
    acs_warnings,
    gpu_nic_affinity,
    gpudirect_decision,
    parse_gpu_query,
    parse_lspci_acs,
    parse_nvidia_smi_xml,
    parse_topo_matrix,
    pci_chain,
    sysfs_bdf,
)
from servekit.module_utils.node_nccl import (
    bandwidth_gate,
    nccl_transport,
    nccl_transport_problems,
    parse_all_reduce_perf,
)
from servekit.module_utils.node_preflight import (
    cluster_problems,
    host_problems,
    host_warnings,
    memlock_ok,
    parse_proc_limits,
    preflight_report,
)
from servekit.module_utils.node_rdma import parse_rdma_link, parse_sysfs_port, roce_v2_gid_index

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H100 = FIXTURES / "nvidia-h100"


def probe_section(index: int) -> str:
    """The probe file holds several commands' output separated by '---' lines."""
    return (H100 / "probe.txt").read_text().split("\n---\n")[index]


def test_gpu_query_on_h100():
    line = probe_section(2)
    assert line.startswith("0, NVIDIA H100")
    assert parse_gpu_query(line) == [{
        "index": 0, "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-01dadcaa-8683-354a-8d43-82c450a4b357", "pci_bus_id": "00000000:00:06.0",
        "memory_total_mib": 81559, "driver_version": "580.159.04", "compute_cap": "9.0"}]


def test_gpu_query_rejects_a_different_field_list():
    with pytest.raises(ValueError, match="expected 7 fields"):
        parse_gpu_query("0, NVIDIA H100 80GB HBM3, GPU-x\n")


def test_nvidia_smi_xml_on_h100():
    parsed = parse_nvidia_smi_xml((H100 / "nvidia-smi-q.xml").read_text())
    assert parsed["driver_version"] == "580.159.04"
    assert parsed["cuda_version"] == "13.0"
    assert parsed["attached_gpus"] == 1
    assert parsed["gpus"] == [{"pci_bus_id": "00000000:00:06.0", "name": "NVIDIA H100 80GB HBM3",
                               "uuid": "GPU-01dadcaa-8683-354a-8d43-82c450a4b357",
                               "minor_number": "0", "memory_total_mib": 81559,
                               "addressing_mode": "None", "fabric_state": None,
                               "fabric_status": None}]


def _hgx_gpu(state: str, status: str) -> dict:
    """The recorded H100's facts with the fabric block of an HGX node (composed: see
    tests/fixtures/README.md, nvidia-smi-q-hgx-fabric-in-progress.xml)."""
    xml = (H100 / "nvidia-smi-q-hgx-fabric-in-progress.xml").read_text()
    xml = xml.replace("<state>In Progress</state>\n\t\t\t<status>N/A</status>",
                      f"<state>{state}</state>\n\t\t\t<status>{status}</status>")
    (gpu,) = parse_nvidia_smi_xml(xml)["gpus"]
    return dict(parse_gpu_query(probe_section(2))[0], **gpu)


def test_fabric_manager_not_done_fails_preflight():
    """HGX: nvidia-smi lists the GPU while CUDA fails with error 802 until Fabric Manager is done."""
    gpu = _hgx_gpu("In Progress", "N/A")
    assert (gpu["fabric_state"], gpu["fabric_status"]) == ("In Progress", None)
    problems = host_problems("h100-a", _facts(gpus=[gpu]), WANT)
    assert problems == [
        "h100-a: GPU 0 (00000000:00:06.0) fabric state is 'In Progress', not 'Completed': Fabric "
        "Manager has not set up this NVSwitch GPU, and CUDA fails with error 802 (system not yet "
        "initialized) although nvidia-smi lists it; start nvidia-fabricmanager (`systemctl status "
        "nvidia-fabricmanager`; its version must equal the driver's)"]


@pytest.mark.parametrize(("state", "status", "fails"), [
    ("Completed", "Success", False), ("N/A", "N/A", False), ("Not Supported", "N/A", False),
    ("Not Started", "N/A", True), ("Completed", "Unknown Error", True)])
def test_fabric_states(state, status, fails):
    problems = host_problems("h100-a", _facts(gpus=[_hgx_gpu(state, status)]), WANT)
    assert bool(problems) is fails, problems


def test_topo_single_gpu_with_ansi_codes():
    topo = parse_topo_matrix((H100 / "topo.txt").read_text())
    assert topo["devices"] == ["GPU0"]
    assert topo["matrix"] == {"GPU0": {"GPU0": "X"}}
    assert topo["affinity"]["GPU0"] == {"CPU Affinity": "0-15", "NUMA Affinity": "0",
                                        "GPU NUMA ID": "N/A"}
    assert gpu_nic_affinity(topo) == {}


def test_topo_8gpu_9nic_maps_each_gpu_to_its_pix_nic():
    topo = parse_topo_matrix((FIXTURES / "public" / "topo-8gpu-9nic.txt").read_text())
    assert len(topo["devices"]) == 17
    assert topo["matrix"]["GPU3"]["NIC4"] == "PIX"
    assert topo["affinity"]["GPU4"]["NUMA Affinity"] == "2"
    assert gpu_nic_affinity(topo) == {"GPU0": ["NIC0"], "GPU1": ["NIC1"], "GPU2": ["NIC2"],
                                      "GPU3": ["NIC4"], "GPU4": ["NIC5"], "GPU5": ["NIC6"]}


def test_topo_without_header_is_an_error():
    with pytest.raises(ValueError, match="no header row"):
        parse_topo_matrix("No devices were found\n")


def test_proc_limits_of_the_h100_host_and_the_lab_ceiling():
    h100 = "\n".join(["Limit                     Soft Limit           Hard Limit           Units",
                      "Max locked memory         unlimited            unlimited            bytes"])
    lab = "\n".join(["Limit                     Soft Limit           Hard Limit           Units",
                     "Max locked memory         8388608              8388608              bytes"])
    assert memlock_ok(parse_proc_limits(h100))
    assert not memlock_ok(parse_proc_limits(lab))
    assert memlock_ok(parse_proc_limits(lab), ceiling="8388608")
    assert "max locked memory           (kbytes, -l) unlimited" in (H100 / "probe.txt").read_text()


def test_proc_limits_of_this_process():
    limits = parse_proc_limits(Path("/proc/self/limits").read_text())
    assert set(limits["Max locked memory"]) == {"soft", "hard", "units"}
    assert limits["Max open files"]["units"] == "files"


# Sysfs layout per the kernel ABI (Documentation/ABI/stable/sysfs-class-infiniband):
# a ConnectX port in RoCE mode has, per netdev address, one RoCE v1 and one RoCE v2 GID.
SEED_PORT = {
    "state": "4: ACTIVE\n", "phys_state": "5: LinkUp\n", "rate": "200 Gb/sec (4X HDR)\n",
    "link_layer": "Ethernet\n",
    "gids/0": "fe80:0000:0000:0000:5e25:73ff:fe0a:1b2c\n",
    "gid_attrs/types/0": "IB/RoCE v1\n", "gid_attrs/ndevs/0": "enP2p1s0f0np0\n",
    "gids/1": "fe80:0000:0000:0000:5e25:73ff:fe0a:1b2c\n",
    "gid_attrs/types/1": "RoCE v2\n", "gid_attrs/ndevs/1": "enP2p1s0f0np0\n",
    "gids/2": "0000:0000:0000:0000:0000:ffff:c0a8:6401\n",
    "gid_attrs/types/2": "IB/RoCE v1\n", "gid_attrs/ndevs/2": "enP2p1s0f0np0\n",
    "gids/3": "0000:0000:0000:0000:0000:ffff:c0a8:6401\n",
    "gid_attrs/types/3": "RoCE v2\n", "gid_attrs/ndevs/3": "enP2p1s0f0np0\n",
    "gids/4": "0000:0000:0000:0000:0000:0000:0000:0000\n",
}


def test_sysfs_port_and_roce_v2_gid_index():
    port = parse_sysfs_port(SEED_PORT)
    assert (port["state"], port["phys_state"], port["rate_gbps"]) == ("ACTIVE", "LinkUp", 200.0)
    assert [g["index"] for g in port["gids"]] == [0, 1, 2, 3]
    assert port["gids"][3]["ipv4"] == "192.168.100.1"
    assert roce_v2_gid_index(port, "enP2p1s0f0np0") == 3
    assert roce_v2_gid_index(port, "enP2p1s0f0np0", prefer_ipv4=False) == 1
    assert roce_v2_gid_index(port, "eth0") is None


def test_rdma_link_show():
    text = ("link roceP2p1s0f0/1 state ACTIVE physical_state LINK_UP netdev enP2p1s0f0np0\n"
            "link mlx5_1/1 state DOWN physical_state DISABLED\n")
    assert parse_rdma_link(text) == [
        {"hca": "roceP2p1s0f0", "port": 1, "state": "ACTIVE", "physical_state": "LINK_UP",
         "netdev": "enP2p1s0f0np0"},
        {"hca": "mlx5_1", "port": 1, "state": "DOWN", "physical_state": "DISABLED", "netdev": None}]


def _facts(**over):
    gpus = parse_gpu_query(probe_section(2))
    facts = {"gpus": gpus, "driver_version": "580.159.04", "cuda_version": "13.0",
             "rdma": {"roceP2p1s0f0": {"ports": {"1": parse_sysfs_port(SEED_PORT)}}},
             "netdevs": {"enP2p1s0f0np0": {"mtu": 9000}}, "data_mtu": 9000}
    facts.update(over)
    return facts


WANT = {"rdma_hca": "roceP2p1s0f0", "rdma_netdev": "enP2p1s0f0np0", "mtu": 9000,
        "min_driver": "550.54", "gpus_per_node": 1}


def test_seed_host_passes_preflight():
    assert host_problems("spark-01", _facts(), WANT) == []


@pytest.mark.parametrize(
    ("facts", "want", "message"),
    [
        ({"rdma": {"mlx5_0": {"ports": {}}}}, {},
         "spark-01: RDMA device cluster_rdma_hca='roceP2p1s0f0' not present; present: mlx5_0"),
        ({"rdma": {}}, {}, "present: none (is mlx5_ib loaded?)"),
        ({"netdevs": {"enP2p1s0f0np0": {"mtu": 1500}}}, {},
         "enP2p1s0f0np0 MTU is 1500, want 9000"),
        ({}, {"rdma_netdev": "eth9"}, "netdev cluster_rdma_netdev='eth9' not found for roceP2p1s0f0"),
        ({}, {"min_driver": "590.1"}, "NVIDIA driver 580.159.04 is older than required 590.1"),
        ({}, {"gpus_per_node": 8}, "1 GPU(s) visible, inventory says cluster_devices_per_node=8"),
    ],
)
def test_preflight_host_problems_name_host_and_fix(facts, want, message):
    problems = host_problems("spark-01", _facts(**facts), dict(WANT, **want))
    assert any(message in p for p in problems), problems


def test_link_down_and_missing_roce_v2_gid():
    port = dict(SEED_PORT, state="1: DOWN\n", phys_state="3: Disabled\n")
    for key in ("gid_attrs/types/1", "gid_attrs/types/3"):
        port[key] = "IB/RoCE v1\n"
    problems = host_problems("spark-02", _facts(rdma={"roceP2p1s0f0": {
        "ports": {"1": parse_sysfs_port(port)}}}), WANT)
    assert "spark-02: roceP2p1s0f0 port state is DOWN (Disabled)" in problems[0]
    assert "no RoCE v2 GID on enP2p1s0f0np0" in problems[1]


def test_cluster_problems():
    ok = {"a": _facts(), "b": _facts()}
    assert cluster_problems(ok, 2) == []
    assert "2 GPU(s) across 2 node(s), the model needs" in cluster_problems(ok, 4)[0]
    mixed = {"a": _facts(), "b": _facts(cuda_version="12.8", data_mtu=1500)}
    problems = cluster_problems(mixed, 2, check_mtu=True)
    assert "CUDA version differs between nodes: a=13.0, b=12.8" in problems[0]
    assert "data netdev MTU differs between nodes: a=9000, b=1500" in problems[1]


def test_differing_mtus_before_the_network_stage_fail_only_where_preflight_mtu_is_set():
    """Preflight runs before the network stage sets the MTU: fresh nodes at 1500 and
    one already at 9000 are what that stage is for (hardware review P3)."""
    netdevs = {"a": 9000, "b": 1500}
    facts = {h: _facts(netdevs={"enP2p1s0f0np0": {"mtu": mtu}}) for h, mtu in netdevs.items()}
    left_to_network_stage = preflight_report(facts, {h: dict(WANT, mtu=None) for h in facts}, 2)
    assert not [p for p in left_to_network_stage["problems"] if "MTU" in p], left_to_network_stage
    must_be_set = preflight_report(facts, {h: dict(WANT, mtu=9000) for h in facts}, 2)
    assert "cluster: data netdev MTU differs between nodes: a=9000, b=1500" in must_be_set["problems"]
    assert any(p.startswith("b: enP2p1s0f0np0 MTU is 1500, want 9000") for p in must_be_set["problems"])


def test_no_gpu_no_gpudirect():
    assert gpudirect_decision({"gpus": []})["mode"] == "none"


@pytest.mark.parametrize("log", ["h100-1gpu-no-rdma-socket-fallback.log",
                                 "h100-1gpu-ib-env-set-but-no-hca.log"])
def test_nccl_socket_fallback_is_caught(log):
    info = nccl_transport((FIXTURES / "nccl" / log).read_text())
    assert info["network"] == "Socket" and info["socket_fallback"]
    assert "fell back to the socket transport" in nccl_transport_problems(info)[0]


def test_nccl_ib_with_gdrdma_passes():
    info = nccl_transport((FIXTURES / "nccl" / "multinode-ib-gdrdma-lines.txt").read_text())
    assert info["network"] == "IB" and not info["socket_fallback"]
    assert info["gdr_enabled_hcas"] == ["mlx5_0", "roceP2p1s0f0"]
    assert info["gdr_disabled_hcas"] == ["mlx5_5"]
    assert info["dmabuf"] and info["gdrdma_channels"] == 3 and info["net_channels"] == 3
    assert nccl_transport_problems(info) == []


def test_nccl_ib_without_gdr_fails_when_gpudirect_is_expected():
    lines = [line for line in (FIXTURES / "nccl" / "multinode-ib-gdrdma-lines.txt").read_text()
             .splitlines() if "GPU Direct" not in line and "GDRDMA" not in line]
    info = nccl_transport("\n".join(lines))
    assert "without GPUDirect RDMA" in nccl_transport_problems(info)[0]
    assert nccl_transport_problems(info, expect_gdr=False) == []



def test_nccl_plugin_network_is_rdma_not_a_socket_fallback():
    """NCCL prints the net plugin's own name (`Using network IBext_v6`, nccl-tests#294; `via
    NET/IBext_v8/2`, nccl#1814); only `Socket` is the fallback."""
    info = nccl_transport((FIXTURES / "nccl" / "plugin-ibext-lines.txt").read_text())
    assert info["network"] == "IBext_v6" and not info["socket_fallback"]
    assert info["ib_devices"][0].startswith("[0]mlx5_1:1/IB/SHARP")
    problems = nccl_transport_problems(info)
    assert len(problems) == 1 and "NCCL used NET/IBext_v6 without GPUDirect RDMA" in problems[0]
    assert nccl_transport_problems(info, expect_gdr=False) == []
    info = nccl_transport((FIXTURES / "nccl" / "vllm-ray-2node-ibext-gdrdma.log").read_text())
    assert info["gdr_enabled_hcas"] == ["mlx5_0"] and info["gdrdma_channels"] == 8
    assert nccl_transport_problems(info) == []

def test_gdr_enabled_for_hca_without_gdrdma_channels_is_not_proof():
    """`GPU Direct RDMA enabled for HCA` is the NIC's capability; the channels say what ran."""
    log = (FIXTURES / "nccl" / "vllm-ray-2node-ib-gdrdma.log").read_text().replace("/GDRDMA", "")
    info = nccl_transport(log)
    assert info["gdr_enabled_hcas"] == ["mlx5_0"] and info["gdrdma_channels"] == 0
    problems = nccl_transport_problems(info)
    assert len(problems) == 1 and "no `via NET/IB/<n>/GDRDMA` channel" in problems[0]


def test_some_channels_without_gdrdma_fail_naming_one():
    log = (FIXTURES / "nccl" / "vllm-ray-2node-ib-gdrdma.log").read_text()
    log = log.replace("Channel 01/0 : 0[0] -> 1[0] [send] via NET/IB/0/GDRDMA",
                      "Channel 01/0 : 0[0] -> 1[0] [send] via NET/IB/0")
    problems = nccl_transport_problems(nccl_transport(log))
    assert "h100-a:3877:3962 [0] NCCL INFO Channel 01/0 : 0[0] -> 1[0] [send] via NET/IB/0'" in problems[0]


def test_all_reduce_perf_and_gate():
    result = parse_all_reduce_perf((FIXTURES / "public" / "all_reduce_perf-2x8gpu.txt").read_text())
    assert len(result["rows"]) == 11
    assert result["rows"][-1] == {"size_bytes": 33554432, "type": "float", "out_busbw": 300.51,
                                  "in_busbw": 300.52}
    assert result["peak_busbw_gbs"] == 300.51
    assert bandwidth_gate(result["peak_busbw_gbs"], 3000) == []  # 80% of 375 GB/s = 300
    assert "is 75% of the 3200 Gb/s link" in bandwidth_gate(300.0, 3200)[0]


def test_all_reduce_avg_line():
    text = "#  Avg bus bandwidth    : 21.0543 \n"
    assert parse_all_reduce_perf(text)["avg_busbw_gbs"] == 21.0543


def test_node_facts_module_reads_a_sysfs_tree(tmp_path):
    """The module itself, through Ansible, on a sysfs tree laid out like the seed's host."""
    from helpers import run_task

    port = tmp_path / "sys" / "class" / "infiniband" / "roceP2p1s0f0" / "ports" / "1"
    for rel, content in SEED_PORT.items():
        (port / rel).parent.mkdir(parents=True, exist_ok=True)
        (port / rel).write_text(content)
    netdev = tmp_path / "sys" / "class" / "net" / "enP2p1s0f0np0"
    netdev.mkdir(parents=True)
    (netdev / "mtu").write_text("9000\n")
    (netdev / "operstate").write_text("up\n")
    rc, result = run_task(tmp_path, {"node_facts": {"sysfs_root": str(tmp_path / "sys")}})
    assert rc == 0
    node = result["ansible_facts"]["servekit_node"]
    assert roce_v2_gid_index(node["rdma"]["roceP2p1s0f0"]["ports"]["1"], "enP2p1s0f0np0") == 3
    assert node["netdevs"] == {"enP2p1s0f0np0": {"mtu": 9000, "operstate": "up"}}
    assert node["peermem_loaded"] is False
    assert node["gpudirect"]["mode"] == "none" and node["gpudirect"]["expect_gdr"] is False
    assert node["rdma"]["roceP2p1s0f0"]["pcie_gbps"] is None  # no device/ link files in the tree
    assert host_problems("spark-01", dict(node, gpus=[]), dict(WANT, gpus_per_node=0,
                                                             min_driver=None)) == []


# --- PCIe ACS between a rail NIC and its GPU (issue 24, item 8) -------------------------------

LSPCI_ACS = (FIXTURES / "public" / "lspci-acs-switch.txt").read_text()
# resolved sysfs paths of the fixture's NIC and GPU (/sys/class/infiniband/<hca>/device,
# /sys/bus/pci/devices/<bdf>): root port 40:01.1, switch 43:00.0, its downstream ports 44:*
NIC_PATH = "/sys/devices/pci0000:40/0000:40:01.1/0000:43:00.0/0000:44:00.0/0000:45:00.0"
GPU_PATH = "/sys/devices/pci0000:40/0000:40:01.1/0000:43:00.0/0000:44:01.0/0000:47:00.0"


def test_lspci_acs_and_pci_chains():
    acs = parse_lspci_acs(LSPCI_ACS)
    assert sorted(acs) == ["0000:40:01.1", "0000:44:00.0", "0000:44:01.0"]
    assert acs["0000:44:00.0"].startswith("SrcValid+ TransBlk- ReqRedir+")
    assert pci_chain(NIC_PATH) == ["0000:40:01.1", "0000:43:00.0", "0000:44:00.0", "0000:45:00.0"]
    assert sysfs_bdf("00000000:47:00.0") == "0000:47:00.0"


def _acs_facts(lspci: str | None = LSPCI_ACS, expect_gdr: bool = True) -> dict:
    return _facts(pci_chains={"mlx5_0": pci_chain(NIC_PATH), "GPU0": pci_chain(GPU_PATH)},
                  acs_ctl=parse_lspci_acs(lspci) if lspci is not None else None,
                  gpudirect={"expect_gdr": expect_gdr})


def test_acs_on_the_switch_port_of_a_rail_nic_warns():
    want = dict(WANT, rdma_hcas=["mlx5_0"])
    (warning,) = host_warnings("h100-a", _acs_facts(), want)
    assert warning.startswith("h100-a: PCIe ACS is enabled between mlx5_0 and GPU0 on 0000:44:00.0 "
                              "(SrcValid+ TransBlk- ReqRedir+")
    assert "0000:40:01.1" not in warning  # the root port above the switch carries no P2P here
    report = preflight_report({"h100-a": _acs_facts()}, {"h100-a": want}, 1)
    assert report["warnings"] == [warning] and report["problems"] == []


def test_acs_off_or_no_gdr_expected_says_nothing():
    off = LSPCI_ACS.replace("ACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd- ",
                            "ACSCtl:\tSrcValid- TransBlk- ReqRedir- CmpltRedir- UpstreamFwd- ")
    want = dict(WANT, rdma_hcas=["mlx5_0"])
    assert host_warnings("h100-a", _acs_facts(off), want) == []
    assert host_warnings("h100-a", _acs_facts(expect_gdr=False), want) == []
    assert host_warnings("h100-a", _acs_facts(lspci=None), want) == [
        "h100-a: no lspci (pciutils) here: PCIe ACS between the rail NICs and the GPUs was not checked"]


def test_only_rail_nics_and_gpus_are_paired():
    """A storage NIC behind the same switch is no rail: neither it nor the rail pair with it."""
    chains = {"mlx5_0": pci_chain(NIC_PATH), "GPU0": pci_chain(GPU_PATH),
              "mlx5_8": ["0000:40:01.1", "0000:43:00.0", "0000:44:00.0", "0000:46:00.0"]}
    warnings = acs_warnings(chains, parse_lspci_acs(LSPCI_ACS), ["mlx5_0"])
    assert len(warnings) == 1 and "between mlx5_0 and GPU0" in warnings[0]


def test_nic_and_gpu_on_different_root_ports_are_not_judged():
    chains = {"mlx5_0": ["0000:40:01.1", "0000:45:00.0"], "GPU0": ["0000:c0:01.1", "0000:c1:00.0"]}
    assert acs_warnings(chains, parse_lspci_acs(LSPCI_ACS), ["mlx5_0"]) == []
