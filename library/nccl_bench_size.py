#!/usr/bin/python
"""Ansible module: the largest all_reduce_perf size that fits beside a running vLLM."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nccl_bench_size
short_description: Pick all_reduce_perf's largest size from every node's free GPU memory
version_added: "0.1.0"
description:
  - The bench stage runs nccl-tests beside the serving engine instead of stopping it. C(all_reduce_perf)
    allocates a send and a receive buffer of its largest size per GPU; this module caps that size so the
    pair takes at most O(share) of the least free memory on any node (free framebuffer from
    C(nvidia-smi); C(MemAvailable) on unified-memory GPUs such as GB10, which report none), as a power of two.
  - Pure decision logic (C(all_reduce_max_bytes) in C(module_utils/node_nccl.py)); changes nothing.
options:
  requested:
    description: Largest size asked for (nccl-tests syntax, e.g. C(8G)).
    type: str
    required: true
  facts:
    description: Node name to its C(servekit_node) facts.
    type: dict
    required: true
  share:
    description: Share of the free memory the buffer pair may take.
    type: float
    default: 0.25
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
- name: Size the all_reduce run
  nccl_bench_size:
    requested: 8G
    facts: "{{ dict(nodes | zip(nodes | map('extract', hostvars, 'servekit_node'))) }}"
  run_once: true
"""

RETURN = r"""
max_bytes:
  description: The largest size for C(all_reduce_perf -e), bytes.
  returned: always
  type: int
per_node:
  description: Node name to the size that node's free memory allows.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - documentation first
from ansible.module_utils.node_nccl import all_reduce_max_bytes, parse_size  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "requested": {"type": "str", "required": True},
            "facts": {"type": "dict", "required": True},
            "share": {"type": "float", "default": 0.25},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        parse_size(p["requested"])
    except ValueError as exc:
        module.fail_json(msg=f"bench_nccl_max_bytes: {exc}")
    if not 0 < p["share"] <= 1:
        module.fail_json(msg=f"share: {p['share']} is out of range; allowed: more than 0, at most 1")
    per_node = {}
    for node, node_facts in sorted(p["facts"].items()):
        facts = node_facts or {}
        per_node[node] = all_reduce_max_bytes(
            p["requested"], [g.get("memory_free_mib") for g in facts.get("gpus") or []],
            facts.get("mem_available_kib"), p["share"])
    max_bytes = min(per_node.values()) if per_node else parse_size(p["requested"])
    module.exit_json(changed=False, max_bytes=max_bytes, per_node=per_node)


if __name__ == "__main__":
    main()
