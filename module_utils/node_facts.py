"""Parsers and preflight decisions for GPU / RDMA hosts.

Pure functions over command output and sysfs contents, shared by the
``node_facts`` module (``ansible.module_utils.node_facts``) and the tests
(``servekit.module_utils.node_facts``), which feed them real output recorded
on GPU hosts (``tests/fixtures``). Standard library only: these run on the
target's system Python.

Formats parsed:
- ``nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,compute_cap
  --format=csv,noheader,nounits`` (GPU_QUERY below);
- ``nvidia-smi -q -x`` (driver and CUDA version);
- ``nvidia-smi topo -m`` (GPU/NIC matrix, ANSI underline codes included);
- sysfs ``/sys/class/infiniband/<hca>/ports/<n>/{state,phys_state,rate,link_layer,
  gids/<i>,gid_attrs/types/<i>,gid_attrs/ndevs/<i>}`` (kernel ABI,
  Documentation/ABI/stable/sysfs-class-infiniband);
- ``rdma link show`` (iproute2);
- ``/proc/<pid>/limits``;
- ``/proc/driver/nvidia/version`` (open or proprietary kernel module), ``/proc/kallsyms``
  (``address type name\t[module]``, kernel/kallsyms.c), ``/proc/meminfo``;
- ``modprobe`` errors and kernel ``Unknown symbol`` lines (kernel/module/main.c);
- sysfs PCI ``current_link_speed`` (``32.0 GT/s PCIe``) and ``current_link_width``;
- NCCL ``NCCL_DEBUG=INFO`` logs (channel lines ``host:pid:tid [dev] NCCL INFO Channel 00/0 :
  0[0] -> 1[0] [send] via NET/IB/0/GDRDMA``, also behind Ray's ``(RayWorkerWrapper pid=..,
  ip=..)`` prefix) and nccl-tests ``all_reduce_perf`` output.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

GPU_QUERY_FIELDS = ("index", "name", "uuid", "pci_bus_id", "memory_total_mib",
                    "driver_version", "compute_cap")
GPU_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,compute_cap",
    "--format=csv,noheader,nounits",
]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"
UNLIMITED = "unlimited"


# --------------------------------------------------------------------------
# nvidia-smi
# --------------------------------------------------------------------------


def _na(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "[N/A]", "N/A", "[Not Supported]") else value


def parse_gpu_query(text: str) -> list[dict]:
    """Rows of GPU_QUERY output -> one dict per GPU."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(GPU_QUERY_FIELDS):
            raise ValueError(f"nvidia-smi --query-gpu: expected {len(GPU_QUERY_FIELDS)} fields: {line!r}")
        row = dict(zip(GPU_QUERY_FIELDS, (_na(c) for c in cells), strict=True))
        row["index"] = int(row["index"])
        row["memory_total_mib"] = int(row["memory_total_mib"]) if row["memory_total_mib"] else None
        gpus.append(row)
    return gpus


def parse_nvidia_smi_xml(text: str) -> dict:
    """``nvidia-smi -q -x`` -> driver and CUDA version and per-GPU identity."""
    root = ET.fromstring(text)  # noqa: S314 - trusted local command output
    gpus = []
    for gpu in root.findall("gpu"):
        total = (gpu.findtext("fb_memory_usage/total") or "").split()
        gpus.append({
            "pci_bus_id": gpu.get("id"),
            "name": gpu.findtext("product_name"),
            "uuid": gpu.findtext("uuid"),
            "minor_number": _na(gpu.findtext("minor_number") or ""),
            "memory_total_mib": int(total[0]) if total and total[0].isdigit() else None,
            # "ATS" on Grace-based parts (GH200, GB200, GB10), "None" on x86 hosts
            "addressing_mode": _na(gpu.findtext("addressing_mode") or ""),
        })
    return {
        "driver_version": root.findtext("driver_version"),
        "cuda_version": root.findtext("cuda_version"),
        "attached_gpus": int(root.findtext("attached_gpus") or 0),
        "gpus": gpus,
    }


