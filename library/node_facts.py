#!/usr/bin/python
"""Ansible module: GPU, RDMA, GPUDirect and locked-memory facts of one host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_facts
short_description: Gather GPU, RDMA, GPUDirect and locked-memory facts for preflight
version_added: "0.1.0"
description:
  - Reads C(nvidia-smi --query-gpu), C(nvidia-smi -q -x) and C(nvidia-smi topo -m) where
    C(nvidia-smi) exists; the RDMA devices, ports, link state, rate and GID table (with RoCE type
    and netdev) from C(/sys/class/infiniband); C(rdma link show) where iproute2's C(rdma) exists;
    the PCIe link of every HCA; the MTU of every netdev; whether C(nvidia_peermem) is loaded or
    available, which module exports C(ib_register_peer_memory_client) in C(/proc/kallsyms), and
    whether the NVIDIA kernel module is the open one (C(/proc/driver/nvidia/version)); the
    GPUs' addressing mode and free memory, C(MemAvailable), the machine architecture and short
    host name; the locked-memory limits of PID 1 and of this process.
  - Decides the GPUDirect RDMA path (C(gpudirect)) with C(gpudirect_decision) in
    C(module_utils/node_gpu.py); see C(roles/gpudirect/README.md).
  - Read-only; runs the same in check mode. Hosts without GPUs or RDMA NICs (the CPU lab)
    return empty lists, not errors.
  - Parsing is done by pure functions in C(module_utils/node_gpu.py), C(node_rdma.py) and
    C(node_preflight.py), tested on output recorded on real H100 hosts.
options:
  sysfs_root:
    description: Root of the sysfs tree to read (tests point it at a recorded tree).
    type: path
    default: /sys
  proc_root:
    description: Root of procfs.
    type: path
    default: /proc
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
author:
  - servekit contributors
"""

EXAMPLES = r"""
- name: Gather GPU and RDMA facts
  node_facts:

- name: Show the RoCE v2 GID index of the data netdev
  ansible.builtin.debug:
    var: servekit_node.rdma.roceP2p1s0f0.ports['1'].gids
"""

RETURN = r"""
ansible_facts:
  description: Facts under C(servekit_node).
  returned: always
  type: dict
  contains:
    servekit_node:
      description: gpus (with addressing_mode, fabric_state, fabric_status, memory_free_mib),
        driver_version, cuda_version, pci_chains (GPU and HCA -> PCIe bridges), acs_ctl (bridge ->
        ACSCtl flags from lspci, null without lspci),
        nvidia_kernel_module, unified_memory, topology, rdma (per HCA, per port, pcie_gbps),
        rdma_links, netdevs (mtu, operstate), peermem_loaded, peermem_available,
        peer_memory_exporter, nv_mem_peer, kernel, machine, multiarch, hostname,
        mem_available_kib, memlock (pid1 and self), gpudirect (mode, load, expect_gdr, reason),
        dgx_release (/etc/dgx-release's DGX_* values; null where the file is absent).
      type: dict
      returned: always
"""

import glob  # noqa: E402 - Ansible modules put documentation first
import os  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.node_gpu import (  # noqa: E402
    GPU_QUERY,
    PEER_MEMORY_SYMBOL,
    gpudirect_decision,
    kallsyms_exports,
    parse_gpu_query,
    parse_lspci_acs,
    parse_nvidia_driver_file,
    parse_nvidia_smi_xml,
    parse_topo_matrix,
    pci_chain,
    sysfs_bdf,
    unified_memory,
)
from ansible.module_utils.node_preflight import (  # noqa: E402
    debian_multiarch,
    parse_dgx_release,
    parse_meminfo_kib,
    parse_proc_limits,
)
from ansible.module_utils.node_rdma import (  # noqa: E402
    parse_pcie_link_gbps,
    parse_rdma_link,
    parse_sysfs_port,
    read_sysfs,
    sysfs_port_files,
)


def _run(module: AnsibleModule, argv: list[str]) -> str | None:
    if not module.get_bin_path(argv[0]):
        return None
    rc, out, _ = module.run_command(argv)
    return out if rc == 0 else None


