#!/usr/bin/python
"""Ansible module: every RDMA rail of this node (HCA, netdev, RoCE v2 IPv4 GID, MTU, DSCP/PFC)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rdma_rails
short_description: Find the netdev of every HCA in NCCL_IB_HCA and check each RoCE rail
version_added: "0.2.0"
description:
  - For every device of I(hca) (NCCL_IB_HCA syntax), reads C(/sys/class/infiniband/<hca>) -
    whether it exists, its netdev (C(device/net/*)) unless I(netdevs) names it, its ports' state
    and GID table - and fails, listing every problem, when a device is missing, its netdev is
    unknown or ambiguous, a port is down, or no port has a RoCE v2 GID with an IPv4-mapped
    address (the one NCCL >= 2.21 selects when C(NCCL_IB_GID_INDEX) is unset).
  - With I(verify), also checks each rail's netdev MTU, and with I(verify.dscp) DSCP trust and
    PFC through iproute2's C(dcb) (and C(mlnx_qos -i) where mlnx-tools is installed).
  - Read-only; runs the same in check mode. Parsing lives in C(module_utils/rdma_rails.py).
options:
  hca:
    description: The HCAs, as C(cluster_rdma_hca) (C(mlx5_0,mlx5_1:1); a leading C(=) is accepted).
    type: str
    required: true
  netdevs:
    description: HCA name to netdev, for HCAs whose netdev is not to be discovered.
    type: dict
    default: {}
  sysfs_root:
    description: Root of the sysfs tree to read (tests point it at a recorded tree).
    type: path
    default: /sys
  require_ipv4_gid:
    description: Fail when a port has no RoCE v2 IPv4 GID (false where NCCL_IB_GID_INDEX is pinned).
    type: bool
    default: true
  verify:
    description: What the RoCE unit should have set; C(mtu) (null skips it), C(dscp) and
      C(pfc_priority) (null skips DSCP trust and PFC).
    type: dict
author:
  - servekit contributors
"""

EXAMPLES = r"""
- name: Find the rails and check their GIDs
  rdma_rails:
    hca: rocep1s0f0,roceP2p1s0f0
  register: rails

- name: Check MTU, DSCP trust and PFC after servekit-rdma.service ran
  rdma_rails:
    hca: mlx5_0,mlx5_3
    verify: {mtu: 9000, dscp: 26, pfc_priority: 3}
"""

RETURN = r"""
rails:
  description: One entry per HCA - hca, port (null for every port), present, netdev,
    netdevs_found, ports (state, link_layer, rate_gbps, gids, roce_v2_ipv4_gids), and with
    verify, mtu and qos (pfc, dscp_map, mlnx).
  returned: always
  type: list
  elements: dict
problems:
  description: Every problem found, each naming the HCA or netdev and the fix; empty when ready.
  returned: always
  type: list
  elements: str
"""

import glob  # noqa: E402 - Ansible modules put documentation first
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.node_rdma import read_sysfs, sysfs_port_files  # noqa: E402
from ansible.module_utils.rdma_rails import (  # noqa: E402
    mtu_problem,
    parse_dcb_app_dscp,
    parse_dcb_pfc,
    parse_hca_list,
    parse_mlnx_qos,
    qos_problems,
    rail_from_sysfs,
    rail_problems,
)


def gather_rail(sysfs: str, hca: str, port: int | None, override: str | None) -> dict:
    hca_dir = os.path.join(sysfs, "class", "infiniband", hca)
    if not os.path.isdir(hca_dir):
        return rail_from_sysfs(hca, port, {}, [], override, present=False)
    net_dir = os.path.join(hca_dir, "device", "net")
    discovered = sorted(os.listdir(net_dir)) if os.path.isdir(net_dir) else []
    ports = {os.path.basename(p): sysfs_port_files(p) for p in glob.glob(os.path.join(hca_dir, "ports", "*"))}
    return rail_from_sysfs(hca, port, ports, discovered, override)


def _run(module: AnsibleModule, argv: list[str]) -> str:
    rc, out, err = module.run_command(argv)
    return out if rc == 0 else f"# {' '.join(argv)} failed (rc {rc}): {err.strip()}"


def verify_rail(module: AnsibleModule, sysfs: str, rail: dict, want: dict) -> list[str]:
    netdev = rail["netdev"]
    problems = []
    mtu_text = read_sysfs(os.path.join(sysfs, "class", "net", netdev, "mtu")).strip()
    rail["mtu"] = int(mtu_text) if mtu_text.isdigit() else None
    if want.get("mtu") is not None:
        problem = mtu_problem(netdev, rail["mtu"], int(want["mtu"]))
        problems += [problem] if problem else []
    if want.get("dscp") is None or want.get("pfc_priority") is None:
        return problems
    dcb = module.get_bin_path("dcb")
    if not dcb:
        return [*problems, f"{netdev}: iproute2's dcb is not installed (Debian/Ubuntu package iproute2 "
                           ">= 5.11); it sets DSCP trust and PFC"]
    pfc = parse_dcb_pfc(_run(module, [dcb, "pfc", "show", "dev", netdev, "prio-pfc"]))
    dscp_map = parse_dcb_app_dscp(_run(module, [dcb, "-N", "app", "show", "dev", netdev, "dscp-prio"]))
    mlnx_qos = module.get_bin_path("mlnx_qos")
    mlnx = parse_mlnx_qos(_run(module, [mlnx_qos, "-i", netdev])) if mlnx_qos else None
    rail["qos"] = {"pfc": pfc, "dscp_map": dscp_map, "mlnx": mlnx}
    return problems + qos_problems(netdev, int(want["dscp"]), int(want["pfc_priority"]), pfc, dscp_map,
                                   mlnx=mlnx)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "hca": {"type": "str", "required": True},
            "netdevs": {"type": "dict", "default": {}},
            "sysfs_root": {"type": "path", "default": "/sys"},
            "require_ipv4_gid": {"type": "bool", "default": True},
            "verify": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    try:
        wanted = parse_hca_list(module.params["hca"])
    except ValueError as err:
        module.fail_json(msg=str(err))
    sysfs, overrides = module.params["sysfs_root"], module.params["netdevs"] or {}
    unknown = sorted(set(overrides) - {hca for hca, _ in wanted})
    present = sorted(os.listdir(os.path.join(sysfs, "class", "infiniband"))) \
        if os.path.isdir(os.path.join(sysfs, "class", "infiniband")) else []
    rails, problems = [], []
    if unknown:
        problems.append(f"rdma_netdevs names {', '.join(unknown)}, which cluster_rdma_hca does not list")
    for hca, port in wanted:
        rail = gather_rail(sysfs, hca, port, overrides.get(hca))
        found = rail_problems(rail, present)
        if not module.params["require_ipv4_gid"]:
            found = [p for p in found if "no RoCE v2 GID" not in p]
        if module.params["verify"] and rail["netdev"]:
            found += verify_rail(module, sysfs, rail, module.params["verify"])
        rails.append(rail)
        problems += found
    if problems:
        module.fail_json(msg="RDMA rails:\n- " + "\n- ".join(problems), rails=rails, problems=problems)
    module.exit_json(changed=False, rails=rails, problems=[])


if __name__ == "__main__":
    main()
