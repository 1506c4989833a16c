"""Rail-to-rail reachability: does rail i of one node reach rail i of every other node?

NCCL pairs the nodes' NICs rail by rail, but "there are corner cases for which NCCL may still
cause cross-rail communication" (NCCL env docs, NCCL_CROSS_NIC), and when two NICs it pairs have
no path between them the job hangs (NVIDIA/nccl#2345) or fails with `ibv_modify_qp ... Network is
unreachable` (NVIDIA/nccl-tests#185). Preflight pings each rail's peer over that rail's own
interface with a don't-fragment packet as large as the smaller MTU of the two ends, so a
missing route, a wrong cable or a switch port with a smaller MTU shows before NCCL runs.

Pure functions shared by the ``rail_ping`` module (``ansible.module_utils.rail_reach``) and the
tests (``servekit.module_utils.rail_reach``). Standard library only.

Formats: the node's ``servekit_node`` facts (RoCE v2 GIDs from sysfs, netdev MTUs) and iputils
``ping`` output (tests/fixtures/rdma/ping: ``3 packets transmitted, 3 received, 0% packet loss``,
``ping: local error: message too long, mtu=1400``, ``ping: SO_BINDTODEVICE x: No such device``).
"""

from __future__ import annotations

import re

try:  # inside an Ansible module payload
    from ansible.module_utils.rdma_rails import parse_hca_list, roce_v2_ipv4_gids
except ImportError:  # imported as servekit.module_utils.rail_reach
    from .rdma_rails import parse_hca_list, roce_v2_ipv4_gids  # type: ignore[no-redef]

# an ICMP echo's payload is the IP packet less the IPv4 (20) and ICMP (8) headers
IPV4_ICMP_HEADERS = 28
DEFAULT_MTU = 1500
_STATS = re.compile(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) errors)?")


def rail_endpoints(facts: dict, hca_list: object) -> list[dict]:
    """This node's rails in ``cluster_rdma_hca`` order: hca, netdev, IPv4 address, MTU.

    The address is the HCA's first RoCE v2 GID with an IPv4 address (the one NCCL >= 2.21 picks),
    the netdev the one that holds it; both None where the rail has none (preflight's rail
    check fails on that already)."""
    rails = []
    for hca, port_filter in parse_hca_list(hca_list):
        ports = ((facts.get("rdma") or {}).get(hca) or {}).get("ports") or {}
        gids = [g for number, port in sorted(ports.items())
                if port_filter is None or number == str(port_filter)
                for g in roce_v2_ipv4_gids(port)]
        netdev = gids[0]["ndev"] if gids else None
        mtu = ((facts.get("netdevs") or {}).get(netdev) or {}).get("mtu") if netdev else None
        rails.append({"hca": hca, "netdev": netdev, "address": gids[0]["ipv4"] if gids else None,
                      "mtu": mtu})
    return rails


def rail_pings(host: str, hcas: dict[str, object], facts: dict[str, dict]) -> list[dict]:
    """The pings ``host`` makes: its rail i to rail i of every other node, each with the
    payload that fills the smaller MTU of the two ends (don't fragment)."""
    mine = rail_endpoints(facts.get(host) or {}, hcas[host])
    pings = []
    for peer in sorted(h for h in hcas if h != host):
        theirs = rail_endpoints(facts.get(peer) or {}, hcas[peer])
        for index, (local, remote) in enumerate(zip(mine, theirs, strict=False)):
            if not (local["netdev"] and remote["address"]):
                continue
            mtu = min(local["mtu"] or DEFAULT_MTU, remote["mtu"] or DEFAULT_MTU)
            pings.append({"rail": index, "hca": local["hca"], "netdev": local["netdev"],
                          "peer": peer, "peer_hca": remote["hca"], "address": remote["address"],
                          "mtu": mtu, "payload": mtu - IPV4_ICMP_HEADERS})
    return pings


def ping_argv(ping: dict, count: int = 3, timeout: int = 2) -> list[str]:
    """iputils ping over the rail's own interface (-I), don't fragment (-M do)."""
    return ["ping", "-c", str(count), "-i", "0.2", "-W", str(timeout), "-I", ping["netdev"],
            "-M", "do", "-s", str(ping["payload"]), ping["address"]]


def ping_problem(ping: dict, rc: int, stdout: str, stderr: str) -> str | None:
    """Why rail ``ping`` does not reach its peer; None when every packet came back."""
    stats = _STATS.search(stdout)
    sent, received = (int(stats.group(1)), int(stats.group(2))) if stats else (0, 0)
    if rc == 0 and stats and received == sent:
        return None
    where = (f"rail {ping['rail']} ({ping['hca']}, {ping['netdev']}) does not reach {ping['peer']}'s "
             f"rail {ping['rail']} ({ping['peer_hca']}, {ping['address']}) with {ping['mtu']}-byte "
             "don't-fragment packets")
    error = next((line.strip() for line in stderr.splitlines()
                  if line.startswith("ping:") and "Warning" not in line), "")
    too_long = re.search(r"message too long, mtu=(\d+)", stderr)
    if too_long:
        return (f"{where}: {error} (the route to the peer leaves through an interface with MTU "
                f"{too_long.group(1)}: is {ping['address']} on {ping['netdev']}'s subnet?)")
    if error:
        return f"{where}: {error}"
    if stats and received:
        return (f"{where}: {received} of {sent} came back (a switch port with a smaller MTU, "
                "or a lossy link)")
    return (f"{where}: {sent} sent, none came back: no path between the two NICs (cable, switch "
            "VLAN, or separate subnets without a route; NCCL then hangs or fails with `Network is "
            "unreachable`), or a switch port with a smaller MTU")
