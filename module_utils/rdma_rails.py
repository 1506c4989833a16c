"""Every RDMA rail of a node: the HCAs in NCCL_IB_HCA, their netdevs, GIDs and QoS.

Pure functions shared by the ``rdma_rails`` module (``roles/rdma/library``,
as ``ansible.module_utils.rdma_rails``) and the tests
(``servekit.module_utils.rdma_rails``). Standard library only: they run on
the target's system Python.

Formats parsed (real samples in ``tests/fixtures/rdma``):
- ``NCCL_IB_HCA`` as NCCL reads it (NCCL env docs, NCCL_IB_HCA): a
  comma-separated list of ``name[:port]``; a leading ``=`` makes the names
  exact (without it ``mlx5_1`` also selects ``mlx5_10``..``mlx5_17``), a
  leading ``^`` excludes;
- sysfs ``/sys/class/infiniband/<hca>/device/net/<netdev>`` (the HCA's PCI
  function and its netdevs) and ``ports/<p>/gids/<i>``,
  ``gid_attrs/types/<i>`` (``RoCE v2`` or ``IB/RoCE v1``), ``gid_attrs/ndevs/<i>``
  (kernel Documentation/ABI/testing/sysfs-class-infiniband; the GID is
  printed with ``%pI6``, eight zero-padded groups, by show_port_gid() in
  drivers/infiniband/core/sysfs.c);
- iproute2 ``dcb pfc show dev X`` and ``dcb -N app show dev X dscp-prio``
  (man dcb-pfc(8), dcb-app(8));
- ``mlnx_qos -i X`` (mlnx-tools; where it is installed).
"""

from __future__ import annotations

import re

try:
    from ansible.module_utils.node_rdma import parse_sysfs_port
except ImportError:  # imported as servekit.module_utils.rdma_rails
    from .node_rdma import parse_sysfs_port  # type: ignore[no-redef]

# RDMA device names: IB_DEVICE_NAME_MAX is 64 with the NUL (include/rdma/ib_verbs.h).
_HCA_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
HCA_FORM = ("a comma-separated list of RDMA devices as in /sys/class/infiniband, each "
            "name or name:port (mlx5_0,mlx5_1:1); a leading '=' is accepted, '^' (exclude) is not")
ROCE_V2 = "RoCE v2"


def parse_hca_list(value: object, name: str = "cluster_rdma_hca") -> list[tuple[str, int | None]]:
    """``NCCL_IB_HCA``-style text -> [(hca, port or None)], in order.

    Raises ValueError naming ``name``, the value and the accepted form: an
    exclusion list cannot say which devices to configure, and a name or
    port that NCCL would not match is caught here rather than on the node.
    """
    text = str(value if value is not None else "").strip()
    if text.startswith("^"):
        raise ValueError(f"{name} = {value!r}: an exclusion ('^') list cannot say which HCAs to "
                         f"configure; must be {HCA_FORM}")
    items = [item.strip() for item in text.removeprefix("=").split(",")]
    rails: list[tuple[str, int | None]] = []
    for item in items:
        hca, _, port = item.partition(":")
        if not _HCA_NAME.match(hca) or (port and not (port.isdigit() and 1 <= int(port) <= 255)):
            raise ValueError(f"{name} = {value!r}: {item!r} is not a device name; must be {HCA_FORM}")
        if any(seen == hca for seen, _ in rails):
            raise ValueError(f"{name} = {value!r}: {hca} is listed twice; must be {HCA_FORM}")
        rails.append((hca, int(port) if port else None))
    return rails


def nccl_ib_hca(value: object) -> str:
    """The exact-match ``NCCL_IB_HCA`` value for a device list: ``=a,b:1``."""
    return "=" + ",".join(f"{hca}:{port}" if port else hca for hca, port in parse_hca_list(value))


