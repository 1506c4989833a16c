#!/usr/bin/python
"""Ansible module: render (and write) one host's vLLM launch unit from the model registry."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vllm_launch
short_description: Render one host's vLLM launch unit from the model registry
version_added: "0.1.0"
description:
  - Reads the model registry (C(config/model_registry.yml) format), validates it, selects one
    model and returns, for one host of the cluster, the exact vLLM argv, its environment and the
    systemd unit text that runs it.
  - Validation happens before anything is written. Every error names the model, the key and the
    allowed values; an unknown model lists the models that exist.
  - With O(executor=ray) only the head (node rank 0) runs vLLM; workers take part through Ray.
    With O(executor=mp) every node the model spans runs one vLLM process, rank 0 with the API and
    the rest C(--headless).
  - Writes the unit to O(dest) when O(dest) is set. Supports check mode and diff mode.
options:
  registry:
    description:
      - The parsed registry (the mapping with a C(models) key), for example the RV(registry)
        returned by an earlier call. Mutually exclusive with O(registry_path).
    type: dict
  registry_path:
    description:
      - Path to the registry YAML on the host the module runs on. YAML syntax errors are
        reported with their line. Needs PyYAML there.
    type: path
  model:
    description: Registry name of the model to launch (for example C(gpt-oss-20b)).
    type: str
    required: true
  served_name:
    description:
      - The name clients ask for (C(--served-model-name)); a deployment's C(name). By default the
        entry's own C(served-model-name), else O(model).
    type: str
  extra_args:
    description: Flags appended to the vLLM argv after the registry's (the role's own, not a model's).
    type: list
    elements: str
    default: []
  node_rank:
    description: This host's rank; 0 is the head.
    type: int
    default: 0
  nnodes:
    description: Number of hosts in the cluster (head plus workers).
    type: int
    default: 1
  devices_per_node:
    description: Accelerators (GPUs, or CPU workers in the lab) each host offers.
    type: int
    default: 1
  head_address:
    description: Data-plane address of the head host (Ray head, mp master).
    type: str
    default: 127.0.0.1
  host_address:
    description: This host's data-plane address; exported as E(VLLM_HOST_IP) when set.
    type: str
  executor:
    description: vLLM distributed executor backend.
    type: str
    choices: [ray, mp]
    default: ray
  runtime:
    description: C(native) runs vLLM from a venv under systemd; C(container) runs it in the
      node's compose project, which the unit starts.
    type: str
    choices: [native, container]
    default: native
  api_host:
    description: Address the OpenAI-compatible API binds to on the head.
    type: str
    default: 0.0.0.0
  api_port:
    description: Port of the OpenAI-compatible API on the head.
    type: int
    default: 8000
  master_port:
    description: Port of the mp executor's master on the head.
    type: int
    default: 29501
  command:
    description: The argv prefix that starts vLLM's CLI (the word before C(serve)).
    type: list
    elements: str
    default: [vllm]
  exec_start:
    description:
      - The argv the unit runs, when it is not the vLLM argv itself (the container runtime
        runs C(docker compose up) and passes the vLLM argv to the container).
    type: list
    elements: str
  exec_start_pre:
    description:
      - A command the unit runs before O(exec_start) (C(ExecStartPre=)); the vllm role makes
        worker ranks wait there for the head's rendezvous port, so ranks start head first.
    type: list
    elements: str
  exec_stop:
    description:
      - A command that stops what O(exec_start) started (C(ExecStop=)); the container runtime
        stops the vLLM it runs in the node's Ray container, which the engine's exec client does not.
    type: list
    elements: str
  timeout_start_sec:
    description: C(TimeoutStartSec=) of the unit (covers O(exec_start_pre)); systemd's default when unset.
    type: int
  start_limit_interval_sec:
    description:
      - C(StartLimitIntervalSec=) of the unit; with C(StartLimitBurst=5) it ends the restart loop of a
        launch that cannot start. Make it longer than five starts that each wait in O(exec_start_pre).
    type: int
    default: 600
  environment:
    description: Extra environment for the vLLM process (NCCL, Gloo, VLLM_* settings).
    type: dict
    default: {}
  environment_files:
    description: EnvironmentFile= paths for the unit (secrets live there, never in the unit).
    type: list
    elements: path
    default: []
  after:
    description: Units this unit is ordered after (besides network-online.target).
    type: list
    elements: str
    default: []
  checksums:
    description:
      - Checksums of files the processes read only when they start (an O(environment_files) entry),
        keyed by path; each becomes a comment in the unit, so a changed file changes the unit and the
        caller restarts vLLM.
    type: dict
    default: {}
  dest:
    description:
      - Where to write the unit. Nothing is written when unset.
      - When this host runs no vLLM process for the model, an existing O(dest) is removed
        (stop the service first).
    type: path
  mode:
    description: File mode of O(dest).
    type: str
    default: "0644"
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
author:
  - servekit contributors
"""

