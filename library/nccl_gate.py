#!/usr/bin/python
"""Ansible module: judge an nccl-tests all_reduce_perf run (bandwidth and transport)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nccl_gate
short_description: Gate an nccl-tests all_reduce_perf run on bus bandwidth and NCCL transport
version_added: "0.1.0"
description:
  - Parses the output of C(all_reduce_perf) run with C(NCCL_DEBUG=INFO) and fails when the peak bus
    bandwidth is under O(min_share) of the link speed, when NCCL used the socket transport instead of
    NET/IB, or when GPUDirect RDMA was expected and not used.
  - Changes nothing; supports check mode.
options:
  output:
    description: stdout (and stderr) of the run.
    type: str
    required: true
  link_gbps:
    description: Link speed of the data HCA port in Gb/s (sysfs C(rate)); null when unknown.
    type: float
  facts:
    description:
      - The node's C(servekit_node) facts (from M(node_facts)); with O(hcas), gives the link speed
        when O(link_gbps) is not set (sum of the first port's rate of each HCA).
    type: dict
  hcas:
    description: The HCAs NCCL uses (C(NCCL_IB_HCA) names; a C(:port) suffix is ignored).
    type: list
    elements: str
    default: []
  min_share:
    description: Share of the link speed the peak bus bandwidth must reach.
    type: float
    default: 0.8
  expect_gdr:
    description: Require GPUDirect RDMA (GDRDMA channels or an enabled HCA in the log).
    type: bool
    default: true
author:
  - servekit contributors
"""

EXAMPLES = r"""
- name: Gate the all_reduce run
  nccl_gate:
    output: "{{ bench_run.stdout }}"
    link_gbps: 200
"""

RETURN = r"""
peak_busbw_gbs:
  description: Highest out-of-place bus bandwidth over the sizes, GB/s.
  returned: always
  type: float
avg_busbw_gbs:
  description: The run's own "Avg bus bandwidth" line, GB/s.
  returned: always
  type: float
transport:
  description: What the NCCL log says about the network transport and GPUDirect.
  returned: always
  type: dict
problems:
  description: Why the gate failed; empty when it passed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.node_facts import data_port, nccl_bench_verdict  # noqa: E402


def link_speed(facts: dict | None, hcas: list[str]) -> float | None:
    """Sum of the data ports' rates (Gb/s) of ``hcas``; None when any is unknown."""
    if not facts or not hcas:
        return None
    total = 0.0
    for hca in hcas:
        port = data_port(facts, hca.split(":")[0].strip())
        if not port or not port.get("rate_gbps"):
            return None
        total += port["rate_gbps"]
    return total


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "output": {"type": "str", "required": True},
            "link_gbps": {"type": "float"},
            "facts": {"type": "dict"},
            "hcas": {"type": "list", "elements": "str", "default": []},
            "min_share": {"type": "float", "default": 0.8},
            "expect_gdr": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    if not 0 < p["min_share"] <= 1:
        module.fail_json(msg=f"min_share: {p['min_share']} is out of range; allowed: more than 0, at most 1")
    link = p["link_gbps"] if p["link_gbps"] is not None else link_speed(p["facts"], p["hcas"])
    verdict = nccl_bench_verdict(p["output"], link, p["min_share"], p["expect_gdr"])
    if verdict["problems"]:
        module.fail_json(msg="; ".join(verdict["problems"]), changed=False, **verdict)
    module.exit_json(changed=False, **verdict)


if __name__ == "__main__":
    main()
