#!/usr/bin/python
"""Ansible module: judge an nccl-tests run (all_reduce_perf or all_gather_perf: bandwidth and transport)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nccl_gate
short_description: Gate an nccl-tests run on bus bandwidth and NCCL transport
version_added: "0.1.0"
description:
  - Parses the output of C(all_reduce_perf) or C(all_gather_perf) (O(collective)) run with
    C(NCCL_DEBUG=INFO) and fails when the peak out-of-place bus
    bandwidth is under O(min_busbw_gbs) or under O(min_share) of the link speed, when NCCL used the
    socket transport instead of NET/IB, or when GPUDirect RDMA was expected and a NET/IB channel
    lacks C(/GDRDMA) (C(GPU Direct RDMA enabled for HCA) alone does not count).
  - The link speed counts each HCA at the lower of its port rate and its PCIe link; where PCIe is
    the lower one (DGX Spark's Gen5 x4 halves report 200 Gb/s ports) the share is not applied and
    O(min_busbw_gbs) decides.
  - Returns the NCCL version the run loaded (its C(NCCL version 2.x.y+cudaZ) line), so the log
    says which NCCL was measured.
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
        when O(link_gbps) is not set (sum over the HCAs of the lower of the first port's rate
        and the HCA's PCIe link).
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
  min_busbw_gbs:
    description: Absolute floor for the peak bus bandwidth, GB/s (0 turns it off).
    type: float
    default: 0.0
  collective:
    description:
      - The nccl-tests collective that produced O(output); bus bandwidth is not comparable across
        collectives, so a floor applies to the one it was measured with.
    type: str
    choices: [all_reduce, all_gather]
    default: all_reduce
  expect_gdr:
    description:
      - Require GPUDirect RDMA (every NET/IB channel C(via NET/IB/<n>/GDRDMA)).
      - A net plugin's network (C(IBext_v8)) counts as IB; only C(Socket) is the fallback.
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
- name: Gate the all_reduce run
  nccl_gate:
    output: "{{ bench_run.stdout }}"
    link_gbps: 200
    min_busbw_gbs: 12
"""

RETURN = r"""
collective:
  description: The collective gated (O(collective)).
  returned: always
  type: str
nccl_version:
  description: NCCL's version line from the run (C(2.28.9+cuda13.0)); null when the output has none.
  returned: always
  type: str
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
pcie_limited:
  description: Whether an HCA's PCIe link is slower than its port rate (the share was not applied).
  returned: always
  type: bool
notes:
  description: Which floors applied, when not both.
  returned: always
  type: list
  elements: str
problems:
  description: Why the gate failed; empty when it passed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.node_nccl import nccl_gate  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "output": {"type": "str", "required": True},
            "link_gbps": {"type": "float"},
            "facts": {"type": "dict"},
            "hcas": {"type": "list", "elements": "str", "default": []},
            "min_share": {"type": "float", "default": 0.8},
            "min_busbw_gbs": {"type": "float", "default": 0.0},
            "expect_gdr": {"type": "bool", "default": True},
            "collective": {"type": "str", "default": "all_reduce", "choices": ["all_reduce", "all_gather"]},
        },
        supports_check_mode=True,
    )
    try:
        verdict = nccl_gate(**module.params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    if verdict["problems"]:
        module.fail_json(msg="; ".join(verdict["problems"]), changed=False, **verdict)
    module.exit_json(changed=False, **verdict)


if __name__ == "__main__":
    main()
