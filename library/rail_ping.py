#!/usr/bin/python
"""Ansible module: ping every other node's rail i over this node's rail i (don't fragment)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rail_ping
short_description: Fail when an RDMA rail cannot reach the same rail of another node
version_added: "0.1.0"
description:
  - For every rail of this node (the HCAs of C(cluster_rdma_hca), in order), pings the same rail of every
    other node (its RoCE v2 IPv4 address) over this rail's own interface (C(ping -I <netdev> -M do)) with
    packets that fill the smaller MTU of the two ends.
  - NCCL pairs NICs rail by rail and may still cross rails (NCCL env docs, C(NCCL_CROSS_NIC)); two NICs
    without a path between them make it hang (NVIDIA/nccl#2345).
  - Fails naming the rail, both HCAs, the peer address, the packet size and ping's own error.
  - Only pings (read-only); runs the same in check mode. Logic in C(module_utils/rail_reach.py).
options:
  host:
    description: This node's inventory name (a key of O(hcas) and O(facts)).
    type: str
    required: true
  hcas:
    description: Node name to its C(cluster_rdma_hca) (C(mlx5_0,mlx5_1) or C(=mlx5_0:1,...)).
    type: dict
    required: true
  facts:
    description: Node name to its C(servekit_node) facts (M(node_facts)).
    type: dict
    required: true
  count:
    description: Packets per rail and peer.
    type: int
    default: 3
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
- name: Ping each rail's peers
  rail_ping:
    host: "{{ inventory_hostname }}"
    hcas: {h100-a: "mlx5_0,mlx5_3", h100-b: "mlx5_0,mlx5_3"}
    facts: "{{ dict(nodes | zip(nodes | map('extract', hostvars, 'servekit_node'))) }}"
"""

RETURN = r"""
pings:
  description: Each ping made (rail, hca, netdev, peer, peer_hca, address, mtu, payload) with its C(problem)
    (null when every packet came back).
  returned: always
  type: list
  elements: dict
problems:
  description: Every rail that does not reach its peer; empty when all do.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - documentation first
from ansible.module_utils.rail_reach import ping_argv, ping_problem, rail_pings  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "hcas": {"type": "dict", "required": True},
            "facts": {"type": "dict", "required": True},
            "count": {"type": "int", "default": 3},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        pings = rail_pings(p["host"], p["hcas"], p["facts"])
    except ValueError as err:
        module.fail_json(msg=str(err))
    ping = module.get_bin_path("ping", required=True)
    for item in pings:
        rc, out, err = module.run_command([ping, *ping_argv(item, p["count"])[1:]])
        item["problem"] = ping_problem(item, rc, out, err)
    problems = [f"{p['host']}: {item['problem']}" for item in pings if item["problem"]]
    if problems:
        module.fail_json(msg="rail reachability:\n- " + "\n- ".join(problems), pings=pings,
                         problems=problems, changed=False)
    module.exit_json(changed=False, pings=pings, problems=[])


if __name__ == "__main__":
    main()
