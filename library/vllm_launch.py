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
  - The unit's text is the project's C(templates/vllm-launch.service.j2) (header
    C({{ ansible_managed | comment }}), as the roles' templates). The action plugin of the same
    name (C(action_plugins/vllm_launch.py)) renders it on the control node from the plan the
    module returns, then runs the module again with the text to write O(dest); managed nodes need
    neither the template nor Jinja2. Without the action plugin the module plans but cannot write
    O(dest).
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
  exec_prefix:
    description:
      - The container runtime's exec into the node's Ray container (C(podman exec servekit-ray)).
        When set, the unit runs vLLM through it, the environment passed by name (O(environment),
        O(env_names)), and stops it by the PID recorded in O(pid_file); O(exec_start) and
        O(exec_stop) then stay unset.
    type: list
    elements: str
    default: []
  env_names:
    description: Further variables the exec passes by name (the secrets file's, which systemd reads).
    type: list
    elements: str
    default: []
  pid_file:
    description: Where, inside the container, the exec records vLLM's PID (one file per unit).
    type: str
    default: /tmp/servekit-vllm.pid
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
exec_argv:
  description: What the unit's C(ExecStart=) runs (O(argv), or its exec in the container); empty when none.
  returned: always
  type: list
  elements: str
exec_stop_argv:
  description: What the unit's C(ExecStop=) runs; empty when the unit has none.
  returned: always
  type: list
  elements: str
unit:
  description:
    - The systemd unit text (C(templates/vllm-launch.service.j2), rendered by the action plugin);
      empty when this host runs no vLLM process.
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

import dataclasses  # noqa: E402 - Ansible modules put documentation first
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.vllm_registry import (  # noqa: E402
    EXECUTORS,
    RUNTIMES,
    LaunchPlan,
    NodeSpec,
    RegistryError,
    build_launch_plan,
    container_exec,
    load_registry_file,
    select_model,
    unit_model,
    unit_vars,
    validate_registry,
)

# The options that place this host (NodeSpec's fields) and those that shape its unit (unit_vars).
NODE_OPTIONS = tuple(f.name for f in dataclasses.fields(NodeSpec))
UNIT_OPTIONS = ("exec_start_pre", "exec_stop", "timeout_start_sec", "start_limit_interval_sec",
                "environment_files", "after")


def build_module() -> AnsibleModule:
    return AnsibleModule(
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
            "executor": {"type": "str", "choices": list(EXECUTORS), "default": "ray"},
            "runtime": {"type": "str", "choices": list(RUNTIMES), "default": "native"},
            "api_host": {"type": "str", "default": "0.0.0.0"},  # noqa: S104 - firewall decides who
            "api_port": {"type": "int", "default": 8000},
            "master_port": {"type": "int", "default": 29501},
            "command": {"type": "list", "elements": "str", "default": ["vllm"]},
            "exec_start": {"type": "list", "elements": "str"},
            "exec_prefix": {"type": "list", "elements": "str", "default": []},
            "env_names": {"type": "list", "elements": "str", "default": []},
            # inside the container, whose /tmp only vLLM's exec and its stop write
            "pid_file": {"type": "str", "default": "/tmp/servekit-vllm.pid"},  # noqa: S108
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
            # Internal: the unit text, rendered from templates/ on the control node by
            # action_plugins/vllm_launch.py from this module's unit_vars (see its doc).
            "_unit": {"type": "str"},
        },
        required_one_of=[("registry", "registry_path")],
        mutually_exclusive=[("registry", "registry_path"), ("exec_prefix", "exec_start"),
                            ("exec_prefix", "exec_stop")],
        supports_check_mode=True,
    )


def parse(params: dict) -> tuple[dict, dict, NodeSpec]:
    """The validated registry's models, the selected entry and this host's place in the cluster."""
    if params["registry_path"]:
        models = load_registry_file(params["registry_path"])
    else:
        models = validate_registry(params["registry"], "registry parameter")
    node = NodeSpec(**{name: params[name] for name in NODE_OPTIONS})
    return models, select_model(models, params["model"]), node


def plan_launch(params: dict, entry: dict, node: NodeSpec) -> tuple[LaunchPlan, dict | None]:
    """This host's launch, and what the unit template needs (None when the host runs no vLLM)."""
    plan = build_launch_plan(params["model"], entry, node, params["command"], params["environment"],
                             served_name=params["served_name"])
    if not plan.active:
        return plan, None
    plan.argv.extend(params["extra_args"])
    options = {name: params[name] for name in UNIT_OPTIONS}
    exec_argv = params["exec_start"]
    if params["exec_prefix"]:
        exec_argv, options["exec_stop"] = container_exec(
            params["exec_prefix"], plan.argv, [*plan.env, *params["env_names"]], params["pid_file"])
    return plan, dict(unit_vars(
        plan,
        exec_argv=exec_argv,
        checksums={str(k): str(v) for k, v in params["checksums"].items()},
        **options,
    ), exec_argv=exec_argv or plan.argv, exec_stop_argv=options["exec_stop"] or [])


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write(module: AnsibleModule, dest: str, text: str) -> None:
    directory = os.path.dirname(dest)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755)
    tmp = f"{dest}.servekit-tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    module.atomic_move(tmp, dest)


def apply_unit(module: AnsibleModule, dest: str, unit: str | None) -> dict:
    """Write ``unit`` to ``dest``, or with None retire the unit there: changed, diff, previous_model."""
    before = _read(dest)
    result: dict = {"previous_model": unit_model(before), "changed": False}
    if unit is None:
        # This host no longer runs vLLM for the selected model: retire its unit.
        if before is not None:
            result.update(changed=True, diff={"before": before, "after": "", "before_header": dest})
            if not module.check_mode:
                os.unlink(dest)
        return result
    if before != unit:
        result.update(changed=True, diff={"before": before or "", "after": unit,
                                          "before_header": dest, "after_header": dest})
        if not module.check_mode:
            _write(module, dest, unit)
    if os.path.exists(dest):
        file_args = module.load_file_common_arguments({"path": dest, "mode": module.params["mode"]})
        result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    return result


def main() -> None:
    module = build_module()
    params = module.params
    try:
        models, entry, node = parse(params)
        plan, template_vars = plan_launch(params, entry, node)
    except RegistryError as exc:
        module.fail_json(msg=str(exc))
    if params["dest"] and plan.active and params["_unit"] is None:
        module.fail_json(msg="dest needs the unit text that this module's action plugin renders from "
                             "templates/vllm-launch.service.j2 on the control node; run it with the "
                             "project's ansible.cfg (action_plugins = ./action_plugins)")
    result = dict(plan.as_dict(), unit=params["_unit"] or "", unit_vars=template_vars,
                  exec_argv=(template_vars or {}).get("exec_argv", []),
                  exec_stop_argv=(template_vars or {}).get("exec_stop_argv", []),
                  models=sorted(models), registry={"models": models}, changed=False)
    if params["dest"]:
        result.update(apply_unit(module, params["dest"], params["_unit"] if plan.active else None))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