def select_netdev(hca: str, discovered: list[str], override: str | None) -> tuple[str | None, str | None]:
    """The netdev of ``hca`` -> (netdev, problem).

    ``discovered``: the names under ``/sys/class/infiniband/<hca>/device/net``;
    ``override``: the inventory's ``rdma_netdevs[hca]``, which must be one of
    them when the HCA lists any.
    """
    if override:
        if discovered and override not in discovered:
            return None, (f"{hca}: rdma_netdevs names {override!r}, but {hca}'s netdevs are "
                          f"{', '.join(discovered)}")
        return override, None
    if len(discovered) == 1:
        return discovered[0], None
    if not discovered:
        return None, (f"{hca}: no netdev under /sys/class/infiniband/{hca}/device/net (an InfiniBand "
                      f"port, or a RoCE function without its Ethernet driver); set rdma_netdevs: "
                      f"{{{hca}: <netdev>}}")
    return None, (f"{hca}: several netdevs ({', '.join(discovered)}); say which one carries RoCE with "
                  f"rdma_netdevs: {{{hca}: <netdev>}}")


def netdev_device_unit(netdev: str) -> str:
    """systemd's device unit for a netdev: udev's 99-systemd.rules aliases every
    netdev as /sys/subsystem/net/devices/<name>, and the unit name is that path
    escaped as ``systemd-escape --path --suffix=device`` does (unit_name_path_escape():
    '/' -> '-', bytes outside [A-Za-z0-9:_.] -> \\xHH, a leading '.' escaped)."""
    out = []
    for index, byte in enumerate(f"sys/subsystem/net/devices/{netdev}".encode()):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif char.isascii() and (char.isalnum() or char in ":_.") and not (char == "." and index == 0):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out) + ".device"


def roce_v2_ipv4_gids(port: dict) -> list[dict]:
    """RoCE v2 GIDs with an IPv4-mapped address (what NCCL >= 2.21 picks by default)."""
    return [g for g in port["gids"] if g["type"] == ROCE_V2 and g["ipv4"]]


def rail_from_sysfs(hca: str, port_filter: int | None, ports_files: dict[str, dict[str, str]],
                    discovered: list[str], override: str | None, *, present: bool = True) -> dict:
    """One rail's facts from the HCA's sysfs files (``ports_files``: port -> files)."""
    netdev, problem = select_netdev(hca, discovered, override) if present else (None, None)
    ports = {p: parse_sysfs_port(files) for p, files in sorted(ports_files.items())
             if port_filter is None or p == str(port_filter)}
    for port in ports.values():
        port["roce_v2_ipv4_gids"] = [{"index": g["index"], "ipv4": g["ipv4"], "ndev": g["ndev"]}
                                     for g in roce_v2_ipv4_gids(port)]
    return {"hca": hca, "port": port_filter, "present": present, "netdev": netdev,
            "device_unit": netdev_device_unit(netdev) if netdev else None,
            "netdevs_found": discovered, "netdev_problem": problem, "ports": ports}


def rail_problems(rail: dict, present_hcas: list[str] | None = None) -> list[str]:
    """Why a rail cannot carry NCCL over RoCE v2; each names the HCA and the fix."""
    hca = rail["hca"]
    if not rail["present"]:
        return [f"{hca}: not in /sys/class/infiniband (present: "
                f"{', '.join(present_hcas or []) or 'none: is mlx5_ib loaded?'}); check cluster_rdma_hca"]
    problems = [rail["netdev_problem"]] if rail["netdev_problem"] else []
    if not rail["ports"]:
        wanted = f"port {rail['port']}" if rail["port"] else "any port"
        return [*problems, f"{hca}: {wanted} not found under /sys/class/infiniband/{hca}/ports"]
    for number, port in rail["ports"].items():
        if port["link_layer"] and port["link_layer"] != "Ethernet":
            problems.append(f"{hca} port {number}: link layer is {port['link_layer']}, not Ethernet "
                            "(RoCE); this role configures RoCE rails only")
            continue
        if port["state"] != "ACTIVE":
            problems.append(f"{hca} port {number}: state {port['state']} ({port['phys_state']}); "
                            "bring the link up (cable, switch port, `ip link set <netdev> up`)")
        if not port["roce_v2_ipv4_gids"]:
            netdev = rail["netdev"] or "its netdev"
            problems.append(f"{hca} port {number}: no RoCE v2 GID with an IPv4 address (NCCL >= 2.21 "
                            f"picks one itself); give {netdev} an IPv4 address, or pin "
                            "rdma_nccl_ib_gid_index")
    return problems


