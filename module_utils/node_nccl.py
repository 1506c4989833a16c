"""NCCL logs and nccl-tests output: the transport NCCL used and the bandwidth gate.

Pure functions shared by the ``nccl_gate``, ``nccl_bench_size`` and
``nccl_transport_check`` modules (``ansible.module_utils.node_nccl``) and the
tests (``servekit.module_utils.node_nccl``). Standard library only.

Formats parsed: NCCL ``NCCL_DEBUG=INFO`` logs (channel lines ``host:pid:tid [dev] NCCL INFO
Channel 00/0 : 0[0] -> 1[0] [send] via NET/IB/0/GDRDMA``, also behind Ray's
``(RayWorkerWrapper pid=.., ip=..)`` prefix) and nccl-tests ``all_reduce_perf`` output.
"""

from __future__ import annotations

import re

try:  # inside an Ansible module payload
    from ansible.module_utils.node_rdma import hca_link
except ImportError:  # imported as servekit.module_utils.node_nccl
    from .node_rdma import hca_link  # type: ignore[no-redef]

# ``host:pid:tid [dev] NCCL INFO Channel 00/0 : 3[3] -> 8[0] [send] via NET/IB/0/GDRDMA``
# (src/transport/net.cc; older NCCL prints ``Channel 00 :`` and bus ids in the brackets).
# Ray forwards a worker's stdout to the driver behind ``(RayWorkerWrapper pid=.., ip=..) ``,
# so the prefix is searched, not anchored.
_CHANNEL = re.compile(
    r"(?P<host>[\w.-]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>\d+)\] NCCL INFO "
    r"Channel (?P<channel>\d+)(?:/\d+)? : (?P<src>\d+)\[\w+\] -> (?P<dst>\d+)\[\w+\]"
    r"(?: \[(?P<direction>send|receive)\])? via (?P<via>\S+)")
_NCCL_LINE = re.compile(r"(?P<host>[\w.-]+):\d+:\d+ \[\d+\] NCCL (?:INFO|WARN) (?P<msg>.*)$")

# NCCL prints the network's own name: ``IB`` for its internal verbs transport, ``Socket`` for the
# TCP fallback, and a net plugin's name otherwise: Mellanox's nccl-rdma-sharp plugin (HPC-X, DOCA,
# NGC images' /opt/hpcx/nccl_rdma_sharp_plugin) calls itself ``IBext`` or ``IBext_v6`` ..
# ``IBext_v11`` (src/ib_plugin.c, ``.name = "IBext_v8"``), as in ``Using network IBext_v6``
# (NVIDIA/nccl-tests#294) and ``via NET/IBext_v8/2`` (NVIDIA/nccl#1814). Whether a channel carries
# ``/GDRDMA`` is NCCL core's decision (src/transport/net.cc ``req.useGdr``) for every network.
SOCKET_NETWORK = "Socket"


def is_socket_network(name: str | None) -> bool:
    """True only for NCCL's socket fallback; ``IB``, ``IBext_v8`` and other plugins are RDMA."""
    return name == SOCKET_NETWORK


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
    # ``NET/%s : GPU Direct RDMA %s for HCA`` (src/graph/topo.cc): %s is the network's name
    gdr_enabled = re.findall(r"NET/\S+ : GPU Direct RDMA (?:\(DMABUF\) )?[Ee]nabled for HCA \d+ '([^']+)'",
                             log)
    gdr_disabled = re.findall(r"GPU Direct RDMA Disabled for HCA \d+ '([^']+)'", log)
    ib_devices = re.findall(r"NET/IB : Using (\[.*?)(?:; OOB|$)", log, re.MULTILINE)
    channels = parse_nccl_channels(log)
    net_channels = [c for c in channels if c["net"]]
    return {
        "network": network[-1] if network else None,
        "socket_fallback": bool(re.search(r"Using network Socket|NET/IB : No device found", log))
        or any(is_socket_network(c["net"]) for c in net_channels),
        "ib_devices": [d.strip() for d in ib_devices if d.strip() not in ("[RO]", "")],
        "gdr_enabled_hcas": sorted(set(gdr_enabled)),
        "gdr_disabled_hcas": sorted(set(gdr_disabled)),
        "dmabuf": "(DMABUF)" in log,
        "net_channels": len(net_channels),
        "gdrdma_channels": sum(1 for c in net_channels if c["gdrdma"]),
        "first_net_channel_without_gdrdma": next(
            (c["line"] for c in net_channels if not is_socket_network(c["net"]) and not c["gdrdma"]),
            None),
    }