def parse_topo_matrix(text: str) -> dict:
    """``nvidia-smi topo -m`` -> link matrix, CPU/NUMA affinity, NIC legend."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    header_at = next((i for i, line in enumerate(lines) if re.match(r"\s+GPU0\b", line)), None)
    if header_at is None:
        raise ValueError("nvidia-smi topo -m: no header row starting with GPU0")
    header = re.split(r"\s{2,}|\t+", lines[header_at].strip())
    devices = [h for h in header if re.fullmatch(r"(GPU|NIC)\d+", h)]
    extra = [h for h in header if h not in devices]
    matrix: dict[str, dict[str, str]] = {}
    affinity: dict[str, dict[str, str]] = {}
    for line in lines[header_at + 1:]:
        if not line.strip() or line.startswith("Legend"):
            break
        cells = line.split()
        name, values = cells[0], cells[1:]
        if name not in devices:
            continue
        matrix[name] = dict(zip(devices, values[: len(devices)], strict=False))
        rest = values[len(devices):]
        affinity[name] = dict(zip(extra, rest, strict=False))
    legend = dict(re.findall(r"^\s*(NIC\d+):\s*(\S+)\s*$", "\n".join(lines), re.MULTILINE))
    return {"devices": devices, "matrix": matrix, "affinity": affinity, "nic_legend": legend}


def gpu_nic_affinity(topo: dict) -> dict[str, list[str]]:
    """For each GPU, the HCAs nearest to it (PIX first, then PXB, then PHB)."""
    best: dict[str, list[str]] = {}
    for rank in ("PIX", "PXB", "PHB"):
        for gpu, row in topo["matrix"].items():
            if not gpu.startswith("GPU") or gpu in best:
                continue
            nics = [topo["nic_legend"].get(dev, dev) for dev, link in row.items()
                    if dev.startswith("NIC") and link == rank]
            if nics:
                best[gpu] = nics
    return best


# --------------------------------------------------------------------------
# RDMA
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------


def parse_proc_limits(text: str) -> dict[str, dict[str, str]]:
    """``/proc/<pid>/limits`` -> {"Max locked memory": {"soft": .., "hard": .., "units": ..}}."""
    limits = {}
    for line in text.splitlines()[1:]:
        match = re.match(r"^(Max [\w ]+?)\s{2,}(\S+)\s+(\S+)\s*(\S*)\s*$", line)
        if match:
            limits[match.group(1)] = {"soft": match.group(2), "hard": match.group(3),
                                      "units": match.group(4) or None}
    return limits


def memlock_ok(limits: dict, ceiling: str = UNLIMITED) -> bool:
    """Locked-memory soft and hard limits reach ``ceiling`` (the node's highest)."""
    entry = limits.get("Max locked memory")
    if not entry:
        return False
    if ceiling == UNLIMITED:
        return entry["soft"] == entry["hard"] == UNLIMITED
    return all(entry[k] == UNLIMITED or int(entry[k]) >= int(ceiling) for k in ("soft", "hard"))


# --------------------------------------------------------------------------
# host: kernel, driver module, PCIe, memory
# --------------------------------------------------------------------------

PEER_MEMORY_SYMBOL = "ib_register_peer_memory_client"
_PCIE_SPEED = re.compile(r"^([\d.]+) GT/s")


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


def kallsyms_exports(text: str, symbol: str = PEER_MEMORY_SYMBOL) -> str | None:
    """The module that exports ``symbol`` as a function in ``/proc/kallsyms`` text, or None.

    Lines read ``<address> <type> <name>\t[<module>]`` (addresses are zeros without
    CAP_SYSLOG). Only a text symbol (``T``/``t``) of exactly that name counts: MLNX_OFED /
    DOCA's ib_core exports ``ib_register_peer_memory_client``; amdgpu carries a data symbol
    ``pfn_ib_register_peer_memory_client`` that must not (NCCL looks for the same export in
    src/transport/net_ib.cc before it trusts nvidia_peermem).
    """
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] in ("T", "t") and fields[2] == symbol:
            return fields[3].strip("[]") if len(fields) > 3 else "vmlinux"
    return None


def parse_nvidia_driver_file(text: str) -> dict:
    """``/proc/driver/nvidia/version`` -> kernel module flavour and version.

    ``NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04 ...`` (open) or
    ``NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01 ...`` (proprietary).
    """
    line = next((ln for ln in text.splitlines() if ln.startswith("NVRM version:")), "")
    version = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", line + " ")
    flavour = None
    if "Open Kernel Module" in line:
        flavour = "open"
    elif "Kernel Module" in line:
        flavour = "proprietary"
    return {"kernel_module": flavour, "version": version.group(1) if version else None}


