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
- NCCL ``NCCL_DEBUG=INFO`` logs and nccl-tests ``all_reduce_perf`` output.
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
# NCCL logs and nccl-tests
# --------------------------------------------------------------------------


def nccl_transport(log: str) -> dict:
    """What an NCCL_DEBUG=INFO log says about the network transport."""
    network = re.findall(r"NCCL INFO Using network (\S+)", log)
    gdr_enabled = re.findall(r"NET/IB : GPU Direct RDMA (?:\(DMABUF\) )?[Ee]nabled for HCA \d+ '([^']+)'",
                             log)
    gdr_disabled = re.findall(r"GPU Direct RDMA Disabled for HCA \d+ '([^']+)'", log)
    ib_devices = re.findall(r"NET/IB : Using (\[.*?)(?:; OOB|$)", log, re.MULTILINE)
    return {
        "network": network[-1] if network else None,
        "socket_fallback": bool(re.search(r"Using network Socket|NET/IB : No device found", log)),
        "ib_devices": [d.strip() for d in ib_devices if d.strip() not in ("[RO]", "")],
        "gdr_enabled_hcas": sorted(set(gdr_enabled)),
        "gdr_disabled_hcas": sorted(set(gdr_disabled)),
        "dmabuf": "(DMABUF)" in log,
        "gdrdma_channels": len(re.findall(r"via NET/IB/\d+/GDRDMA", log)),
    }


def nccl_transport_problems(info: dict, expect_gdr: bool = True) -> list[str]:
    """Why a run did not use NET/IB (with GPUDirect where expected); empty when fine."""
    problems = []
    if info["socket_fallback"] or info["network"] not in (None, "IB"):
        problems.append("NCCL fell back to the socket transport (NET/Socket): no usable RDMA "
                        "device; check NCCL_IB_HCA, `rdma link`, and that /dev/infiniband is visible")
    elif info["network"] is None:
        problems.append("NCCL log names no network transport; run with NCCL_DEBUG=INFO "
                        "NCCL_DEBUG_SUBSYS=INIT,NET")
    if expect_gdr and not problems and not (info["gdr_enabled_hcas"] or info["gdrdma_channels"]):
        problems.append("NCCL used NET/IB without GPUDirect RDMA: load nvidia_peermem "
                        "(or use the DMA-BUF path) and check NCCL_NET_GDR_LEVEL")
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


def bandwidth_gate(peak_busbw_gbs: float, link_gbps: float, min_share: float = 0.8) -> str | None:
    """None when bus bandwidth reaches ``min_share`` of the link speed; else why not."""
    link_gbs = link_gbps / 8
    if peak_busbw_gbs >= min_share * link_gbs:
        return None
    return (f"all_reduce bus bandwidth {peak_busbw_gbs:.1f} GB/s is "
            f"{100 * peak_busbw_gbs / link_gbs:.0f}% of the {link_gbps:g} Gb/s link "
            f"({link_gbs:.1f} GB/s); the gate is {100 * min_share:.0f}%")


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


def peermem_decision(facts: dict) -> dict:
    """How GPUDirect RDMA reaches the NIC on this host.

    ``peermem`` where nvidia_peermem is loaded or loadable; ``dmabuf`` where
    it is not (GB10 / DGX Spark: the open kernel module offers DMA-BUF and
    NCCL uses it with a 5.12+ kernel); ``none`` without an NVIDIA GPU.
    """
    if not facts.get("gpus"):
        return {"mode": "none", "reason": "no NVIDIA GPU visible"}
    if facts.get("peermem_loaded"):
        return {"mode": "peermem", "reason": "nvidia_peermem is loaded", "load": False}
    if facts.get("peermem_available"):
        return {"mode": "peermem", "reason": "nvidia_peermem ships with the driver", "load": True}
    kernel = _version_tuple(facts.get("kernel"))
    if kernel >= (5, 12):
        return {"mode": "dmabuf", "load": False,
                "reason": "nvidia_peermem is not available for this driver; NCCL uses DMA-BUF "
                          f"(kernel {facts.get('kernel')} >= 5.12)"}
    return {"mode": "none", "load": False,
            "reason": f"neither nvidia_peermem nor DMA-BUF (kernel {facts.get('kernel')} < 5.12)"}


# --------------------------------------------------------------------------
# bench: the NCCL gate
# --------------------------------------------------------------------------


def nccl_bench_verdict(output: str, link_gbps: float | None, min_share: float = 0.8,
                       expect_gdr: bool = True) -> dict:
    """Judge an ``all_reduce_perf`` run made with ``NCCL_DEBUG=INFO``.

    Problems: no result rows, the socket transport instead of NET/IB, no
    GPUDirect RDMA where expected, peak bus bandwidth under ``min_share`` of
    the link speed (``link_gbps``, Gb/s, from the HCA port's sysfs rate).
    """
    perf = parse_all_reduce_perf(output)
    transport = nccl_transport(output)
    problems = []
    if not perf["rows"]:
        problems.append("no all_reduce_perf result rows in the output: the run failed or was cut short")
    problems += nccl_transport_problems(transport, expect_gdr=expect_gdr)
    peak = perf["peak_busbw_gbs"] or 0.0
    if perf["rows"]:
        if link_gbps:
            gate = bandwidth_gate(peak, link_gbps, min_share)
            if gate:
                problems.append(gate)
        else:
            problems.append("link speed unknown (no rate in the HCA's sysfs port): cannot gate bandwidth")
    return {"peak_busbw_gbs": peak, "avg_busbw_gbs": perf["avg_busbw_gbs"], "rows": perf["rows"],
            "transport": transport, "link_gbps": link_gbps, "min_share": min_share, "problems": problems}
