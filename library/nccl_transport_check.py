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
  - Pure decision logic (C(engine_transport_problems) in C(module_utils/node_nccl.py)); changes nothing.
options:
  logs:
    description: Node name to the NCCL lines of its vLLM unit's current run.
    type: dict
    required: true
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
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "logs": {"type": "dict", "required": True},
            "expect_gdr": {"type": "dict", "default": {}},
            "rdma_enabled": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    logs = {str(k): str(v or "") for k, v in module.params["logs"].items()}
    expect = {str(k): module.boolean(v) for k, v in module.params["expect_gdr"].items()}
    problems = engine_transport_problems(logs, expect, module.params["rdma_enabled"])
    channels = {node: len(parse_nccl_channels(text)) for node, text in logs.items()}
    if problems:
        module.fail_json(msg="NCCL transport of the serving engine:\n- " + "\n- ".join(problems),
                         problems=problems, channels=channels, changed=False)
    module.exit_json(changed=False, problems=[], channels=channels)


if __name__ == "__main__":
    main()