def parse_meminfo_kib(text: str, key: str = "MemAvailable") -> int | None:
    """One ``/proc/meminfo`` value in KiB."""
    match = re.search(rf"^{key}:\s+(\d+) kB$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def debian_multiarch(machine: str) -> str:
    """Debian/Ubuntu multiarch triplet for ``uname -m`` (Open MPI lives under /usr/lib/<triplet>)."""
    triplets = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
                "arm64": "aarch64-linux-gnu", "ppc64le": "powerpc64le-linux-gnu"}
    if machine not in triplets:
        raise ValueError(f"machine {machine!r}: no Debian multiarch triplet known; "
                         f"allowed: {', '.join(sorted(triplets))}")
    return triplets[machine]


# --------------------------------------------------------------------------
# NCCL logs and nccl-tests
# --------------------------------------------------------------------------


# ``host:pid:tid [dev] NCCL INFO Channel 00/0 : 3[3] -> 8[0] [send] via NET/IB/0/GDRDMA``
# (src/transport/net.cc; older NCCL prints ``Channel 00 :`` and bus ids in the brackets).
# Ray forwards a worker's stdout to the driver behind ``(RayWorkerWrapper pid=.., ip=..) ``,
# so the prefix is searched, not anchored.
_CHANNEL = re.compile(
    r"(?P<host>[\w.-]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>\d+)\] NCCL INFO "
    r"Channel (?P<channel>\d+)(?:/\d+)? : (?P<src>\d+)\[\w+\] -> (?P<dst>\d+)\[\w+\]"
    r"(?: \[(?P<direction>send|receive)\])? via (?P<via>\S+)")
_NCCL_LINE = re.compile(r"(?P<host>[\w.-]+):\d+:\d+ \[\d+\] NCCL (?:INFO|WARN) (?P<msg>.*)$")


def parse_nccl_channels(log: str) -> list[dict]:
    """Every connected channel in an NCCL_DEBUG=INFO log (the ring lists ``Channel 00/02 : 0 1``
    have no ``via`` and are not connections)."""
    channels = []
    for line in log.splitlines():
        match = _CHANNEL.search(line)
        if not match:
            continue
        via = match.group("via")
        channels.append({
            "host": match.group("host"), "pid": int(match.group("pid")),
            "channel": int(match.group("channel")), "src": int(match.group("src")),
            "dst": int(match.group("dst")), "direction": match.group("direction"), "via": via,
            "net": via.split("/")[1] if via.startswith("NET/") else None,
            "gdrdma": "/GDRDMA" in via, "line": line.strip(),
        })
    return channels


def nccl_transport(log: str) -> dict:
    """What an NCCL_DEBUG=INFO log says about the network transport.

    ``gdr_enabled_hcas`` comes from ``GPU Direct RDMA ... enabled for HCA``, which NCCL prints
    from the NIC's capability before it checks each GPU's distance to it: it says GDR *could*
    be used. Only a ``via NET/IB/<n>/GDRDMA`` channel says it *is* used (``gdrdma_channels``).
    """
    network = re.findall(r"NCCL INFO Using network (\S+)", log)
    gdr_enabled = re.findall(r"NET/IB : GPU Direct RDMA (?:\(DMABUF\) )?[Ee]nabled for HCA \d+ '([^']+)'",
                             log)
    gdr_disabled = re.findall(r"GPU Direct RDMA Disabled for HCA \d+ '([^']+)'", log)
    ib_devices = re.findall(r"NET/IB : Using (\[.*?)(?:; OOB|$)", log, re.MULTILINE)
    channels = parse_nccl_channels(log)
    net_channels = [c for c in channels if c["net"]]
    return {
        "network": network[-1] if network else None,
        "socket_fallback": bool(re.search(r"Using network Socket|NET/IB : No device found", log))
        or any(c["net"] == "Socket" for c in net_channels),
        "ib_devices": [d.strip() for d in ib_devices if d.strip() not in ("[RO]", "")],
        "gdr_enabled_hcas": sorted(set(gdr_enabled)),
        "gdr_disabled_hcas": sorted(set(gdr_disabled)),
        "dmabuf": "(DMABUF)" in log,
        "net_channels": len(net_channels),
        "gdrdma_channels": sum(1 for c in net_channels if c["gdrdma"]),
        "first_net_channel_without_gdrdma": next(
            (c["line"] for c in net_channels if c["net"] == "IB" and not c["gdrdma"]), None),
    }


