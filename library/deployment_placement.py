#!/usr/bin/python
"""Ansible module: check cluster_deployments and place every replica on nodes and devices."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deployment_placement
short_description: Check cluster_deployments and place every replica on nodes and devices
version_added: "0.1.0"
description:
  - Runs on the control node in the validate stage, before any host is touched. Checks every
    deployment (C(name), C(model), C(replicas), C(nodes)) against the model registry and the
    inventory's hosts, then places each replica (module_utils/placement.py). Fails with every
    input problem at once, each naming its field, or with the first replica that does not fit,
    naming the deployment, the devices it needs and what is free.
  - Refuses MODEL_NAME together with deployments (O(model_name)).
  - Returns RV(not_served), what the serving side does not run (a replica across nodes beside
    other engines without the Ray executor), for the
    validate role to refuse after every other rule; this module itself does not fail on it.
  - When the set runs as replica engines (more than one engine, or one served under another name
    than its registry entry), RV(replica_engines) lists one engine per replica with its node (the
    first of a spanning replica's), nodes, devices, port and unit (the vllm role runs them behind
    the head's router).
  - With no deployments it checks nothing and returns an empty placement.
options:
  deployments:
    description: The inventory's C(cluster_deployments), as given.
    type: raw
    required: true
  registry_path:
    description: The model registry YAML on the control node (C(cluster_registry_path)).
    type: path
    required: true
  nodes:
    description: Every host of C(head) and C(workers), head first (C(cluster_nodes)).
    type: list
    elements: str
    required: true
  devices:
    description: Each host's device count (C(cluster_devices_per_node) of that host).
    type: dict
    required: true
  model_name:
    description: The MODEL_NAME environment variable of the run (empty when unset).
    type: str
    default: ""
  executor:
    description: C(cluster_executor); a replica across nodes beside other engines needs C(ray).
    type: str
    default: ray
  port_base:
    description: A replica engine's port is this plus its first device index on its node.
    type: int
    default: 8100
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
  - servekit
"""

EXAMPLES = r"""
- name: Place the deployments
  deployment_placement:
    deployments: "{{ cluster_deployments }}"
    registry_path: "{{ cluster_registry_path }}"
    nodes: "{{ cluster_nodes }}"
    devices: "{{ cluster_node_devices }}"
    model_name: "{{ lookup('ansible.builtin.env', 'MODEL_NAME') }}"
"""

RETURN = r"""
placement:
  description: One entry per replica, in deployment order, with its nodes and device indices.
  returned: always
  type: list
  elements: dict
  sample: [{deployment: deepseek-r1, replica: 0, model: deepseek-r1, nodes: [h100-01, h100-02],
            devices: {h100-01: [0, 1, 2, 3, 4, 5, 6, 7], h100-02: [0, 1, 2, 3, 4, 5, 6, 7]}}]
table:
  description: The placement as a table (DEPLOYMENT, REPLICA, MODEL, NODE, DEVICES); empty without
    deployments.
  returned: always
  type: str
engines:
  description: vLLM engines the placement needs (one per replica).
  returned: always
  type: int
replica_engines:
  description:
    - One record per replica engine (C(deployment), C(replica) 0-based, C(model), C(node) where
      its unit and port are, C(nodes) every node it takes, C(devices) on C(node), C(port),
      C(unit)); empty when the set runs as the cluster's single engine.
  returned: always
  type: list
  elements: dict
not_served:
  description: Why the serving side cannot run this set yet; empty when it can.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.placement import (  # noqa: E402
    PlacementError,
    conflicts_with_model_name,
    engines,
    format_table,
    not_served_yet,
    plan,
    replica_engines,
    serves_replicas,
)
from ansible.module_utils.vllm_registry import RegistryError, load_registry_file  # noqa: E402


def run_module() -> None:
    module = AnsibleModule(
        argument_spec={
            "deployments": {"type": "raw", "required": True},
            "registry_path": {"type": "path", "required": True},
            "nodes": {"type": "list", "elements": "str", "required": True},
            "devices": {"type": "dict", "required": True},
            "model_name": {"type": "str", "default": ""},
            "executor": {"type": "str", "default": "ray"},
            "port_base": {"type": "int", "default": 8100},
        },
        supports_check_mode=True,
    )
    params = module.params
    raw = params["deployments"]
    result = {"changed": False, "placement": [], "table": "", "engines": 0, "not_served": [],
              "replica_engines": []}
    if isinstance(raw, list) and not raw:
        module.exit_json(**result)
    problems = conflicts_with_model_name(raw, params["model_name"])
    if problems:
        module.fail_json(msg=problems[0], **result)
    try:
        devices = {node: int(params["devices"][node]) for node in params["nodes"]}
        replicas = plan(raw, load_registry_file(params["registry_path"]), devices)
    except (PlacementError, RegistryError) as exc:
        module.fail_json(msg=str(exc), **result)
    result.update(placement=[r.as_dict() for r in replicas], table=format_table(replicas),
                  engines=engines(replicas),
                  not_served=not_served_yet(raw, replicas, params["executor"]),
                  replica_engines=(replica_engines(replicas, params["port_base"])
                                   if serves_replicas(raw, replicas) else []))
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
