#!/usr/bin/python
"""Ansible module: decide, from every node's node_facts, whether the cluster can be configured."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: preflight_check
short_description: Fail before any change when GPU/RDMA facts cannot carry the cluster
version_added: "0.1.0"
description:
  - Takes the C(servekit_node) facts of every node (from M(node_facts)) and what the inventory
    expects, and fails listing every problem, each naming the host and the fix, when an
    inventory HCA or netdev is missing (listing what is there), a link is down, the MTU differs
    from the wanted one or between nodes, a RoCE v2 GID is missing on the data netdev, the GPUs
    are fewer than tensor-parallel x pipeline-parallel needs, the driver is older than required,
    or the CUDA version differs between nodes, when a node's operating system is not Debian 12, Ubuntu
    22.04/24.04 or DGX OS 6/7 (from C(os) in its facts), or when an NVSwitch GPU's Fabric Manager state
    is not C(Completed).
  - Warns (C(warnings), and an Ansible warning each) where PCIe ACS is enabled on a bridge between a
    rail NIC (C(rdma_hcas)) and a GPU behind the same switch, on nodes that expect GPUDirect RDMA.
  - Pure decision logic (C(preflight_report) in C(module_utils/node_preflight.py)); changes
    nothing. Run it once, on the control node.
options:
  facts:
    description:
      - Mapping of host name to its C(servekit_node) facts, each with C(os) (Ansible's C(distribution),
        C(distribution_version), C(distribution_major_version), and C(dgx_release)) where checked.
    type: dict
    required: true
  expect:
    description: Mapping of host name to what the inventory expects of it (rdma_hca, rdma_hcas,
      rdma_netdev, mtu, min_driver, gpus_per_node, require_rdma).
    type: dict
    required: true
  world_size:
    description: tensor-parallel-size x pipeline-parallel-size of the selected model.
    type: int
    required: true
  require_gpus:
    description: Whether the cluster must have NVIDIA GPUs (false on the CPU lab).
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - servekit contributors
"""

EXAMPLES = r"""
- name: Check the cluster
  preflight_check:
    facts: "{{ dict(nodes | zip(nodes | map('extract', hostvars, 'servekit_node'))) }}"
    expect: "{{ __preflight_expect }}"
    world_size: 2
  vars:
    nodes: "{{ groups['head'] + groups['workers'] }}"
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
problems:
  description: Every problem found, each naming the host and the fix; empty when ready.
  returned: always
  type: list
  elements: str
warnings:
  description: What does not stop serving but slows GPUDirect RDMA (PCIe ACS on a NIC-GPU path), each also
    given as an Ansible warning.
  returned: always
  type: list
  elements: str
gid_index:
  description: Host name to the RoCE v2 GID index of its data netdev (null where none).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - documentation first
from ansible.module_utils.node_preflight import preflight_report  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "facts": {"type": "dict", "required": True},
            "expect": {"type": "dict", "required": True},
            "world_size": {"type": "int", "required": True},
            "require_gpus": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    report = preflight_report(p["facts"], p["expect"], p["world_size"], p["require_gpus"])
    for warning in report["warnings"]:
        module.warn(warning)
    if report["problems"]:
        module.fail_json(msg="preflight failed:\n- " + "\n- ".join(report["problems"]), **report)
    module.exit_json(changed=False, **report)


if __name__ == "__main__":
    main()