def nccl_transport_problems(info: dict, expect_gdr: bool = True) -> list[str]:
    """Why a run did not use NET/IB (with GPUDirect RDMA where expected); empty when fine.

    GPUDirect counts as used only through ``/GDRDMA`` channels: every NET/IB channel must
    carry it where it is expected (``enabled for HCA`` alone proves nothing).
    """
    problems = []
    if info["socket_fallback"] or info["network"] not in (None, "IB"):
        problems.append("NCCL fell back to the socket transport (NET/Socket): no usable RDMA "
                        "device; check NCCL_IB_HCA, `rdma link`, and that /dev/infiniband is visible")
    elif info["network"] is None and not info["net_channels"]:
        problems.append("NCCL log names no network transport; run with NCCL_DEBUG=INFO "
                        "NCCL_DEBUG_SUBSYS=INIT,NET")
    if expect_gdr and not problems:
        if not info["gdrdma_channels"]:
            problems.append("NCCL used NET/IB without GPUDirect RDMA: no `via NET/IB/<n>/GDRDMA` "
                            "channel in the log (`GPU Direct RDMA enabled for HCA` only says the NIC "
                            "could); run --tags gpudirect and check NCCL_NET_GDR_LEVEL against "
                            "`nvidia-smi topo -m`")
        elif info["first_net_channel_without_gdrdma"]:
            problems.append("NCCL used NET/IB without GPUDirect RDMA on some channels: "
                            f"{info['first_net_channel_without_gdrdma']!r}; check the GPU-NIC "
                            "distance (`nvidia-smi topo -m`) and NCCL_NET_GDR_LEVEL")
    return problems


def engine_transport_problems(logs: dict[str, str], expect_gdr: dict[str, bool],
                              rdma_enabled: bool = True) -> list[str]:
    """Judge the serving engine's own NCCL lines, read from each node's unit journal.

    ``logs``: node -> the journal text of its vLLM unit (with the Ray executor the head's
    journal also carries the workers' ranks, forwarded by Ray); ``expect_gdr``: NCCL host
    name (short, as NCCL prints it) -> whether that node's GPUDirect decision expects
    GDRDMA. Each problem names the rank's host, the node whose journal holds the line, and
    the line. A channel over NET/Socket fails where RDMA is enabled; a NET/IB channel without
    /GDRDMA fails on a host that expects GPUDirect RDMA.
    """
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    any_channel = False
    everyone = bool(expect_gdr) and all(expect_gdr.values())
    for node in sorted(logs):
        for channel in parse_nccl_channels(logs[node] or ""):
            any_channel = True
            host = channel["host"]
            if channel["net"] == "Socket" and rdma_enabled:
                kind = "socket"
                why = ("cross-node channel over the socket transport (NET/Socket) on a cluster "
                       "with RDMA enabled: NCCL found no usable RDMA device (NCCL_IB_HCA, "
                       "/dev/infiniband in the unit or container, mlx5_ib)")
            elif channel["net"] == "IB" and not channel["gdrdma"] and expect_gdr.get(host, everyone):
                kind = "gdr"
                why = ("cross-node channel over NET/IB without GDRDMA where this node's "
                       "GPUDirect RDMA path expects it (servekit_node.gpudirect): run --tags "
                       "gpudirect, check NCCL_NET_GDR_LEVEL and `nvidia-smi topo -m`")
            else:
                continue
            if (host, kind) in seen:
                continue
            seen.add((host, kind))
            problems.append(f"{host}: {why}; line (journal of {node}): {channel['line']}")
        for line in (logs[node] or "").splitlines():
            match = _NCCL_LINE.search(line)
            if rdma_enabled and match and match.group("msg").strip() == "Using network Socket":
                key = (match.group("host"), "socket")
                if key not in seen:
                    seen.add(key)
                    problems.append(f"{match.group('host')}: NCCL chose the socket network on a "
                                    f"cluster with RDMA enabled; line (journal of {node}): "
                                    f"{line.strip()}")
    if not any_channel:
        problems.insert(0, "no NCCL channel line (`NCCL INFO Channel .. via ..`) in the journal of "
                           f"{', '.join(sorted(logs)) or 'any node'}: the ranks must run with "
                           "NCCL_DEBUG=INFO and NCCL_DEBUG_SUBSYS=INIT,NET (rdma_nccl_debug, "
                           "rdma_nccl_debug_subsys in the cluster env file)")
    return problems


