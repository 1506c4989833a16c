"""Every RDMA rail: NCCL_IB_HCA parsing, netdev choice, RoCE v2 IPv4 GIDs, DSCP trust and PFC.

Real formats only: GID tables recorded on an 8-rail H100 host written out as
sysfs holds them (tests/rdma_sysfs.py), ``mlnx_qos -i`` output recorded on a
ConnectX, and the ``dcb`` output of iproute2's own man pages
(tests/fixtures/rdma/README.md).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from rdma_sysfs import FIXTURES, H100_GIDS, gid_table, with_ipv4, write_hca
from servekit.module_utils.node_rdma import parse_sysfs_port
from servekit.module_utils.rdma_rails import (
    nccl_ib_hca,
    netdev_device_unit,
    parse_dcb_app_dscp,
    parse_dcb_pfc,
    parse_hca_list,
    parse_mlnx_qos,
    qos_problems,
    rail_from_sysfs,
    rail_problems,
    select_netdev,
)

TABLE = gid_table(H100_GIDS.read_text())


def _port_files(port_dir: Path) -> dict[str, str]:
    files = {name: (port_dir / name).read_text() for name in ("state", "phys_state", "rate", "link_layer")}
    for gid in (port_dir / "gids").iterdir():
        files[f"gids/{gid.name}"] = gid.read_text()
        for attr in ("types", "ndevs"):
            path = port_dir / "gid_attrs" / attr / gid.name
            files[f"gid_attrs/{attr}/{gid.name}"] = path.read_text() if path.exists() else ""
    return files


def _rail(tmp_path: Path, hca: str = "mlx5_6", netdev: str = "gpu1_eth", ipv4: str | None = "10.200.1.10",
          **port) -> dict:
    write_hca(tmp_path, hca, [netdev], with_ipv4(TABLE, ipv4), **port)
    port_dir = tmp_path / "class/infiniband" / hca / "ports/1"
    return rail_from_sysfs(hca, None, {"1": _port_files(port_dir)}, [netdev], None)


# --------------------------------------------------------------------------
# NCCL_IB_HCA
# --------------------------------------------------------------------------


def test_every_hca_of_the_list_with_its_port():
    assert parse_hca_list("rocep1s0f0,roceP2p1s0f0") == [("rocep1s0f0", None), ("roceP2p1s0f0", None)]
    assert parse_hca_list("=mlx5_0:1, mlx5_3") == [("mlx5_0", 1), ("mlx5_3", None)]


def test_env_value_matches_names_exactly():
    # Without '=' NCCL treats each name as a prefix: on an 8-rail host mlx5_1
    # would also pick mlx5_10 and mlx5_11 (NCCL env docs, NCCL_IB_HCA).
    assert nccl_ib_hca("mlx5_0,mlx5_1:1") == "=mlx5_0,mlx5_1:1"
    assert nccl_ib_hca("=mlx5_0") == "=mlx5_0"


@pytest.mark.parametrize(("value", "why"), [
    ("^mlx5_1", "an exclusion ('^') list cannot say which HCAs to configure"),
    ("mlx5_0,mlx5_0", "mlx5_0 is listed twice"),
    ("mlx5 0", "'mlx5 0' is not a device name"),
    ("mlx5_0:x", "'mlx5_0:x' is not a device name"),
    ("", "'' is not a device name"),
])
def test_bad_hca_list_names_variable_value_and_form(value, why):
    with pytest.raises(ValueError, match="cluster_rdma_hca") as err:
        parse_hca_list(value)
    assert why in str(err.value) and repr(value) in str(err.value)
    assert "name or name:port" in str(err.value)


# --------------------------------------------------------------------------
# netdev of each HCA
# --------------------------------------------------------------------------


def test_netdev_discovered_when_the_function_has_one():
    assert select_netdev("rocep1s0f0", ["enp1s0f0np0"], None) == ("enp1s0f0np0", None)


def test_netdev_override_must_be_one_of_the_hcas_netdevs():
    assert select_netdev("mlx5_0", ["ens1np0", "ens1v0"], "ens1np0") == ("ens1np0", None)
    netdev, problem = select_netdev("mlx5_0", ["ens1np0"], "eth9")
    assert netdev is None and "rdma_netdevs names 'eth9'" in problem and "ens1np0" in problem


@pytest.mark.parametrize(("found", "why"), [
    ([], "no netdev under /sys/class/infiniband/mlx5_0/device/net"),
    (["ens1np0", "ens1v0"], "several netdevs (ens1np0, ens1v0)"),
])
def test_netdev_missing_or_ambiguous_asks_for_rdma_netdevs(found, why):
    netdev, problem = select_netdev("mlx5_0", found, None)
    assert netdev is None and why in problem and "rdma_netdevs: {mlx5_0: <netdev>}" in problem


def test_device_unit_is_escaped_as_systemd_does():
    names = ["enp1s0f0np0", "enP2p1s0f0np0", "gpu1_eth", "eth-1", "bond0.100", "a@b"]
    got = [netdev_device_unit(n) for n in names]
    assert got[0] == "sys-subsystem-net-devices-enp1s0f0np0.device"
    assert got[3] == "sys-subsystem-net-devices-eth\\x2d1.device"
    escape = shutil.which("systemd-escape")
    if escape is None:
        pytest.skip("systemd-escape not installed: compared with the fixed names only")
    real = [subprocess.run([escape, "--path", "--suffix=device", f"/sys/subsystem/net/devices/{n}"],
                           capture_output=True, text=True, check=True).stdout.strip() for n in names]
    assert got == real


# --------------------------------------------------------------------------
# RoCE v2 IPv4 GID on every rail
# --------------------------------------------------------------------------


def test_recorded_h100_rail_has_a_roce_v2_ipv4_gid(tmp_path):
    rail = _rail(tmp_path)
    assert rail["netdev"] == "gpu1_eth"
    assert rail["ports"]["1"]["roce_v2_ipv4_gids"] == [
        {"index": 3, "ipv4": "10.200.1.10", "ndev": "gpu1_eth"}]
    assert rail_problems(rail) == []


def test_rail_without_an_ipv4_address_has_no_gid_nccl_would_pick(tmp_path):
    # Link-local and global IPv6 GIDs stay: NCCL's default address family is
    # IPv4 (NCCL_IB_ADDR_FAMILY), so it would not pick them.
    rail = _rail(tmp_path, ipv4=None)
    assert [g["index"] for g in rail["ports"]["1"]["gids"]] == [0, 1, 4, 5]
    assert rail_problems(rail) == [
        "mlx5_6 port 1: no RoCE v2 GID with an IPv4 address (NCCL >= 2.21 picks one itself); give "
        "gpu1_eth an IPv4 address, or pin rdma_nccl_ib_gid_index"]


def test_ipv4_gid_of_roce_v1_only_is_not_enough():
    files = {"state": "4: ACTIVE\n", "link_layer": "Ethernet\n"}
    for index, gid, kind in TABLE:
        files[f"gids/{index}"] = gid + "\n"
        files[f"gid_attrs/types/{index}"] = ("IB/RoCE v1" if "ffff" in gid else kind) + "\n"
    rail = rail_from_sysfs("mlx5_6", None, {"1": files}, ["gpu1_eth"], None)
    assert "no RoCE v2 GID with an IPv4 address" in rail_problems(rail)[0]


def test_down_port_and_missing_hca(tmp_path):
    rail = _rail(tmp_path, state="1: DOWN", phys_state="3: Disabled")
    assert rail_problems(rail) == ["mlx5_6 port 1: state DOWN (Disabled); bring the link up (cable, "
                                   "switch port, `ip link set <netdev> up`)"]
    absent = rail_from_sysfs("mlx5_9", None, {}, [], None, present=False)
    assert rail_problems(absent, ["mlx5_0", "mlx5_6"]) == [
        "mlx5_9: not in /sys/class/infiniband (present: mlx5_0, mlx5_6); check cluster_rdma_hca"]


def test_port_filter_checks_only_the_named_port(tmp_path):
    write_hca(tmp_path, "mlx5_6", ["gpu1_eth"], TABLE)
    files = _port_files(tmp_path / "class/infiniband/mlx5_6/ports/1")
    rail = rail_from_sysfs("mlx5_6", 2, {"1": files}, ["gpu1_eth"], None)
    assert rail_problems(rail) == ["mlx5_6: port 2 not found under /sys/class/infiniband/mlx5_6/ports"]
    assert parse_sysfs_port(files)["state"] == "ACTIVE"


# --------------------------------------------------------------------------
# DSCP trust and PFC
# --------------------------------------------------------------------------


def test_dcb_man_page_output_parses():
    pfc = parse_dcb_pfc((FIXTURES / "dcb-pfc-show-eth0.txt").read_text())
    assert pfc == {0: False, 1: False, 2: False, 3: False, 4: False, 5: False, 6: True, 7: True}
    dscp = parse_dcb_app_dscp((FIXTURES / "dcb-N-app-show-eth0-dscp-prio.txt").read_text())
    assert dscp == {0: [0], 24: [2, 3], 48: [6]}
    assert parse_dcb_app_dscp("") == {} and parse_dcb_pfc("") == {}


def test_mlnx_qos_recorded_output_parses():
    recorded = parse_mlnx_qos((FIXTURES / "mlnx_qos-i-eth4-trust-dscp-pfc3.txt").read_text())
    assert recorded == {"trust": "dscp", "pfc": {p: p == 3 for p in range(8)}}
    flattened = parse_mlnx_qos((FIXTURES / "mlnx_qos-i-eth2-pfc-1-0-1-0-0-0-1-1.txt").read_text())
    assert sorted(p for p, on in flattened["pfc"].items() if on) == [0, 2, 6, 7]


def test_qos_as_the_rdma_unit_sets_it_passes():
    # `dcb pfc show` in the format of dcb-pfc(8) after `prio-pfc all:off 3:on`
    pfc = parse_dcb_pfc("pfc-cap 8 macsec-bypass off delay 0\n"
                        "prio-pfc 0:off 1:off 2:off 3:on 4:off 5:off 6:off 7:off\n")
    mlnx = parse_mlnx_qos((FIXTURES / "mlnx_qos-i-eth4-trust-dscp-pfc3.txt").read_text())
    assert qos_problems("eth4", 26, 3, pfc, parse_dcb_app_dscp("dscp-prio 26:3\n"), mlnx=mlnx) == []


def test_qos_problems_name_the_netdev_and_what_differs():
    pfc = parse_dcb_pfc((FIXTURES / "dcb-pfc-show-eth0.txt").read_text())
    dscp = parse_dcb_app_dscp((FIXTURES / "dcb-N-app-show-eth0-dscp-prio.txt").read_text())
    mlnx = {"trust": "pcp", "pfc": {}}
    problems = qos_problems("eth0", 24, 3, pfc, dscp, mlnx=mlnx)
    assert problems[0].startswith("eth0: PFC is on for priorities [6, 7], want only 3")
    assert problems[1].startswith("eth0: DSCP 24 maps to priorities [2, 3], want [3]")
    assert problems[2].startswith("eth0: mlnx_qos reports priority trust state pcp, want dscp")
    assert "no prio-pfc line" in qos_problems("eth0", 26, 3, {}, {26: [3]})[0]