def nccl_transport_problems(info: dict, expect_gdr: bool = True) -> list[str]:
    """Why a run did not use NET/IB (with GPUDirect RDMA where expected); empty when fine.

    GPUDirect counts as used only through ``/GDRDMA`` channels: every NET/IB channel must
    carry it where it is expected (``enabled for HCA`` alone proves nothing).
    """
    problems = []
    if info["socket_fallback"] or is_socket_network(info["network"]):
        problems.append("NCCL fell back to the socket transport (NET/Socket): no usable RDMA "
                        "device; check NCCL_IB_HCA, `rdma link`, and that /dev/infiniband is visible")
    elif info["network"] is None and not info["net_channels"]:
        problems.append("NCCL log names no network transport; run with NCCL_DEBUG=INFO "
                        "NCCL_DEBUG_SUBSYS=INIT,NET")
    if expect_gdr and not problems:
        if not info["gdrdma_channels"]:
            net = info["network"] or "IB"
            problems.append(f"NCCL used NET/{net} without GPUDirect RDMA: no `via NET/{net}/<n>/GDRDMA` "
                            "channel in the log (`GPU Direct RDMA enabled for HCA` only says the NIC "
                            "could); run --tags gpudirect and check NCCL_NET_GDR_LEVEL against "
                            "`nvidia-smi topo -m`")
        elif info["first_net_channel_without_gdrdma"]:
            problems.append("NCCL used NET/IB without GPUDirect RDMA on some channels: "
                            f"{info['first_net_channel_without_gdrdma']!r}; check the GPU-NIC "
                            "distance (`nvidia-smi topo -m`) and NCCL_NET_GDR_LEVEL")
    return problems


# Ray folds driver-forwarded worker lines that differ only in words with digits into one line
# with this suffix (ray/_private/ray_logging: ``[repeated {count}x across cluster]``; docs.ray.io
# "Configuring Logging", Log deduplication). NCCL channel lines differ almost only in such words
# (``h100-b:4123:4170``, ``1[0]``, ``NET/IB/0/GDRDMA``), so with deduplication on, one rank's line
# stands for every rank's. RAY_DEDUP_LOGS=0 in the driver's (the head vLLM's) environment turns it off.
_RAY_DEDUP = re.compile(r"\[repeated \d+x across cluster\]")


def transport_check_plan(*, rdma_enabled: bool, executor: str, nodes_used: int,
                         active: dict[str, bool]) -> dict:
    """Whether the serving engine's NCCL transport is checked, and whose journal is read.

    ``active``: node -> whether it runs a vLLM unit (under Ray only the head does: Ray places the
    other ranks and forwards their output to the head's driver). Returns ``run``, ``read`` (the
    nodes whose vLLM journal holds the ranks' lines), ``min_hosts`` (how many NCCL hosts must show
    channel lines: the nodes the model spans) and ``reason`` (said on a skip too).
    """
    if not rdma_enabled:
        return {"run": False, "read": [], "min_hosts": 0,
                "reason": "cluster_rdma_enabled is false: no RDMA transport to check (the lab's CPU "
                          "vLLM talks gloo, not NCCL)"}
    if nodes_used <= 1:
        return {"run": False, "read": [], "min_hosts": 0,
                "reason": "the model fits on one node: no NCCL channel crosses nodes"}
    read = sorted(node for node, runs in active.items() if runs)
    if executor == "ray":
        why = (f"the model spans {nodes_used} nodes; Ray executor: the head's journal holds every "
               "rank's lines (its driver runs with RAY_DEDUP_LOGS=0)")
    else:
        why = f"the model spans {nodes_used} nodes; each node's vLLM journal holds its own ranks' lines"
    return {"run": bool(read), "read": read, "min_hosts": nodes_used,
            "reason": why if read else "no node runs a vLLM unit: nothing to read"}



