"""Preflight: host limits and memory, and what stops a host or the cluster from serving.

Pure functions shared by the ``node_facts`` and ``preflight_check`` modules
(``ansible.module_utils.node_preflight``) and the tests
(``servekit.module_utils.node_preflight``). Standard library only.

Formats parsed: ``/proc/<pid>/limits``, ``/proc/meminfo``, ``/etc/dgx-release``, and Ansible's
distribution facts.
"""

from __future__ import annotations

import re

try:  # inside an Ansible module payload
    from ansible.module_utils.node_gpu import acs_warnings, fabric_problem, version_tuple
except ImportError:  # imported as servekit.module_utils.node_preflight
    from .node_gpu import acs_warnings, fabric_problem, version_tuple  # type: ignore[no-redef]
try:  # inside an Ansible module payload
    from ansible.module_utils.node_rdma import data_port, roce_v2_gid_index
except ImportError:  # imported as servekit.module_utils.node_preflight
    from .node_rdma import data_port, roce_v2_gid_index  # type: ignore[no-redef]

UNLIMITED = "unlimited"


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



# The node operating systems servekit is tested for. DGX OS keeps Ubuntu's /etc/os-release, so
# Ansible's distribution facts call it Ubuntu (DGX OS 6 is built on Ubuntu 22.04, DGX OS 7 on
# 24.04: NVIDIA DGX OS 6 and 7 user guides); /etc/dgx-release, from the `dgx-release` package
# (DGX OS 7 user guide, "DGX Software Stack"), tells it apart: DGX_SWBUILD_VERSION as installed,
# then one DGX_OTA_VERSION appended per over-the-air upgrade (the last is current).
SUPPORTED_OS = ("Debian 12", "Ubuntu 22.04", "Ubuntu 24.04", "DGX OS 6", "DGX OS 7")
DGX_OS_UBUNTU = {"6": "22.04", "7": "24.04"}


def parse_dgx_release(text: str) -> dict[str, str]:
    """``/etc/dgx-release`` (``KEY="value"`` lines; a later key replaces an earlier one)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("DGX_"):
            values[key] = value.strip().strip('"')
    return values


def node_os(facts: dict) -> tuple[str, bool]:
    """The node's OS by name and whether servekit supports it.

    ``facts``: Ansible's ``distribution``, ``distribution_version`` and
    ``distribution_major_version``, and ``dgx_release`` (``parse_dgx_release``, or None).
    """
    name = facts.get("distribution") or "unknown"
    version = facts.get("distribution_version") or ""
    dgx = facts.get("dgx_release") or {}
    if name == "Debian" and facts.get("distribution_major_version") == "12":
        return f"Debian 12 ({version})", True
    if name == "Ubuntu" and version in DGX_OS_UBUNTU.values():
        if not dgx:
            return f"Ubuntu {version}", True
        dgx_version = dgx.get("DGX_OTA_VERSION") or dgx.get("DGX_SWBUILD_VERSION") or "?"
        major = dgx_version.split(".")[0]
        return f"DGX OS {dgx_version} (Ubuntu {version})", DGX_OS_UBUNTU.get(major) == version
    return f"{name} {version}".strip(), False


def os_problem(host: str, facts: dict) -> str | None:
    """Why ``host``'s operating system is refused; None when it is supported."""
    name, supported = node_os(facts)
    if supported:
        return None
    return (f"{host}: the node runs {name}, which servekit does not support; supported: "
            f"{', '.join(SUPPORTED_OS)} (the roles and their package names are tested on these only)")


def _platform_problems(host: str, facts: dict) -> list[str]:
    """The node's OS (where its facts were gathered) and its GPUs' Fabric Manager state."""
    problems = []
    if facts.get("os") is not None:
        problems.append(os_problem(host, facts["os"]))
    for gpu in facts.get("gpus") or []:
        fabric = fabric_problem(gpu)
        if fabric:
            problems.append(f"{host}: GPU {gpu.get('index')} ({gpu.get('pci_bus_id')}) {fabric}")
    return [p for p in problems if p]


