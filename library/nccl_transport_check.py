#!/usr/bin/python
"""Ansible module: judge the serving engine's own NCCL transport from its ranks' log lines."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nccl_transport_check
short_description: Fail when vLLM's ranks use NCCL sockets across nodes, or lack GPUDirect where expected
version_added: "0.1.0"
description:
  - Reads the C(NCCL INFO Channel .. via ..) lines the serving engine's ranks printed (NCCL_DEBUG=INFO,
    NCCL_DEBUG_SUBSYS=INIT,NET), as collected from each node's vLLM unit journal; with Ray's executor the
    head's journal also carries the workers' ranks, which Ray forwards behind C((RayWorkerWrapper pid=..)).
  - Fails, naming the rank's host, the node whose journal holds it and the line, when a cross-node channel
    goes over C(NET/Socket) on a cluster with RDMA enabled, when NCCL says C(Using network Socket), when a
    C(NET/IB) channel lacks C(/GDRDMA) on a host whose GPUDirect decision expects it, or when no channel line
    is found at all.
  - Fails too when fewer NCCL hosts show channel lines than the model spans (C(nodes_used)), or when Ray
    folded ranks' lines into C([repeated Nx across cluster]) (Ray's log deduplication), as those ranks were
    not judged.
  - Without O(logs) it only plans (C(transport_check_plan)) whether the check runs (RDMA enabled, the model
    spans more than one node) and whose journal holds the ranks' lines (the head's under the Ray executor),
    with the reason either way.
  - Pure decision logic (C(engine_transport_problems), C(transport_check_plan) in
    C(module_utils/node_nccl.py)); changes nothing.
options:
  logs:
    description:
      - Node name to the NCCL lines of its vLLM unit's current run.
      - Omitted, the module returns the plan only (O(nodes_used) and O(active) required).
    type: dict
  executor:
    description: vLLM's distributed executor (C(cluster_executor)).
    type: str
    choices: [mp, ray]
    default: mp
  nodes_used:
    description:
      - How many nodes the model spans (the launch plan's C(nodes_used)). Set, the check runs only when it
        is more than 1, and that many NCCL hosts must show channel lines.
    type: int
  active:
    description: Node name to whether it runs a vLLM unit (the launch plan's C(active)).
    type: dict
  expect_gdr:
    description:
      - NCCL host name (short, as in the line prefix) to whether that host must show GDRDMA channels
        (C(servekit_node.gpudirect.expect_gdr)); a host not listed expects GDR only if every listed one does.
    type: dict
    default: {}
  rdma_enabled:
    description: Whether the cluster has RDMA enabled (a socket channel is then a failure).
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
- name: Check the engine's NCCL transport
  nccl_transport_check:
    logs: {spark-01: "{{ journal_of_spark01 }}", spark-02: "{{ journal_of_spark02 }}"}
    expect_gdr: {spark-01: false, spark-02: false}
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
plan:
  description: C(run), C(read) (the nodes whose journal to read), C(min_hosts) and C(reason).
  returned: when nodes_used is set
  type: dict
checked:
  description: Whether the logs were judged (false when the plan skips the check; C(msg) says why).
  returned: always
  type: bool
channels:
  description: Number of connected channel lines found, per node journal.
  returned: always
  type: dict
problems:
  description: Every problem, each naming the host and the line; empty when the transport is right.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - documentation first
from ansible.module_utils.node_nccl import (  # noqa: E402
    engine_transport_problems,
    parse_nccl_channels,
    transport_check_plan,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "logs": {"type": "dict"},
            "expect_gdr": {"type": "dict", "default": {}},
            "rdma_enabled": {"type": "bool", "default": True},
            "executor": {"type": "str", "choices": ["mp", "ray"], "default": "mp"},
            "nodes_used": {"type": "int"},
            "active": {"type": "dict"},
        },
        required_by={"nodes_used": ("active",)},
        required_one_of=[("logs", "nodes_used")],
        supports_check_mode=True,
    )
    params = module.params
    plan = None
    if params["nodes_used"] is not None:
        plan = transport_check_plan(
            rdma_enabled=params["rdma_enabled"], executor=params["executor"],
            nodes_used=params["nodes_used"],
            active={str(k): module.boolean(v) for k, v in params["active"].items()})
        if params["logs"] is None or not plan["run"]:
            module.exit_json(changed=False, checked=False, plan=plan, channels={},
                             problems=[], msg=plan["reason"])
    logs = {str(k): str(v or "") for k, v in params["logs"].items()}
    if plan:
        logs = {node: text for node, text in logs.items() if node in plan["read"]}
    expect = {str(k): module.boolean(v) for k, v in params["expect_gdr"].items()}
    problems = engine_transport_problems(logs, expect, params["rdma_enabled"],
                                         min_hosts=plan["min_hosts"] if plan else 0)
    channels = {node: len(parse_nccl_channels(text)) for node, text in logs.items()}
    result = {"changed": False, "checked": True, "channels": channels, "plan": plan}
    if problems:
        module.fail_json(msg="NCCL transport of the serving engine:\n- " + "\n- ".join(problems),
                         problems=problems, **result)
    module.exit_json(problems=[], msg=plan["reason"] if plan else "", **result)


if __name__ == "__main__":
    main()
