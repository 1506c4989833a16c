"""Write an RDMA host's sysfs tree as the kernel shows it, from recorded GID tables.

The GID table of ``tests/fixtures/rdma/ibv_devinfo-vvv-h100-mlx5_6-gids.txt``
(a real ConnectX port: link-local, IPv4-mapped and global IPv6 GIDs, each as
RoCE v1 and v2) is written the way sysfs holds it: ``ports/1/gids/<i>`` in the
kernel's ``%pI6`` form (eight zero-padded groups, show_port_gid() in
drivers/infiniband/core/sysfs.c), ``gid_attrs/types/<i>`` as ``RoCE v2`` or
``IB/RoCE v1``, ``gid_attrs/ndevs/<i>``; unused slots read all zeros and have
no type file that reads. Other hosts get the same table with their own IPv4
address in the IPv4-mapped entries.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rdma"
H100_GIDS = FIXTURES / "ibv_devinfo-vvv-h100-mlx5_6-gids.txt"
ZERO = "0000:0000:0000:0000:0000:0000:0000:0000"


def gid_table(text: str) -> list[tuple[int, str, str]]:
    """``ibv_devinfo -vvv`` GID lines -> [(index, gid as sysfs prints it, type as sysfs names it)]."""
    table = []
    for index, gid, kind in re.findall(r"GID\[\s*(\d+)\]:\s*(\S+),\s*RoCE (v1|v2)", text):
        table.append((int(index), ipaddress.IPv6Address(gid).exploded,
                      "RoCE v2" if kind == "v2" else "IB/RoCE v1"))
    return table


def with_ipv4(table: list[tuple[int, str, str]], ipv4: str | None) -> list[tuple[int, str, str]]:
    """The table with its IPv4-mapped entries moved to ``ipv4`` (dropped when None)."""
    out = []
    for index, gid, kind in table:
        if ipaddress.IPv6Address(gid).ipv4_mapped is None:
            out.append((index, gid, kind))
        elif ipv4 is not None:
            out.append((index, ipaddress.IPv6Address(f"::ffff:{ipv4}").exploded, kind))
    return out


def write_hca(root: Path, hca: str, netdevs: list[str], gids: list[tuple[int, str, str]], *,
              port: str = "1", state: str = "4: ACTIVE", phys_state: str = "5: LinkUp",
              rate: str = "200 Gb/sec (4X HDR)", link_layer: str = "Ethernet", mtu: int = 9000) -> None:
    """One HCA (one port) and its netdevs under ``root`` (the ``/sys`` of a recorded host)."""
    hca_dir = root / "class" / "infiniband" / hca
    for netdev in netdevs:
        (hca_dir / "device" / "net" / netdev).mkdir(parents=True, exist_ok=True)
        net = root / "class" / "net" / netdev
        net.mkdir(parents=True, exist_ok=True)
        (net / "mtu").write_text(f"{mtu}\n")
    port_dir = hca_dir / "ports" / port
    for sub in ("gids", "gid_attrs/types", "gid_attrs/ndevs"):
        (port_dir / sub).mkdir(parents=True, exist_ok=True)
    for name, value in (("state", state), ("phys_state", phys_state), ("rate", rate),
                        ("link_layer", link_layer)):
        (port_dir / name).write_text(value + "\n")
    used = {index for index, _, _ in gids}
    for index, gid, kind in gids:
        (port_dir / "gids" / str(index)).write_text(gid + "\n")
        (port_dir / "gid_attrs" / "types" / str(index)).write_text(kind + "\n")
        (port_dir / "gid_attrs" / "ndevs" / str(index)).write_text((netdevs[0] if netdevs else "") + "\n")
    for index in range(max(used, default=-1) + 1, max(used, default=-1) + 3):
        (port_dir / "gids" / str(index)).write_text(ZERO + "\n")