def host_problems(host: str, facts: dict, want: dict) -> list[str]:
    """What stops ``host`` from joining an RDMA GPU cluster; each names the fix.

    ``want``: ``rdma_hca``, ``rdma_netdev``, ``mtu``, ``min_driver``,
    ``gpus_per_node``, ``require_rdma`` (False skips the RDMA checks).
    """
    problems = _platform_problems(host, facts)
    gpus = facts.get("gpus") or []
    if len(gpus) < want.get("gpus_per_node", 0):
        problems.append(f"{host}: {len(gpus)} GPU(s) visible, inventory says "
                        f"cluster_devices_per_node={want['gpus_per_node']}; check `nvidia-smi -L` "
                        "and the driver")
    driver = facts.get("driver_version")
    if want.get("min_driver") and gpus and version_tuple(driver) < version_tuple(want["min_driver"]):
        problems.append(f"{host}: NVIDIA driver {driver} is older than required "
                        f"{want['min_driver']} (preflight_min_driver_version); upgrade the driver")
    if not want.get("require_rdma", True):
        return problems
    hcas = facts.get("rdma") or {}
    hca, netdev = want.get("rdma_hca"), want.get("rdma_netdev")
    if hca not in hcas:
        problems.append(f"{host}: RDMA device cluster_rdma_hca={hca!r} not present; present: "
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
        problems.append(f"{host}: netdev cluster_rdma_netdev={netdev!r} not found for {hca}; "
                        f"its netdevs: {', '.join(ndevs) or 'none'}")
    elif roce_v2_gid_index(port, netdev) is None:
        problems.append(f"{host}: no RoCE v2 GID on {netdev} ({hca}); give {netdev} an IP "
                        "address on the data subnet and check `rdma link` / cma_roce_mode")
    mtu = (facts.get("netdevs") or {}).get(netdev, {}).get("mtu")
    if want.get("mtu") and mtu is not None and mtu != want["mtu"]:
        problems.append(f"{host}: {netdev} MTU is {mtu}, want {want['mtu']} (network stage "
                        "sets it; the switch ports must allow it too)")
    return problems



def host_warnings(host: str, facts: dict, want: dict) -> list[str]:
    """What slows ``host`` down without stopping it: PCIe ACS between a rail NIC and a GPU
    where GPUDirect RDMA is expected (``want['rdma_hcas']``: the rails' HCAs)."""
    if not want.get("require_rdma", True) or not (facts.get("gpudirect") or {}).get("expect_gdr"):
        return []
    if facts.get("acs_ctl") is None:
        return [f"{host}: no lspci (pciutils) here: PCIe ACS between the rail NICs and the GPUs "
                "was not checked"]
    nics = list(want.get("rdma_hcas") or [want.get("rdma_hca")])
    return [f"{host}: {w}" for w in acs_warnings(facts.get("pci_chains") or {}, facts["acs_ctl"], nics)]

def cluster_problems(facts_by_host: dict[str, dict], world_size: int, *,
                     check_mtu: bool = False) -> list[str]:
    """Cross-host checks: GPU total, CUDA agreement and, with ``check_mtu``, MTU agreement.

    Preflight runs before the network stage, which sets every data netdev's
    MTU (``cluster_mtu``): nodes whose MTUs differ now are what that stage is
    for. Only where the inventory says the MTU must already be right
    (``preflight_mtu``) does a difference fail (hardware review, gpu-roce.md P3).
    """
    problems = []
    total = sum(len(f.get("gpus") or []) for f in facts_by_host.values())
    if total < world_size:
        problems.append(f"cluster: {total} GPU(s) across {len(facts_by_host)} node(s), the model "
                        f"needs tensor-parallel-size x pipeline-parallel-size = {world_size}")
    agree = [("CUDA version", "cuda_version")] + ([("data netdev MTU", "data_mtu")] if check_mtu else [])
    for label, key in agree:
        values = {h: f.get(key) for h, f in facts_by_host.items() if f.get(key) is not None}
        if len(set(values.values())) > 1:
            problems.append(f"cluster: {label} differs between nodes: "
                            + ", ".join(f"{h}={v}" for h, v in sorted(values.items())))
    return problems


def preflight_report(facts: dict[str, dict], expect: dict[str, dict], world_size: int,
                     require_gpus: bool = True) -> dict:
    """Every host's and the cluster's problems, and each host's RoCE v2 GID index.

    ``facts``: host -> its ``servekit_node`` facts; ``expect``: host -> what the inventory
    wants of it (``host_problems``' ``want``). Without ``require_gpus`` (the CPU lab) the
    GPU count, driver and world-size checks are off.
    """
    problems: list[str] = []
    warnings: list[str] = []
    gid_index: dict[str, int | None] = {}
    data_mtu: dict[str, int | None] = {}
    for host in sorted(facts):
        want = expect.get(host, {})
        if not require_gpus:
            want = dict(want, gpus_per_node=0, min_driver=None)
        problems += host_problems(host, facts[host], want)
        warnings += host_warnings(host, facts[host], want)
        netdev = want.get("rdma_netdev")
        port = data_port(facts[host], want.get("rdma_hca"))
        gid_index[host] = roce_v2_gid_index(port, netdev) if port and netdev else None
        data_mtu[host] = (facts[host].get("netdevs") or {}).get(netdev, {}).get("mtu")
    with_mtu = {h: dict(f, data_mtu=data_mtu[h]) for h, f in facts.items()}
    problems += cluster_problems(with_mtu, world_size if require_gpus else 0,
                                 check_mtu=any(want.get("mtu") for want in expect.values()))
    return {"problems": problems, "warnings": warnings, "gid_index": gid_index}
