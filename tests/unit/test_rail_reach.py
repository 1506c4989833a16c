"""Rail-to-rail reachability (issue 24, item 7): which pings preflight makes, and how it reads them.

Facts: the recorded ConnectX GID table (tests/fixtures/rdma/ibv_devinfo-vvv-h100-mlx5_6-gids.txt)
as sysfs holds it (tests/rdma_sysfs.py), one address per node and rail. Ping output: recorded
with iputils 20221126 (tests/fixtures/rdma/ping/README.md); the real `ping` also runs on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import run_task
from rdma_sysfs import H100_GIDS, gid_table, with_ipv4
from servekit.module_utils.node_rdma import parse_sysfs_port
from servekit.module_utils.rail_reach import ping_argv, ping_problem, rail_endpoints, rail_pings

PING = Path(__file__).resolve().parents[1] / "fixtures" / "rdma" / "ping"
TABLE = gid_table(H100_GIDS.read_text())


def _port(netdev: str, ipv4: str | None) -> dict:
    files = {"state": "4: ACTIVE\n", "phys_state": "5: LinkUp\n", "rate": "400 Gb/sec (4X NDR)\n",
             "link_layer": "Ethernet\n"}
    for index, gid, kind in with_ipv4(TABLE, ipv4):
        files |= {f"gids/{index}": gid + "\n", f"gid_attrs/types/{index}": kind + "\n",
                  f"gid_attrs/ndevs/{index}": netdev + "\n"}
    return parse_sysfs_port(files)


def _facts(node: int, mtu: int = 9000, rail3_ipv4: bool = True) -> dict:
    """Two rails: mlx5_0 on gpu0_eth (10.200.0.<node>), mlx5_3 on gpu3_eth (10.200.3.<node>)."""
    rail3 = f"10.200.3.{node}" if rail3_ipv4 else None
    return {"rdma": {"mlx5_0": {"ports": {"1": _port("gpu0_eth", f"10.200.0.{node}")}},
                     "mlx5_3": {"ports": {"1": _port("gpu3_eth", rail3)}}},
            "netdevs": {"gpu0_eth": {"mtu": mtu}, "gpu3_eth": {"mtu": mtu}}}


HCAS = {"h100-a": "mlx5_0,mlx5_3", "h100-b": "=mlx5_0:1,mlx5_3:1"}


def test_endpoints_are_each_rails_roce_v2_ipv4_gid_and_its_netdev():
    assert rail_endpoints(_facts(1), "mlx5_0,mlx5_3") == [
        {"hca": "mlx5_0", "netdev": "gpu0_eth", "address": "10.200.0.1", "mtu": 9000},
        {"hca": "mlx5_3", "netdev": "gpu3_eth", "address": "10.200.3.1", "mtu": 9000}]


def test_rail_i_pings_the_peers_rail_i_over_its_own_interface():
    pings = rail_pings("h100-a", HCAS, {"h100-a": _facts(1), "h100-b": _facts(2)})
    assert [(p["netdev"], p["address"], p["payload"]) for p in pings] == [
        ("gpu0_eth", "10.200.0.2", 8972), ("gpu3_eth", "10.200.3.2", 8972)]
    assert ping_argv(pings[1]) == ["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", "gpu3_eth",
                                   "-M", "do", "-s", "8972", "10.200.3.2"]


def test_payload_fills_the_smaller_mtu_and_a_rail_without_address_is_left_to_the_rail_check():
    pings = rail_pings("h100-a", HCAS, {"h100-a": _facts(1), "h100-b": _facts(2, 1500, rail3_ipv4=False)})
    assert [(p["rail"], p["mtu"], p["payload"]) for p in pings] == [(0, 1500, 1472)]


def _judge(case: str, rc: int) -> str | None:
    ping = rail_pings("h100-a", HCAS, {"h100-a": _facts(1), "h100-b": _facts(2)})[1]
    return ping_problem(ping, rc, (PING / f"{case}.out").read_text(), (PING / f"{case}.err").read_text())


def test_every_packet_back_passes():
    assert _judge("ok", 0) is None


def test_mtu_too_small_on_the_way_names_the_rail_and_the_mtu():
    problem = _judge("toolong", 1)
    assert problem.startswith("rail 1 (mlx5_3, gpu3_eth) does not reach h100-b's rail 1 (mlx5_3, "
                              "10.200.3.2) with 9000-byte don't-fragment packets: ping: local error: "
                              "message too long, mtu=1400")


def test_nothing_back_means_no_path_between_the_nics():
    problem = _judge("lost", 1)
    assert "3 sent, none came back: no path between the two NICs" in problem
    assert "Warning" not in problem  # ping's source-address warning is not the cause


def test_missing_interface_gives_pings_own_error():
    assert _judge("nodev", 2).endswith(": ping: SO_BINDTODEVICE nosuch0: No such device")


@pytest.mark.skipif(shutil.which("ping") is None,
                    reason="no iputils ping on this host (apt install iputils-ping)")
def test_real_ping_on_loopback_with_the_built_command():
    ping = {"rail": 0, "hca": "lo", "netdev": "lo", "peer": "self", "peer_hca": "lo",
            "address": "127.0.0.1", "mtu": 9000, "payload": 8972}
    run = subprocess.run(ping_argv(ping, count=2, timeout=1), capture_output=True, text=True,
                         timeout=30, check=False)
    if "Operation not permitted" in run.stderr:
        pytest.skip(f"ping may not open an ICMP socket here: {run.stderr.strip()}")
    assert ping_problem(ping, run.returncode, run.stdout, run.stderr) is None, run.stderr
    big = dict(ping, payload=65600, mtu=65628)  # more than loopback's 65536 MTU
    run = subprocess.run(ping_argv(big, count=1, timeout=1), capture_output=True, text=True,
                         timeout=30, check=False)
    assert ping_problem(big, run.returncode, run.stdout, run.stderr)


@pytest.mark.skipif(shutil.which("ping") is None,
                    reason="no iputils ping on this host (apt install iputils-ping)")
def test_module_pings_through_ansible(tmp_path):
    """The rail_ping module on localhost: the 'peer' rail is loopback's 127.0.0.1."""
    facts = {"self": {"rdma": {"mlx5_0": {"ports": {"1": _port("lo", "127.0.0.2")}}},
                      "netdevs": {"lo": {"mtu": 9000}}},
             "peer": {"rdma": {"mlx5_0": {"ports": {"1": _port("lo", "127.0.0.1")}}},
                      "netdevs": {"lo": {"mtu": 9000}}}}
    hcas = {"self": "mlx5_0", "peer": "mlx5_0"}
    code, out = run_task(tmp_path, {"rail_ping": {"host": "self", "hcas": hcas, "facts": facts, "count": 1}})
    if code and "Operation not permitted" in str(out):
        pytest.skip("ping may not open an ICMP socket here")
    assert code == 0, out
    assert [(p["address"], p["payload"], p["problem"]) for p in out["pings"]] == [("127.0.0.1", 8972, None)]