def _coverage_problems(folded: list[str], hosts: set[str], min_hosts: int) -> list[str]:
    """Ranks whose channel lines are missing from what was read, so that they went unjudged."""
    if folded:
        return ["Ray folded ranks' NCCL channel lines into one (log deduplication), so those ranks "
                "cannot be judged: the head vLLM (Ray's driver) needs RAY_DEDUP_LOGS=0 in its "
                f"environment; first: {folded[0]}"]
    if hosts and len(hosts) < min_hosts:
        return [f"NCCL channel lines from {len(hosts)} host(s) ({', '.join(sorted(hosts))}), but the "
                f"model spans {min_hosts} nodes: the other ranks' lines did not reach the journal "
                "(Ray's log deduplication: RAY_DEDUP_LOGS=0 for the head vLLM; journald's rate limit)"]
    return []

def engine_transport_problems(logs: dict[str, str], expect_gdr: dict[str, bool],
                              rdma_enabled: bool = True, min_hosts: int = 0) -> list[str]:
    """Judge the serving engine's own NCCL lines, read from each node's unit journal.

    ``logs``: node -> the journal text of its vLLM unit (with the Ray executor the head's
    journal also carries the workers' ranks, forwarded by Ray); ``expect_gdr``: NCCL host
    name (short, as NCCL prints it) -> whether that node's GPUDirect decision expects
    GDRDMA. Each problem names the rank's host, the node whose journal holds the line, and
    the line. A channel over NET/Socket fails where RDMA is enabled; a NET/IB channel without
    /GDRDMA fails on a host that expects GPUDirect RDMA. A net plugin's network (``IBext_v8``)
    counts as RDMA: only ``Socket`` is the fallback. ``min_hosts``: how many NCCL hosts must show
    channel lines (the nodes the model spans); fewer, or Ray's ``[repeated Nx across cluster]``,
    means ranks' lines were folded or lost and those ranks could not be judged.
    """
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    any_channel = False
    hosts: set[str] = set()
    folded: list[str] = []
    everyone = bool(expect_gdr) and all(expect_gdr.values())
    for node in sorted(logs):
        for channel in parse_nccl_channels(logs[node] or ""):
            any_channel = True
            host = channel["host"]
            hosts.add(host)
            if _RAY_DEDUP.search(channel["line"]):
                folded.append(f"{channel['line']} (journal of {node})")
            if is_socket_network(channel["net"]) and rdma_enabled:
                kind = "socket"
                why = ("cross-node channel over the socket transport (NET/Socket) on a cluster "
                       "with RDMA enabled: NCCL found no usable RDMA device (NCCL_IB_HCA, "
                       "/dev/infiniband in the unit or container, mlx5_ib)")
            elif (channel["net"] and not is_socket_network(channel["net"]) and not channel["gdrdma"]
                  and expect_gdr.get(host, everyone)):
                kind = "gdr"
                why = (f"cross-node channel over NET/{channel['net']} without GDRDMA where this node's "
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
    problems += _coverage_problems(folded, hosts, min_hosts)
    if not any_channel:
        problems.insert(0, "no NCCL channel line (`NCCL INFO Channel .. via ..`) in the journal of "
                           f"{', '.join(sorted(logs)) or 'any node'}: the ranks must run with "
                           "NCCL_DEBUG=INFO and NCCL_DEBUG_SUBSYS=INIT,NET (rdma_nccl_debug, "
                           "rdma_nccl_debug_subsys in the cluster env file)")
    return problems


# The collectives the bench may gate on (nccl-tests' <name>_perf binaries). NVIDIA's only
# published DGX Spark NCCL figure is an all_gather busbw floor (bench role defaults).
COLLECTIVES = ("all_reduce", "all_gather")


def parse_nccl_version(log: str) -> str | None:
    """The NCCL the run loaded, from its version line (``NCCL INFO NCCL version 2.28.9+cuda13.0``
    with NCCL_DEBUG=INFO, a bare ``NCCL version ...`` line at NCCL_DEBUG=VERSION); None without."""
    match = re.search(r"\bNCCL version (\d+\.\d+\.\d+\S*)", log)
    return match.group(1) if match else None


def parse_all_reduce_perf(text: str) -> dict:
    """nccl-tests output -> per-size rows and the reported average bus bandwidth (GB/s).

    The table is the same for every collective nccl-tests has (all_gather prints ``none`` and
    ``-1`` in the redop and root columns), so this reads all_gather_perf too."""
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
                   min_busbw_gbs: float = 0.0, collective: str = "all_reduce") -> list[str]:
    """Why the peak bus bandwidth fails the gate; empty when it passes.

    Two floors: an absolute one (``min_busbw_gbs``, GB/s) and ``min_share`` of the link speed
    (``link_gbps``, Gb/s; None skips the share, e.g. where PCIe caps the NIC below its port
    rate and the port rate would overstate what the link can carry).
    """
    problems = []
    if peak_busbw_gbs < min_busbw_gbs:
        problems.append(f"{collective} bus bandwidth {peak_busbw_gbs:.1f} GB/s is under the floor "
                        f"bench_nccl_min_busbw_gbs={min_busbw_gbs:g} GB/s")
    if link_gbps:
        link_gbs = link_gbps / 8
        if peak_busbw_gbs < min_share * link_gbs:
            problems.append(f"{collective} bus bandwidth {peak_busbw_gbs:.1f} GB/s is "
                            f"{100 * peak_busbw_gbs / link_gbs:.0f}% of the {link_gbps:g} Gb/s link "
                            f"({link_gbs:.1f} GB/s); the gate is {100 * min_share:.0f}%")
    return problems


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


