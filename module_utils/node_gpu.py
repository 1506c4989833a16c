"""GPU facts and the GPUDirect RDMA decision of one host.

Pure functions over command output, shared by the ``node_facts`` and
``gpudirect_peermem`` modules (``ansible.module_utils.node_gpu``) and the
tests (``servekit.module_utils.node_gpu``), which feed them output recorded on
GPU hosts (``tests/fixtures``). Standard library only: these run on the
target's system Python.

Formats parsed:
- ``nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,memory.total,driver_version,compute_cap
  --format=csv,noheader,nounits`` (GPU_QUERY below);
- ``nvidia-smi -q -x`` (driver and CUDA version);
- ``nvidia-smi topo -m`` (GPU/NIC matrix, ANSI underline codes included);
- ``/proc/driver/nvidia/version`` (open or proprietary kernel module), ``/proc/kallsyms``
  (``address type name\t[module]``, kernel/kallsyms.c);
- ``modprobe`` errors and kernel ``Unknown symbol`` lines (kernel/module/main.c).
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
PEER_MEMORY_SYMBOL = "ib_register_peer_memory_client"


def version_tuple(version: str | None) -> tuple[int, ...]:
    """``580.65.06`` -> (580, 65, 6); None or no digits -> ()."""
    return tuple(int(p) for p in re.findall(r"\d+", version or ""))


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
            # NVSwitch systems: the GPU's registration with Fabric Manager (fabric_problem)
            "fabric_state": _na(gpu.findtext("fabric/state") or ""),
            "fabric_status": _na(gpu.findtext("fabric/status") or ""),
        })
    return {
        "driver_version": root.findtext("driver_version"),
        "cuda_version": root.findtext("cuda_version"),
        "attached_gpus": int(root.findtext("attached_gpus") or 0),
        "gpus": gpus,
    }



# NVML_GPU_FABRIC_STATE_*: Not Supported, Not Started, In Progress, Completed (NVML API reference,
# "Fabric definitions"). On NVSwitch systems (HGX/DGX H100, H200, B200) Fabric Manager moves
# each GPU to Completed; until then cuInit fails with error 802 "system not yet initialized"
# while nvidia-smi still lists every GPU (aws-samples/aws-deep-learning-ami-ubuntu-dcv-desktop#33,
# NVIDIA/gpu-operator#375). GPUs without a fabric report N/A (recorded H100 VM) or Not Supported
# (H100 PCIe, leptonai/gpud#1147).
FABRIC_NOT_APPLICABLE = (None, "Not Supported")


def fabric_problem(gpu: dict) -> str | None:
    """Why this GPU cannot run CUDA yet for want of Fabric Manager; None when it can."""
    state, status = gpu.get("fabric_state"), gpu.get("fabric_status")
    if state in FABRIC_NOT_APPLICABLE:
        return None
    if state != "Completed":
        return (f"fabric state is {state!r}, not 'Completed': Fabric Manager has not set up this "
                "NVSwitch GPU, and CUDA fails with error 802 (system not yet initialized) although "
                "nvidia-smi lists it; start nvidia-fabricmanager (`systemctl status "
                "nvidia-fabricmanager`; its version must equal the driver's)")
    # nvmlGpuFabricInfo_t: status "must be checked only if state returns complete"
    if status not in (None, "Success"):
        return (f"fabric state is 'Completed' with status {status!r}: Fabric Manager failed to set "
                "up this GPU; see `journalctl -u nvidia-fabricmanager`")
    return None


# PCIe Access Control Services. NCCL's troubleshooting guide ("PCI Access Control Services
# (ACS)"): with ACS enabled, GPU<->NIC peer-to-peer transactions are redirected up to the root
# complex, "a significant performance reduction or even a hang" for GPUDirect RDMA; check with
# `lspci -vvv | grep ACSCtl` for "SrcValid+". pciutils ls-ecaps.c (cap_acs) prints the control
# register as "\t\tACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ ...".
_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def parse_lspci_acs(text: str) -> dict[str, str]:
    """``lspci -D -vvv`` -> {bdf: ACSCtl flags} for every device with an ACS capability."""
    acs: dict[str, str] = {}
    device = None
    for line in text.splitlines():
        head = _BDF.match(line)
        if head and not line[:1].isspace():
            device = head.group(0)
        elif device and line.strip().startswith("ACSCtl:"):
            acs[device] = line.split(":", 1)[1].strip()
    return acs


def pci_chain(sysfs_path: str) -> list[str]:
    """A device's resolved sysfs path (``/sys/devices/pci0000:40/0000:40:01.1/../0000:45:00.0``)
    -> its bridges from the root port down, then itself."""
    return [part for part in sysfs_path.split("/") if _BDF.fullmatch(part)]


def sysfs_bdf(nvidia_bus_id: str) -> str:
    """nvidia-smi's ``00000000:18:00.0`` -> sysfs's ``0000:18:00.0``."""
    domain, _, rest = nvidia_bus_id.lower().partition(":")
    return f"{domain[-4:]}:{rest}"


def acs_warnings(chains: dict[str, list[str]], acs: dict[str, str], nics: list[str]) -> list[str]:
    """Where ACS is on between a rail NIC and a GPU behind the same PCIe switch.

    ``chains``: device (``GPU<index>`` or an HCA's name) -> ``pci_chain``; ``nics``: the rail HCAs
    (other HCAs, such as a storage NIC, are not judged).
    The bridges that carry their peer-to-peer traffic are the deepest common one and those
    below it; a pair without a common bridge talks through the CPU anyway (NCCL's PHB/SYS).
    """
    warnings = []
    gpus = sorted(d for d in chains if re.fullmatch(r"GPU\d+", d))
    for nic in nics:
        for gpu in gpus:
            a, b = chains.get(nic) or [], chains[gpu]
            common = 0
            while common < min(len(a), len(b)) - 1 and a[common] == b[common]:
                common += 1
            if not common:
                continue
            bridges = dict.fromkeys([a[common - 1], *a[common:-1], *b[common:-1]])
            on = [f"{bdf} ({acs[bdf]})" for bdf in bridges if "SrcValid+" in acs.get(bdf, "")]
            if on:
                warnings.append(f"PCIe ACS is enabled between {nic} and {gpu} on {', '.join(on)}: "
                                "GPUDirect RDMA traffic is redirected through the root complex "
                                "(slow, or NCCL hangs); disable ACS on bare metal (BIOS, or "
                                "`setpci -s <bdf> ECAP_ACS+0x6.w=0000`, NCCL troubleshooting guide)")
    return warnings

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


def kallsyms_exports(text: str, symbol: str = PEER_MEMORY_SYMBOL) -> str | None:
    """The module that exports ``symbol`` as a function in ``/proc/kallsyms`` text, or None.

    Lines read ``<address> <type> <name>\t[<module>]`` (addresses are zeros without
    CAP_SYSLOG). Only a text symbol (``T``/``t``) of exactly that name counts: MLNX_OFED /
    DOCA's ib_core exports ``ib_register_peer_memory_client``; amdgpu carries a data symbol
    ``pfn_ib_register_peer_memory_client`` that must not. NCCL itself reads no kallsyms: it trusts
    peer memory once /sys/module/nvidia_peermem/version (or memory_peers/nv_mem{,_nc}/version)
    exists (ibGdrSupportInitOnce, src/transport/net_ib); this check explains a load that would fail.
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
    if version_tuple(kernel) < DMABUF_MIN_KERNEL:
        missing.append(f"kernel {kernel} < 5.12")
    if module != "open":
        missing.append(f"NVIDIA kernel module is {module or 'unknown'}, not the open one")
    if version_tuple(driver) < DMABUF_MIN_DRIVER:
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
    # No RDMA device at all (node_facts found /sys/class/infiniband empty, as on
    # the H100 of tests/fixtures/device-h100): the GPU side may be ready, but
    # NCCL can only use sockets, so no GDRDMA channel can be expected.
    no_nic = "rdma" in facts and not facts["rdma"]

    def decide(mode: str, reason: str, load: bool = False) -> dict:
        expect = mode in ("dmabuf", "peermem") and not no_nic
        if mode in ("dmabuf", "peermem") and no_nic:
            reason += "; no RDMA device on this host, so NCCL uses sockets"
        return {"mode": mode, "load": load, "reason": reason, "expect_gdr": expect}

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