EXAMPLES = r"""
- name: Validate the registry and render the head's launch on the controller
  vllm_launch:
    registry_path: "{{ playbook_dir }}/../config/model_registry.yml"
    model: gpt-oss-20b
    nnodes: 2
  delegate_to: localhost
  register: head_launch

- name: Write a worker's unit (mp executor, headless rank 1)
  vllm_launch:
    registry: "{{ head_launch.registry }}"
    model: lab-tiny
    node_rank: 1
    nnodes: 2
    executor: mp
    head_address: 10.77.0.11
    host_address: 10.77.0.12
    dest: /etc/systemd/system/vllm.service
"""

RETURN = r"""
argv:
  description: The vLLM command line this host runs; empty when it runs none.
  returned: always
  type: list
  elements: str
  sample: [vllm, serve, openai/gpt-oss-20b, --dtype, bfloat16, --tensor-parallel-size, "2"]
env:
  description: Environment variables set in the unit.
  returned: always
  type: dict
  sample: {VLLM_HOST_IP: 192.168.100.1}
unit:
  description: The systemd unit text; empty when this host runs no vLLM process.
  returned: always
  type: str
active:
  description: Whether this host runs a vLLM process for the model.
  returned: always
  type: bool
role:
  description: C(head), C(worker) (runs vLLM headless, or Ray only) or C(idle) (outside the model's span).
  returned: always
  type: str
world_size:
  description: tensor-parallel-size x pipeline-parallel-size.
  returned: always
  type: int
nodes_used:
  description: How many nodes the model spans.
  returned: always
  type: int
models:
  description: Names of every model in the registry.
  returned: always
  type: list
  elements: str
registry:
  description: The validated registry, to pass to later calls as O(registry).
  returned: always
  type: dict
previous_model:
  description:
    - Registry name of the model the unit at O(dest) launched before this call (read before it is
      written or removed); null when there was no unit there, or no unit this module wrote.
    - The vllm role's rollback restores and probes this model.
  returned: when O(dest) is set
  type: str
  sample: gpt-oss-20b
"""