def gather_gpus(module: AnsibleModule) -> dict:
    facts: dict = {"gpus": [], "driver_version": None, "cuda_version": None, "topology": None}
    query = _run(module, GPU_QUERY)
    if query is None:
        return facts
    facts["gpus"] = parse_gpu_query(query)
    free = _run(module, ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"])
    for gpu, value in zip(facts["gpus"], (free or "").splitlines(), strict=False):
        gpu["memory_free_mib"] = int(value.strip()) if value.strip().isdigit() else None
    xml = _run(module, ["nvidia-smi", "-q", "-x"])
    if xml:
        parsed = parse_nvidia_smi_xml(xml)
        facts["driver_version"] = parsed["driver_version"]
        facts["cuda_version"] = parsed["cuda_version"]
        if len(parsed["gpus"]) == len(facts["gpus"]):
            for gpu, detail in zip(facts["gpus"], parsed["gpus"], strict=True):
                for key in ("addressing_mode", "fabric_state", "fabric_status"):
                    gpu[key] = detail[key]
    elif facts["gpus"]:
        facts["driver_version"] = facts["gpus"][0]["driver_version"]
    topo = _run(module, ["nvidia-smi", "topo", "-m"])
    if topo:
        facts["topology"] = parse_topo_matrix(topo)
    return facts


def gather_pci(module: AnsibleModule, sysfs: str, gpus: list[dict], hcas: list[str]) -> dict:
    """Each GPU's and HCA's PCIe bridges, and every bridge's ACS control (lspci -D -vvv)."""
    chains = {}
    for gpu in gpus:
        if gpu.get("pci_bus_id"):
            path = os.path.join(sysfs, "bus/pci/devices", sysfs_bdf(gpu["pci_bus_id"]))
            chains[f"GPU{gpu['index']}"] = pci_chain(os.path.realpath(path))
    for hca in hcas:
        chains[hca] = pci_chain(os.path.realpath(os.path.join(sysfs, "class/infiniband", hca, "device")))
    lspci = _run(module, ["lspci", "-D", "-vvv"])
    return {"pci_chains": chains, "acs_ctl": parse_lspci_acs(lspci) if lspci is not None else None}


def gather_rdma(sysfs: str) -> dict:
    hcas = {}
    for hca_dir in sorted(glob.glob(os.path.join(sysfs, "class/infiniband/*"))):
        ports = {}
        for port_dir in sorted(glob.glob(os.path.join(hca_dir, "ports/*"))):
            ports[os.path.basename(port_dir)] = parse_sysfs_port(sysfs_port_files(port_dir))
        hcas[os.path.basename(hca_dir)] = {
            "ports": ports,
            "pcie_gbps": parse_pcie_link_gbps(read_sysfs(os.path.join(hca_dir, "device/current_link_speed")),
                                              read_sysfs(os.path.join(hca_dir, "device/current_link_width"))),
        }
    return hcas


def gather_netdevs(sysfs: str) -> dict:
    netdevs = {}
    for dev_dir in sorted(glob.glob(os.path.join(sysfs, "class/net/*"))):
        mtu = read_sysfs(os.path.join(dev_dir, "mtu")).strip()
        netdevs[os.path.basename(dev_dir)] = {
            "mtu": int(mtu) if mtu.isdigit() else None,
            "operstate": read_sysfs(os.path.join(dev_dir, "operstate")).strip() or None,
        }
    return netdevs


def peer_memory_exporter(proc: str) -> str | None:
    """The module exporting the peer-memory API, from the lines of /proc/kallsyms naming it."""
    try:
        with open(os.path.join(proc, "kallsyms"), encoding="utf-8", errors="replace") as handle:
            return kallsyms_exports("".join(ln for ln in handle if PEER_MEMORY_SYMBOL in ln))
    except OSError:
        return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "sysfs_root": {"type": "path", "default": "/sys"},
            "proc_root": {"type": "path", "default": "/proc"},
        },
        supports_check_mode=True,
    )
    sysfs, proc = module.params["sysfs_root"], module.params["proc_root"]
    facts = gather_gpus(module)
    facts["rdma"] = gather_rdma(sysfs)
    links = _run(module, ["rdma", "link", "show"])
    facts["rdma_links"] = parse_rdma_link(links) if links else []
    facts.update(gather_pci(module, sysfs, facts["gpus"], sorted(facts["rdma"])))
    facts["netdevs"] = gather_netdevs(sysfs)
    facts["peermem_loaded"] = os.path.isdir(os.path.join(sysfs, "module/nvidia_peermem"))
    facts["nv_mem_peer"] = os.path.isdir(os.path.join(sysfs, "kernel/mm/memory_peers/nv_mem"))
    modinfo = module.get_bin_path("modinfo")
    facts["peermem_available"] = bool(
        modinfo and module.run_command([modinfo, "-n", "nvidia_peermem"])[0] == 0)
    facts["peer_memory_exporter"] = peer_memory_exporter(proc)
    facts["nvidia_kernel_module"] = parse_nvidia_driver_file(
        read_sysfs(os.path.join(proc, "driver/nvidia/version")))["kernel_module"]
    facts["kernel"] = platform.release()
    facts["machine"] = platform.machine()
    try:
        facts["multiarch"] = debian_multiarch(facts["machine"])
    except ValueError:
        facts["multiarch"] = None
    # DGX OS (Ubuntu's os-release, so Ansible says Ubuntu) is told apart by this file
    dgx_release = read_sysfs("/etc/dgx-release")
    facts["dgx_release"] = parse_dgx_release(dgx_release) if dgx_release else None
    # NCCL prints gethostname() up to the first '.' in its log prefix
    facts["hostname"] = socket.gethostname().split(".")[0]
    facts["mem_available_kib"] = parse_meminfo_kib(read_sysfs(os.path.join(proc, "meminfo")))
    facts["unified_memory"] = unified_memory(facts)
    facts["memlock"] = {
        "pid1": parse_proc_limits(read_sysfs(os.path.join(proc, "1/limits"))).get("Max locked memory"),
        "self": parse_proc_limits(read_sysfs(os.path.join(proc, "self/limits"))).get("Max locked memory"),
    }
    facts["gpudirect"] = gpudirect_decision(facts)
    module.exit_json(changed=False, ansible_facts={"servekit_node": facts})


if __name__ == "__main__":
    main()