def nccl_bench_verdict(output: str, link_gbps: float | None, min_share: float = 0.8, *,
                       expect_gdr: bool = True, min_busbw_gbs: float = 0.0,
                       pcie_limited: bool = False, collective: str = "all_reduce") -> dict:
    """Judge an nccl-tests run (``<collective>_perf``) made with ``NCCL_DEBUG=INFO``.

    Problems: no result rows, the socket transport instead of NET/IB, NET/IB channels without
    GDRDMA where GPUDirect is expected, peak bus bandwidth under ``min_busbw_gbs`` or under
    ``min_share`` of the link speed (``link_gbps``; the share is skipped when PCIe caps an HCA
    below its port rate, ``pcie_limited``: the absolute floor decides there).
    """
    perf = parse_all_reduce_perf(output)
    transport = nccl_transport(output)
    problems = []
    if not perf["rows"]:
        problems.append(f"no {collective}_perf result rows in the output: the run failed or was cut short")
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
        problems += bandwidth_gate(peak, share_link, min_share, min_busbw_gbs, collective)
        if not share_link and not min_busbw_gbs:
            problems.append("no bandwidth floor: the link speed is unknown or capped by PCIe and "
                            "bench_nccl_min_busbw_gbs is 0")
    return {"collective": collective, "nccl_version": parse_nccl_version(output),
            "peak_busbw_gbs": peak, "avg_busbw_gbs": perf["avg_busbw_gbs"], "rows": perf["rows"],
            "transport": transport, "link_gbps": link_gbps, "min_share": min_share,
            "min_busbw_gbs": min_busbw_gbs, "pcie_limited": pcie_limited, "notes": notes,
            "problems": problems}


def nccl_gate(output: str, *, link_gbps: float | None = None, facts: dict | None = None,
              hcas: list[str] | tuple[str, ...] = (), min_share: float = 0.8,
              min_busbw_gbs: float = 0.0, expect_gdr: bool = True,
              collective: str = "all_reduce") -> dict:
    """The ``nccl_gate`` module's verdict: ``nccl_bench_verdict`` with the link speed given
    (``link_gbps``) or found from the node's facts and the HCAs NCCL uses (``hca_link``).

    Raises ValueError, naming the option and its range, for a share or floor out of range.
    """
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share: {min_share} is out of range; allowed: more than 0, at most 1")
    if min_busbw_gbs < 0:
        raise ValueError(f"min_busbw_gbs: {min_busbw_gbs} is out of range; allowed: 0 or more")
    if collective not in COLLECTIVES:
        raise ValueError(f"collective: {collective!r} is not known; allowed: {', '.join(COLLECTIVES)}")
    link = hca_link(facts, list(hcas))
    if link_gbps is not None:
        link = {"link_gbps": link_gbps, "pcie_limited": False}
    return nccl_bench_verdict(output, link["link_gbps"], min_share, expect_gdr=expect_gdr,
                              min_busbw_gbs=min_busbw_gbs, pcie_limited=link["pcie_limited"],
                              collective=collective)
