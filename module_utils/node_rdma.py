"""RDMA facts of one host: devices, ports, GIDs, PCIe links and link speed.

Pure functions over sysfs contents and command output, and the two readers
that fetch those contents (``read_sysfs``, ``sysfs_port_files``), shared by the
``node_facts``, ``preflight_check`` and ``nccl_gate`` modules
(``ansible.module_utils.node_rdma``), ``rdma_rails`` and the tests
(``servekit.module_utils.node_rdma``). Standard library only.

Formats parsed:
- sysfs ``/sys/class/infiniband/<hca>/ports/<n>/{state,phys_state,rate,link_layer,
  gids/<i>,gid_attrs/types/<i>,gid_attrs/ndevs/<i>}`` (kernel ABI,
  Documentation/ABI/stable/sysfs-class-infiniband);
- ``rdma link show`` (iproute2);
- sysfs PCI ``current_link_speed`` (``32.0 GT/s PCIe``) and ``current_link_width``.
"""

from __future__ import annotations

import glob
import os
import re

ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"
_PCIE_SPEED = re.compile(r"^([\d.]+) GT/s")


def read_sysfs(path: str) -> str:
    """A sysfs or procfs file's text; "" when it cannot be read (unused GID slots answer EINVAL)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def sysfs_port_files(port_dir: str) -> dict[str, str]:
    """The files of one ``/sys/class/infiniband/<hca>/ports/<n>`` that ``parse_sysfs_port`` reads."""
    files = {rel: read_sysfs(os.path.join(port_dir, rel))
             for rel in ("state", "phys_state", "rate", "link_layer")}
    for path in glob.glob(os.path.join(port_dir, "gids", "*")):
        index = os.path.basename(path)
        files[f"gids/{index}"] = read_sysfs(path)
        for attr in ("types", "ndevs"):
            files[f"gid_attrs/{attr}/{index}"] = read_sysfs(os.path.join(port_dir, "gid_attrs", attr, index))
    return files


def parse_rdma_link(text: str) -> list[dict]:
    """``rdma link show`` -> [{hca, port, state, physical_state, netdev}]."""
    links = []
    for line in text.splitlines():
        match = re.match(r"^link (\S+)/(\d+)\s+(.*)$", line.strip())
        if not match:
            continue
        words = match.group(3).split()
        attrs = dict(zip(words[::2], words[1::2], strict=False))
        links.append({"hca": match.group(1), "port": int(match.group(2)),
                      "state": attrs.get("state"), "physical_state": attrs.get("physical_state"),
                      "netdev": attrs.get("netdev")})
    return links


def parse_sysfs_port(files: dict[str, str]) -> dict:
    """One port from its sysfs files (paths relative to ``ports/<n>/``).

    ``state`` reads ``4: ACTIVE``, ``phys_state`` ``5: LinkUp``, ``rate``
    ``200 Gb/sec (2X HDR)``; ``gid_attrs/types/<i>`` is ``RoCE v2`` or
    ``IB/RoCE v1``; unused GID slots read all zeros and have no type.
    """
    def value(name: str) -> str:
        raw = files.get(name, "").strip()
        return raw.split(":", 1)[1].strip() if re.match(r"^\d+:", raw) else raw

    rate = re.match(r"^([\d.]+) Gb/sec", files.get("rate", "").strip())
    gids = []
    for path, raw_gid in files.items():
        match = re.fullmatch(r"gids/(\d+)", path)
        gid = raw_gid.strip()
        if not match or not gid or gid == ZERO_GID:
            continue
        index = match.group(1)
        gids.append({
            "index": int(index),
            "gid": gid,
            "type": files.get(f"gid_attrs/types/{index}", "").strip() or None,
            "ndev": files.get(f"gid_attrs/ndevs/{index}", "").strip() or None,
            "ipv4": _gid_ipv4(gid),
        })
    gids.sort(key=lambda g: g["index"])
    return {
        "state": value("state") or None,
        "phys_state": value("phys_state") or None,
        "link_layer": files.get("link_layer", "").strip() or None,
        "rate_gbps": float(rate.group(1)) if rate else None,
        "gids": gids,
    }


def _gid_ipv4(gid: str) -> str | None:
    """An IPv4-mapped GID (``::ffff:a.b.c.d``) -> ``a.b.c.d``."""
    parts = gid.split(":")
    if len(parts) == 8 and parts[:6] == ["0000"] * 5 + ["ffff"]:
        hi, lo = int(parts[6], 16), int(parts[7], 16)
        return f"{hi >> 8}.{hi & 255}.{lo >> 8}.{lo & 255}"
    return None


def roce_v2_gid_index(port: dict, netdev: str, prefer_ipv4: bool = True) -> int | None:
    """The GID index NCCL_IB_GID_INDEX should use for ``netdev``.

    RoCE v2 GIDs of the netdev only; an IPv4-mapped one first (routable
    across the data subnet, what NCCL picks itself on most RoCE fabrics),
    else the lowest RoCE v2 index.
    """
    candidates = [g for g in port["gids"] if g["type"] == "RoCE v2" and g["ndev"] == netdev]
    if prefer_ipv4 and any(g["ipv4"] for g in candidates):
        candidates = [g for g in candidates if g["ipv4"]]
    return candidates[0]["index"] if candidates else None


def parse_pcie_link_gbps(speed: str, width: str) -> float | None:
    """Usable PCIe bandwidth (Gb/s, one direction) from sysfs ``current_link_speed``/``_width``.

    ``32.0 GT/s PCIe`` x ``4`` -> 32 * 4 * 128/130 = 126 Gb/s (Gen3 and later use 128b/130b
    encoding, Gen1/2 8b/10b). drivers/pci/pci-sysfs.c prints the speed as ``<n> GT/s PCIe``
    (older kernels ``<n> GT/s``); ``Unknown`` speeds give None.
    """
    match = _PCIE_SPEED.match(speed.strip())
    if not match or not width.strip().isdigit():
        return None
    gts = float(match.group(1))
    encoding = 128 / 130 if gts >= 8 else 8 / 10
    return round(gts * int(width.strip()) * encoding, 1)


def data_port(facts: dict, hca: str | None) -> dict | None:
    """The port of ``hca`` the data path uses (its first port), or None."""
    ports = ((facts.get("rdma") or {}).get(hca) or {}).get("ports") or {}
    return next(iter(ports.values()), None)


def hca_link(facts: dict | None, hcas: list[str]) -> dict:
    """Link speed of the HCAs NCCL uses, from node_facts.

    Each HCA counts with the lower of its port rate and its PCIe link: a DGX Spark exposes
    each QSFP port as two PCIe Gen5 x4 functions that report 200 Gb/s each but carry about
    100 Gb/s (NVIDIA dgx-spark-playbooks, nvidia/connect-two-sparks/assets/
    performance_benchmarking_guide.md: ib_write_bw 92.57 + 97.28 = 189.85 Gb/s over the two
    halves). ``pcie_limited`` is true when any HCA's PCIe link is under its port rate: then the
    port rate is no measure of what the link can carry.
    """
    out = {"link_gbps": None, "port_gbps": None, "pcie_limited": False, "unknown": []}
    if not facts or not hcas:
        return out
    total = ports = 0.0
    for entry in hcas:
        name = entry.split(":")[0].strip().lstrip("=^")
        hca = (facts.get("rdma") or {}).get(name) or {}
        port = data_port(facts, name)
        if not port or not port.get("rate_gbps"):
            out["unknown"].append(name)
            continue
        pcie = hca.get("pcie_gbps")
        ports += port["rate_gbps"]
        if pcie and pcie < port["rate_gbps"]:
            out["pcie_limited"] = True
            total += pcie
        else:
            total += port["rate_gbps"]
    if not out["unknown"]:
        out["link_gbps"], out["port_gbps"] = total, ports
    return out
