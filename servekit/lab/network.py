"""The lab's network on the host: one bridge (MTU 9000), a namespace and veth pair per node, NAT out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from servekit.lab.base import BRIDGE, MTU, SUBNET, LabError, Node, run

NAT_RULE = ["POSTROUTING", "-s", f"{SUBNET}.0/24", "!", "-o", BRIDGE, "-j", "MASQUERADE"]
FORWARD_RULES = (["FORWARD", "-i", BRIDGE, "-j", "ACCEPT"], ["FORWARD", "-o", BRIDGE, "-j", "ACCEPT"])

# `lab scan` looks at the nodes from here: on the bridge, but not a node.
OUTSIDER_NETNS = "svk-outsider"
OUTSIDER_VETH = "svkvout"
OUTSIDER_ADDRESS = f"{SUBNET}.99"


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return run(argv, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def host_nameserver() -> str:
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith("127."):
                return parts[1]
    except OSError:
        pass
    raise LabError(
        "no usable nameserver in /etc/resolv.conf (lab nodes cannot use the host's 127.x resolver)"
    )


def ensure_bridge() -> None:
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "link", "set", BRIDGE, "mtu", str(MTU), "up"])
    have = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f"{SUBNET}.1/24" not in have:
        run(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE])
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    if run(["iptables", "-t", "nat", "-C", *NAT_RULE], check=False).returncode != 0:
        run(["iptables", "-t", "nat", "-A", *NAT_RULE])
    for rule in FORWARD_RULES:
        if run(["iptables", "-C", *rule], check=False).returncode != 0:
            run(["iptables", "-I", *rule])


def ensure_netns(node: Node) -> None:
    if not netns_exists(node.netns):
        run(["ip", "netns", "add", node.netns])
    if not link_exists(node.data_if, node.netns):
        if link_exists(node.host_veth):
            run(["ip", "link", "del", node.host_veth])
        run(["ip", "link", "add", node.host_veth, "mtu", str(MTU), "type", "veth",
             "peer", "name", node.data_if, "netns", node.netns])
    run(["ip", "link", "set", node.host_veth, "master", BRIDGE, "mtu", str(MTU), "up"])
    run(["ip", "-n", node.netns, "link", "set", "lo", "up"])


def remove_netns(node: Node) -> None:
    if netns_exists(node.netns):
        run(["ip", "netns", "del", node.netns])
    if link_exists(node.host_veth):
        run(["ip", "link", "del", node.host_veth])


def remove_bridge() -> None:
    """The bridge and every NAT / FORWARD rule, however often they were added."""
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE])
    while run(["iptables", "-t", "nat", "-C", *NAT_RULE], check=False).returncode == 0:
        run(["iptables", "-t", "nat", "-D", *NAT_RULE])
    for rule in FORWARD_RULES:
        while run(["iptables", "-C", *rule], check=False).returncode == 0:
            run(["iptables", "-D", *rule])


@contextlib.contextmanager
def outsider_netns() -> Iterator[str]:
    """A namespace on the bridge at OUTSIDER_ADDRESS that is not a node; removed on exit."""
    try:
        run(["ip", "netns", "add", OUTSIDER_NETNS])
        run(["ip", "link", "add", OUTSIDER_VETH, "type", "veth", "peer", "name", "eth0",
             "netns", OUTSIDER_NETNS])
        run(["ip", "link", "set", OUTSIDER_VETH, "master", BRIDGE, "up"])
        run(["ip", "-n", OUTSIDER_NETNS, "addr", "add", f"{OUTSIDER_ADDRESS}/24", "dev", "eth0"])
        run(["ip", "-n", OUTSIDER_NETNS, "link", "set", "eth0", "up"])
        run(["ip", "-n", OUTSIDER_NETNS, "link", "set", "lo", "up"])
        yield OUTSIDER_NETNS
    finally:
        if netns_exists(OUTSIDER_NETNS):
            run(["ip", "netns", "del", OUTSIDER_NETNS], check=False)
        if link_exists(OUTSIDER_VETH):
            run(["ip", "link", "del", OUTSIDER_VETH], check=False)