import os  # noqa: E402 - Ansible modules put documentation first

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.vllm_registry import (  # noqa: E402
    NodeSpec,
    RegistryError,
    build_launch_plan,
    load_registry_file,
    render_unit,
    select_model,
    unit_model,
    validate_registry,
)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def run_module() -> None:
    module = AnsibleModule(
        argument_spec={
            "registry": {"type": "dict"},
            "registry_path": {"type": "path"},
            "model": {"type": "str", "required": True},
            "served_name": {"type": "str"},
            "extra_args": {"type": "list", "elements": "str", "default": []},
            "node_rank": {"type": "int", "default": 0},
            "nnodes": {"type": "int", "default": 1},
            "devices_per_node": {"type": "int", "default": 1},
            "head_address": {"type": "str", "default": "127.0.0.1"},
            "host_address": {"type": "str"},
            "executor": {"type": "str", "choices": ["ray", "mp"], "default": "ray"},
            "runtime": {"type": "str", "choices": ["native", "container"], "default": "native"},
            "api_host": {"type": "str", "default": "0.0.0.0"},  # noqa: S104 - firewall decides who
            "api_port": {"type": "int", "default": 8000},
            "master_port": {"type": "int", "default": 29501},
            "command": {"type": "list", "elements": "str", "default": ["vllm"]},
            "exec_start": {"type": "list", "elements": "str"},
            "exec_start_pre": {"type": "list", "elements": "str"},
            "exec_stop": {"type": "list", "elements": "str"},
            "timeout_start_sec": {"type": "int"},
            "start_limit_interval_sec": {"type": "int", "default": 600},
            "environment": {"type": "dict", "default": {}},
            "environment_files": {"type": "list", "elements": "path", "default": []},
            "after": {"type": "list", "elements": "str", "default": []},
            "checksums": {"type": "dict", "default": {}},
            "dest": {"type": "path"},
            "mode": {"type": "str", "default": "0644"},
        },
        required_one_of=[("registry", "registry_path")],
        mutually_exclusive=[("registry", "registry_path")],
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["registry_path"]:
            models = load_registry_file(params["registry_path"])
        else:
            models = validate_registry(params["registry"], "registry parameter")
        entry = select_model(models, params["model"])
        node = NodeSpec(
            node_rank=params["node_rank"],
            nnodes=params["nnodes"],
            head_address=params["head_address"],
            host_address=params["host_address"],
            devices_per_node=params["devices_per_node"],
            executor=params["executor"],
            runtime=params["runtime"],
            api_host=params["api_host"],
            api_port=params["api_port"],
            master_port=params["master_port"],
        )
        plan = build_launch_plan(
            params["model"], entry, node, params["command"], params["environment"],
            served_name=params["served_name"],
        )
    except RegistryError as exc:
        module.fail_json(msg=str(exc))
    plan.argv.extend(params["extra_args"] if plan.active else [])

    unit = ""
    if plan.active:
        unit = render_unit(
            plan,
            exec_argv=params["exec_start"],
            exec_start_pre=params["exec_start_pre"],
            exec_stop=params["exec_stop"],
            timeout_start_sec=params["timeout_start_sec"],
            start_limit_interval_sec=params["start_limit_interval_sec"],
            environment_files=params["environment_files"],
            after=params["after"],
            checksums={str(k): str(v) for k, v in params["checksums"].items()},
        )
    result = dict(
        plan.as_dict(),
        unit=unit,
        models=sorted(models),
        registry={"models": models},
        changed=False,
    )

    dest = params["dest"]
    if dest:
        result["previous_model"] = unit_model(_read(dest))
    if dest and not plan.active and os.path.exists(dest):
        # This host no longer runs vLLM for the selected model: retire its unit.
        result["changed"] = True
        result["diff"] = {"before": _read(dest) or "", "after": "", "before_header": dest}
        if not module.check_mode:
            os.unlink(dest)
    elif dest and plan.active:
        before = _read(dest)
        if before != unit:
            result["changed"] = True
            result["diff"] = {
                "before": before or "",
                "after": unit,
                "before_header": dest,
                "after_header": dest,
            }
            if not module.check_mode:
                directory = os.path.dirname(dest)
                if directory and not os.path.isdir(directory):
                    os.makedirs(directory, mode=0o755)
                tmp = f"{dest}.servekit-tmp"
                with open(tmp, "w", encoding="utf-8") as handle:
                    handle.write(unit)
                module.atomic_move(tmp, dest)
        if os.path.exists(dest):
            file_args = module.load_file_common_arguments({"path": dest, "mode": params["mode"]})
            result["changed"] = module.set_fs_attributes_if_different(
                file_args, result["changed"]
            )
    module.exit_json(**result)


def main() -> None:
    run_module()


if __name__ == "__main__":
    main()