# --------------------------------------------------------------------------
# QoS: DSCP trust and PFC
# --------------------------------------------------------------------------


def parse_dcb_pfc(text: str) -> dict[int, bool]:
    """``dcb pfc show dev X`` -> {priority: PFC on}; {} when no ``prio-pfc`` line."""
    match = re.search(r"^prio-pfc\s+(.*)$", text, re.MULTILINE)
    if not match:
        return {}
    return {int(prio): state == "on" for prio, state in re.findall(r"(\d+):(on|off)", match.group(1))}


def parse_dcb_app_dscp(text: str) -> dict[int, list[int]]:
    """``dcb -N app show dev X dscp-prio`` -> {dscp: [priorities]} (one DSCP may map twice)."""
    match = re.search(r"^dscp-prio\s+(.*)$", text, re.MULTILINE)
    table: dict[int, list[int]] = {}
    for dscp, prio in re.findall(r"(\d+):(\d+)", match.group(1) if match else ""):
        table.setdefault(int(dscp), []).append(int(prio))
    return table


def parse_mlnx_qos(text: str) -> dict:
    """``mlnx_qos -i X`` -> {"trust": "dscp"/"pcp"/None, "pfc": {priority: enabled}}."""
    trust = re.search(r"^Priority trust state:\s*(\S+)", text, re.MULTILINE)
    prios = re.search(r"^\s*priority\s+((?:\d+\s*)+)$", text, re.MULTILINE)
    enabled = re.search(r"^\s*enabled\s+((?:\d+\s*)+)$", text, re.MULTILINE)
    pfc = {}
    if prios and enabled:
        pfc = {int(p): e == "1" for p, e in zip(prios.group(1).split(), enabled.group(1).split(),
                                                strict=False)}
    return {"trust": trust.group(1) if trust else None, "pfc": pfc}


def qos_problems(netdev: str, dscp: int, priority: int, pfc: dict[int, bool],
                 dscp_map: dict[int, list[int]], *, mlnx: dict | None = None) -> list[str]:
    """Whether ``netdev`` trusts DSCP, maps ``dscp`` to ``priority`` and runs PFC on it alone.

    On mlx5 the first DSCP APP entry switches the port to DSCP trust
    (mlx5e_dcbnl_ieee_setapp() in drivers/net/ethernet/mellanox/mlx5/core/en_dcbnl.c),
    so the APP table stands for the trust state where ``mlnx_qos`` is not installed.
    """
    problems = []
    fix = "restart servekit-rdma.service and read its journal"
    if not pfc:
        problems.append(f"{netdev}: `dcb pfc show` printed no prio-pfc line (no DCB support?); {fix}")
    else:
        on = sorted(p for p, state in pfc.items() if state)
        if on != [priority]:
            problems.append(f"{netdev}: PFC is on for priorities {on or 'none'}, want only {priority}; {fix}")
    if dscp_map.get(dscp) != [priority]:
        problems.append(f"{netdev}: DSCP {dscp} maps to priorities {dscp_map.get(dscp, 'none')}, want "
                        f"[{priority}] (dcb app dscp-prio {dscp}:{priority}, which also sets DSCP trust); "
                        f"{fix}")
    if mlnx is not None and mlnx["trust"] != "dscp":
        problems.append(f"{netdev}: mlnx_qos reports priority trust state {mlnx['trust']}, want dscp; {fix}")
    return problems


def mtu_problem(netdev: str, mtu: int | None, want: int) -> str | None:
    if mtu == want:
        return None
    return (f"{netdev}: MTU is {mtu if mtu is not None else 'unknown (no such netdev?)'}, want {want} "
            "(rdma_mtu); restart servekit-rdma.service, and allow it on the switch ports too")