def parse_all_reduce_perf(text: str) -> dict:
    """nccl-tests output -> per-size rows and the reported average bus bandwidth (GB/s)."""
    rows = []
    for line in text.splitlines():
        cells = line.split()
        # size count type redop [root] time algbw busbw #wrong time algbw busbw #wrong
        # (the root column arrived in nccl-tests 2.10; older builds print 12 cells)
        if not cells or not cells[0].isdigit() or len(cells) not in (12, 13):
            continue
        busbw = 7 if len(cells) == 13 else 6
        rows.append({"size_bytes": int(cells[0]), "type": cells[2],
                     "out_busbw": float(cells[busbw]), "in_busbw": float(cells[busbw + 4])})
    avg = re.search(r"#\s*Avg bus bandwidth\s*:\s*([\d.]+)", text)
    return {"rows": rows, "avg_busbw_gbs": float(avg.group(1)) if avg else None,
            "peak_busbw_gbs": max((r["out_busbw"] for r in rows), default=None)}


def bandwidth_gate(peak_busbw_gbs: float, link_gbps: float | None, min_share: float = 0.8,
                   min_busbw_gbs: float = 0.0) -> list[str]:
    """Why the peak bus bandwidth fails the gate; empty when it passes.

    Two floors: an absolute one (``min_busbw_gbs``, GB/s) and ``min_share`` of the link speed
    (``link_gbps``, Gb/s; None skips the share, e.g. where PCIe caps the NIC below its port
    rate and the port rate would overstate what the link can carry).
    """
    problems = []
    if peak_busbw_gbs < min_busbw_gbs:
        problems.append(f"all_reduce bus bandwidth {peak_busbw_gbs:.1f} GB/s is under the floor "
                        f"bench_nccl_min_busbw_gbs={min_busbw_gbs:g} GB/s")
    if link_gbps:
        link_gbs = link_gbps / 8
        if peak_busbw_gbs < min_share * link_gbs:
            problems.append(f"all_reduce bus bandwidth {peak_busbw_gbs:.1f} GB/s is "
                            f"{100 * peak_busbw_gbs / link_gbs:.0f}% of the {link_gbps:g} Gb/s link "
                            f"({link_gbs:.1f} GB/s); the gate is {100 * min_share:.0f}%")
    return problems


def hca_link(facts: dict | None, hcas: list[str]) -> dict:
    """Link speed of the HCAs NCCL uses, from node_facts.

    Each HCA counts with the lower of its port rate and its PCIe link: a DGX Spark exposes
    each QSFP port as two PCIe Gen5 x4 functions that report 200 Gb/s each but carry about
    100 Gb/s (NVIDIA dgx-spark-playbooks nvidia/nccl/README.md: both halves in NCCL_IB_HCA,
    busbw about 20-24 GB/s). ``pcie_limited`` is true when any HCA's PCIe link is under its
    port rate: then the port rate is no measure of what the link can carry.
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


def parse_size(text: str) -> int:
    """nccl-tests size syntax (``8G``, ``512M``, ``1024``) -> bytes."""
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)B?", str(text).strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r}: expected an integer with an optional K, M, G or T suffix")
    return int(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")


def all_reduce_max_bytes(requested: str, gpu_free_mib: list[int | None],
                         mem_available_kib: int | None, share: float = 0.25) -> int:
    """Largest all_reduce size that fits beside a running vLLM.

    all_reduce_perf allocates a send and a receive buffer of the largest size per GPU, plus
    NCCL's own buffers; using at most ``share`` (a quarter) of the free memory for each buffer
    pair leaves the serving engine its memory. Unified-memory GPUs (GB10) report no free
    framebuffer (``[N/A]``): MemAvailable is the pool there. The result is a power of two,
    at most ``requested``, at least 1 MiB.
    """
    want = parse_size(requested)
    frees = [f for f in gpu_free_mib if f is not None]
    if frees:
        free_bytes = min(frees) * 1024 ** 2
    elif mem_available_kib:
        free_bytes = mem_available_kib * 1024
    else:
        return want
    cap = int(free_bytes * share / 2)
    size = 1 << 20
    while size * 2 <= min(want, cap):
        size *= 2
    return min(want, size)


# --------------------------------------------------------------------------
# preflight decisions
# --------------------------------------------------------------------------


def _version_tuple(version: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version or ""))


def data_port(facts: dict, hca: str | None) -> dict | None:
    """The port of ``hca`` the data path uses (its first port), or None."""
    ports = ((facts.get("rdma") or {}).get(hca) or {}).get("ports") or {}
    return next(iter(ports.values()), None)


def host_problems(host: str, facts: dict, want: dict) -> list[str]:
    """What stops ``host`` from joining an RDMA GPU cluster; each names the fix.

    ``want``: ``rdma_hca``, ``rdma_netdev``, ``mtu``, ``min_driver``,
    ``gpus_per_node``, ``require_rdma`` (False skips the RDMA checks).
    """
    problems = []
    gpus = facts.get("gpus") or []
    if len(gpus) < want.get("gpus_per_node", 0):
        problems.append(f"{host}: {len(gpus)} GPU(s) visible, inventory says "
                        f"cluster_devices_per_node={want['gpus_per_node']}; check `nvidia-smi -L` "
                        "and the driver")
    driver = facts.get("driver_version")
    if want.get("min_driver") and gpus and _version_tuple(driver) < _version_tuple(want["min_driver"]):
        problems.append(f"{host}: NVIDIA driver {driver} is older than required "
                        f"{want['min_driver']} (preflight_min_driver_version); upgrade the driver")
    if not want.get("require_rdma", True):
        return problems
    hcas = facts.get("rdma") or {}
    hca, netdev = want.get("rdma_hca"), want.get("rdma_netdev")
    if hca not in hcas:
        problems.append(f"{host}: RDMA device rdma_hca={hca!r} not present; present: "
                        f"{', '.join(sorted(hcas)) or 'none (is mlx5_ib loaded?)'}")
        return problems
    port = data_port(facts, hca)
    if port is None:
        problems.append(f"{host}: {hca} has no ports in sysfs")
        return problems
    if port["state"] != "ACTIVE":
        problems.append(f"{host}: {hca} port state is {port['state']} ({port['phys_state']}); "
                        "bring the link up (cable, switch port, `ip link set <netdev> up`)")
    ndevs = sorted({g["ndev"] for g in port["gids"] if g["ndev"]})
    if netdev not in ndevs and netdev not in (facts.get("netdevs") or {}):
        problems.append(f"{host}: netdev rdma_netdev={netdev!r} not found for {hca}; "
                        f"its netdevs: {', '.join(ndevs) or 'none'}")
    elif roce_v2_gid_index(port, netdev) is None:
        problems.append(f"{host}: no RoCE v2 GID on {netdev} ({hca}); give {netdev} an IP "
                        "address on the data subnet and check `rdma link` / cma_roce_mode")
    mtu = (facts.get("netdevs") or {}).get(netdev, {}).get("mtu")
    if want.get("mtu") and mtu is not None and mtu != want["mtu"]:
        problems.append(f"{host}: {netdev} MTU is {mtu}, want {want['mtu']} (network stage "
                        "sets it; the switch ports must allow it too)")
    return problems


def cluster_problems(facts_by_host: dict[str, dict], world_size: int) -> list[str]:
    """Cross-host checks: GPU total, MTU and CUDA agreement."""
    problems = []
    total = sum(len(f.get("gpus") or []) for f in facts_by_host.values())
    if total < world_size:
        problems.append(f"cluster: {total} GPU(s) across {len(facts_by_host)} node(s), the model "
                        f"needs tensor-parallel-size x pipeline-parallel-size = {world_size}")
    for label, key in (("CUDA version", "cuda_version"), ("data netdev MTU", "data_mtu")):
        values = {h: f.get(key) for h, f in facts_by_host.items() if f.get(key) is not None}
        if len(set(values.values())) > 1:
            problems.append(f"cluster: {label} differs between nodes: "
                            + ", ".join(f"{h}={v}" for h, v in sorted(values.items())))
    return problems


# DMA-BUF registration of GPU memory needs the RDMA dma-buf MR uverbs of Linux 5.12
# (torvalds/linux bfe0cc6, "RDMA/uverbs: Add uverbs command for dma-buf based MR
# registration") and the GPU driver's dma-buf export, which the NVIDIA open kernel modules
# provide (CUDA 11.7 / R515 and later). NVIDIA recommends DMA-BUF over nvidia-peermem where
# it is supported (GPU Operator docs, "GPUDirect RDMA and GPUDirect Storage").
DMABUF_MIN_KERNEL = (5, 12)
DMABUF_MIN_DRIVER = (515,)


def unified_memory(facts: dict) -> bool:
    """A GPU that shares the CPU's memory: GB10 (DGX Spark), or ATS addressing with no
    framebuffer of its own (``memory.total`` ``[N/A]``; GH200/GB200 report ATS *and* their
    HBM, and do support GPUDirect RDMA)."""
    for gpu in facts.get("gpus") or []:
        name = gpu.get("name") or ""
        if "GB10" in name.split():
            return True
        if gpu.get("addressing_mode") == "ATS" and gpu.get("memory_total_mib") is None:
            return True
    return False


def dmabuf_support(facts: dict) -> tuple[bool, str]:
    """Whether driver and kernel support GPUDirect RDMA through DMA-BUF, and why (not)."""
    kernel, module = facts.get("kernel"), facts.get("nvidia_kernel_module")
    driver = facts.get("driver_version")
    missing = []
    if _version_tuple(kernel) < DMABUF_MIN_KERNEL:
        missing.append(f"kernel {kernel} < 5.12")
    if module != "open":
        missing.append(f"NVIDIA kernel module is {module or 'unknown'}, not the open one")
    if _version_tuple(driver) < DMABUF_MIN_DRIVER:
        missing.append(f"driver {driver} < 515")
    if missing:
        return False, "; ".join(missing)
    return True, f"open kernel module {driver}, kernel {kernel}"


def gpudirect_decision(facts: dict) -> dict:
    """How GPUDirect RDMA reaches the NIC on this host; see roles/gpudirect/README.md.

    Order: no GPU -> ``none``; unified memory (GB10 / DGX Spark) -> ``unsupported`` (NVIDIA:
    GPUDirect RDMA is not supported there; nvidia-peermem, dma-buf and GDRCopy do not work,
    forums.developer.nvidia.com/t/dgx-spark-gpudirect-rdma/348787/6): nothing is loaded,
    nothing fails, NCCL is not expected to use GDRDMA; DMA-BUF where driver and kernel
    support it -> ``dmabuf``; nvidia_peermem only where the RDMA stack exports
    ``ib_register_peer_memory_client`` (MLNX_OFED / DOCA; the inbox stack does not and the
    module then fails with "Unknown symbol") -> ``peermem``; else ``none``.
    ``expect_gdr`` says whether NCCL must show GDRDMA channels.
    """
    def decide(mode: str, reason: str, load: bool = False) -> dict:
        return {"mode": mode, "load": load, "reason": reason,
                "expect_gdr": mode in ("dmabuf", "peermem")}

    if not facts.get("gpus"):
        return decide("none", "no NVIDIA GPU visible")
    if unified_memory(facts):
        names = ", ".join(sorted({g.get("name") or "?" for g in facts["gpus"]}))
        return decide("unsupported", f"{names} shares system memory (unified memory): NVIDIA "
                      "states GPUDirect RDMA is not supported there (neither nvidia-peermem nor "
                      "DMA-BUF); NCCL stages through host memory")
    dmabuf, why = dmabuf_support(facts)
    if dmabuf:
        return decide("dmabuf", f"DMA-BUF: {why} (NVIDIA's recommended path; nothing to load)")
    exporter = facts.get("peer_memory_exporter")
    if exporter and (facts.get("peermem_loaded") or facts.get("peermem_available")):
        return decide("peermem", f"no DMA-BUF ({why}); {exporter} exports {PEER_MEMORY_SYMBOL}, "
                      "nvidia_peermem can load", load=not facts.get("peermem_loaded"))
    if facts.get("peermem_available") and not exporter:
        return decide("none", f"no DMA-BUF ({why}); nvidia_peermem ships with the driver but no "
                      f"module exports {PEER_MEMORY_SYMBOL} (/proc/kallsyms): with the inbox RDMA "
                      "stack it fails with 'Unknown symbol'; install MLNX_OFED/DOCA-OFED, or the "
                      "open kernel module and a 5.12+ kernel for DMA-BUF")
    return decide("none", f"no DMA-BUF ({why}) and no nvidia_peermem for this driver")


def explain_peermem_failure(stderr: str, dmesg: str) -> str:
    """Why ``modprobe nvidia_peermem`` failed, from its stderr and the kernel log."""
    lines = [ln.strip() for ln in dmesg.splitlines() if "peermem" in ln or "peer_memory" in ln]
    unknown = [ln for ln in lines if "Unknown symbol" in ln]
    first = (stderr.strip().splitlines() or ["modprobe failed"])[0]
    if unknown:
        return (f"{first}; kernel: {unknown[0]}: no module exports the peer-memory API "
                "(inbox RDMA stack); install MLNX_OFED/DOCA-OFED and rebuild the driver, or use "
                "DMA-BUF (open kernel module, kernel 5.12+)")
    if "Invalid argument" in first:
        return (f"{first}: the module was built without the peer-memory API (NVIDIA's conftest "
                "found no MLNX_OFED symbols), or the GPU does not support GPUDirect RDMA (GB10); "
                + (f"kernel: {lines[-1]}" if lines else "no nvidia_peermem line in the kernel log"))
    return f"{first}" + (f"; kernel: {lines[-1]}" if lines else "")


# --------------------------------------------------------------------------
# bench: the NCCL gate
# --------------------------------------------------------------------------


def nccl_bench_verdict(output: str, link_gbps: float | None, min_share: float = 0.8, *,
                       expect_gdr: bool = True, min_busbw_gbs: float = 0.0,
                       pcie_limited: bool = False) -> dict:
    """Judge an ``all_reduce_perf`` run made with ``NCCL_DEBUG=INFO``.

    Problems: no result rows, the socket transport instead of NET/IB, NET/IB channels without
    GDRDMA where GPUDirect is expected, peak bus bandwidth under ``min_busbw_gbs`` or under
    ``min_share`` of the link speed (``link_gbps``; the share is skipped when PCIe caps an HCA
    below its port rate, ``pcie_limited``: the absolute floor decides there).
    """
    perf = parse_all_reduce_perf(output)
    transport = nccl_transport(output)
    problems = []
    if not perf["rows"]:
        problems.append("no all_reduce_perf result rows in the output: the run failed or was cut short")
    problems += nccl_transport_problems(transport, expect_gdr=expect_gdr)
    peak = perf["peak_busbw_gbs"] or 0.0
    notes = []
    if perf["rows"]:
        share_link = None if pcie_limited else link_gbps
        if pcie_limited:
            notes.append("an HCA's PCIe link is slower than its port rate: only the absolute "
                         "floor bench_nccl_min_busbw_gbs applies")
        elif not link_gbps:
            notes.append("link speed unknown (no rate in an HCA's sysfs port): only the absolute "
                         "floor bench_nccl_min_busbw_gbs applies")
        problems += bandwidth_gate(peak, share_link, min_share, min_busbw_gbs)
        if not share_link and not min_busbw_gbs:
            problems.append("no bandwidth floor: the link speed is unknown or capped by PCIe and "
                            "bench_nccl_min_busbw_gbs is 0")
    return {"peak_busbw_gbs": peak, "avg_busbw_gbs": perf["avg_busbw_gbs"], "rows": perf["rows"],
            "transport": transport, "link_gbps": link_gbps, "min_share": min_share,
            "min_busbw_gbs": min_busbw_gbs, "pcie_limited": pcie_limited, "notes": notes,
            "problems": problems}
