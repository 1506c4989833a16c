"""Model registry: load, validate and render vLLM launch plans.

Pure functions shared by the ``vllm_launch`` Ansible module (imported as
``ansible.module_utils.vllm_registry``) and the ``servekit`` CLI (imported as
``servekit.module_utils.vllm_registry``).  Nothing here touches a host: the
callers decide what to write and where.

The registry format is the seed's: hyphenated vLLM flag names under
``models:``::

    models:
      gpt-oss-20b:
        model: openai/gpt-oss-20b
        dtype: bfloat16
        tensor-parallel-size: 2
        description: Lightweight

Keys map to flags the way the seed's launcher does: ``key: v`` -> ``--key v``,
``true`` -> ``--key``, ``false`` -> omitted, ``description`` skipped; lists
become repeated values of one flag (``nargs``) or JSON, dicts become JSON.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field

try:  # inside an Ansible module payload
    from ansible.module_utils.vllm_flags import VLLM_FLAGS, VLLM_VERSION
except ImportError:  # imported as part of the servekit package
    from .vllm_flags import VLLM_FLAGS, VLLM_VERSION  # type: ignore[no-redef]

EXECUTORS = ("ray", "mp")
RUNTIMES = ("native", "container")

# Keys the registry may not set: the launcher derives them from the
# inventory (addresses, ports, ranks) or keeps them out of argv (secrets).
LAUNCHER_KEYS = {
    "host": "vllm_api_host",
    "port": "cluster_api_port",
    "distributed-executor-backend": "cluster_executor",
    "nnodes": "the inventory's node count",
    "node-rank": "the host's position in the inventory",
    "master-addr": "the head host's data address",
    "master-port": "vllm_master_port",
    "headless": "the host's group (workers run headless)",
    "api-key": "vllm_api_key (vault, passed through an EnvironmentFile)",
}

# Registry-only keys, and keys whose bounds vLLM's parser does not check.
# ready-timeout: seconds this model may take from its (re)start to its first
# completion; replaces vllm_ready_timeout for it, and the readiness
# watchdog's grace is at least as long. Bounds: vllm_ready_timeout's
# (roles/vllm/meta/input_rules.yml).
REGISTRY_ONLY_KEYS = ("description", "ready-timeout")
READY_TIMEOUT_BOUNDS = (10, 86400)


class RegistryError(ValueError):
    """Bad registry or launch input; the message names the field and the fix."""


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def load_registry_text(text: str, source: str = "model registry") -> dict:
    """Parse registry YAML, reporting syntax errors and duplicate keys with a line."""
    import yaml  # lazy: hosts that only receive an already-parsed registry need no PyYAML

    class _UniqueKeyLoader(yaml.SafeLoader):
        pass

    def _construct_mapping(loader, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise RegistryError(
                    f"{source}: line {key_node.start_mark.line + 1}: duplicate key '{key}' "
                    f"(first defined on line {seen[key]})"
                )
            seen[key] = key_node.start_mark.line + 1
        return loader.construct_mapping(node, deep=deep)

    _UniqueKeyLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
    )
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise RegistryError(f"{source}: YAML syntax error at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: YAML error: {exc}") from None
    return validate_registry(data, source)


def load_registry_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise RegistryError(f"model registry {path}: cannot read: {exc.strerror}") from None
    return load_registry_text(text, path)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def closest_flag(key: str) -> str | None:
    """The vLLM flag a mistyped registry key most likely meant."""
    normalised = key.strip().lstrip("-").replace("_", "-").lower()
    if normalised in VLLM_FLAGS and normalised != key:
        return normalised
    matches = difflib.get_close_matches(normalised, list(VLLM_FLAGS), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping"}.get(type(value), type(value).__name__)


def _check_value(model: str, key: str, value: object) -> None:
    """Check one key's value against the vLLM flag table (type, choices, bounds)."""
    where = f"model '{model}': key '{key}'"
    if value is None:
        raise RegistryError(f"{where} has no value; give a value or remove the key")
    spec = VLLM_FLAGS[key]
    kind = spec["type"]
    if kind == "bool":
        if not isinstance(value, bool):
            raise RegistryError(f"{where} must be true or false, got {_type_name(value)} {value!r}")
        return
    if isinstance(value, bool):
        raise RegistryError(f"{where} takes a {kind} value, got boolean {value!r}")
    if spec.get("nargs") in ("+", "*") and isinstance(value, list):
        for item in value:
            _check_scalar(where, kind, spec, item)
        return
    if kind == "json":
        if not isinstance(value, (dict, list, str, int, float)):
            raise RegistryError(f"{where} must be a mapping or JSON string, got {_type_name(value)}")
        return
    _check_scalar(where, kind, spec, value)


def _check_scalar(where: str, kind: str, spec: dict, value: object) -> None:
    if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise RegistryError(f"{where} must be an integer, got {_type_name(value)} {value!r}")
    if kind == "float" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise RegistryError(f"{where} must be a number, got {_type_name(value)} {value!r}")
    if kind == "str" and not isinstance(value, (str, int, float)):
        raise RegistryError(f"{where} must be a string, got {_type_name(value)}")
    choices = spec.get("choices")
    if choices and str(value) not in choices:
        raise RegistryError(
            f"{where} is {value!r}; allowed values: {', '.join(str(c) for c in choices)}"
        )


def validate_entry(name: str, entry: object) -> dict:
    """Validate one registry entry; return it unchanged when it is good."""
    if not isinstance(name, str) or not name:
        raise RegistryError(f"model name {name!r} must be a non-empty string")
    if not isinstance(entry, dict):
        raise RegistryError(
            f"model '{name}' must be a mapping of vLLM flags, got {_type_name(entry)}"
        )
    if not isinstance(entry.get("model"), str) or not entry.get("model"):
        raise RegistryError(
            f"model '{name}': key 'model' is required: a hub id (org/name) or a local path"
        )
    for key, value in entry.items():
        if not isinstance(key, str):
            raise RegistryError(f"model '{name}': key {key!r} must be a string")
        if key == "ready-timeout":
            _check_ready_timeout(name, value)
            continue
        if key in REGISTRY_ONLY_KEYS:
            if not isinstance(value, str):
                raise RegistryError(f"model '{name}': key '{key}' must be a string")
            continue
        if key in LAUNCHER_KEYS:
            raise RegistryError(
                f"model '{name}': key '{key}' is set by the launcher from {LAUNCHER_KEYS[key]}; "
                "remove it from the registry"
            )
        if key not in VLLM_FLAGS:
            hint = closest_flag(key)
            suggestion = f"; did you mean '{hint}'?" if hint else ""
            raise RegistryError(
                f"model '{name}': unknown key '{key}' (not a flag of vLLM {VLLM_VERSION})"
                f"{suggestion}"
            )
        _check_value(name, key, value)
    _check_bounds(name, entry)
    return entry


def _check_ready_timeout(name: str, value: object) -> None:
    low, high = READY_TIMEOUT_BOUNDS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RegistryError(
            f"model '{name}': key 'ready-timeout' is {value!r}; "
            f"allowed: an integer number of seconds, {low}..{high}"
        )


def ready_timeout(entry: dict, default: int) -> int:
    """Seconds the model may take to its first completion: its own, else the default."""
    return int(entry.get("ready-timeout", default))


def _check_bounds(name: str, entry: dict) -> None:
    gmu = entry.get("gpu-memory-utilization")
    if gmu is not None and not 0 < gmu <= 1:
        raise RegistryError(
            f"model '{name}': key 'gpu-memory-utilization' is {gmu}; allowed: a number in (0, 1]"
        )
    for key in ("tensor-parallel-size", "pipeline-parallel-size", "max-num-seqs"):
        value = entry.get(key)
        if value is not None and value < 1:
            raise RegistryError(f"model '{name}': key '{key}' is {value}; allowed: an integer >= 1")
    mml = entry.get("max-model-len")
    if mml is not None and mml <= 0:
        raise RegistryError(
            f"model '{name}': key 'max-model-len' is {mml}; allowed: an integer > 0"
        )


def validate_registry(data: object, source: str = "model registry") -> dict:
    """Validate a parsed registry; return ``{name: entry}``."""
    if not isinstance(data, dict) or "models" not in data:
        raise RegistryError(
            f"{source}: top-level key 'models' is missing; expected 'models:' mapping "
            "model names to vLLM flags"
        )
    models = data["models"]
    if not isinstance(models, dict) or not models:
        raise RegistryError(
            f"{source}: 'models' must be a non-empty mapping of model names, "
            f"got {_type_name(models)}"
        )
    extra = sorted(str(k) for k in data if k != "models")
    if extra:
        raise RegistryError(
            f"{source}: unknown top-level key(s) {', '.join(extra)}; allowed: models"
        )
    for name, entry in models.items():
        validate_entry(name, entry)
    return models


def select_model(models: dict, name: str | None) -> dict:
    """Return one entry; an unknown or empty name lists the models that exist."""
    available = ", ".join(sorted(models))
    if not name:
        raise RegistryError(f"no model selected (set MODEL_NAME); available models: {available}")
    if name not in models:
        raise RegistryError(f"unknown model '{name}'; available models: {available}")
    return models[name]


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _render_scalar(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def registry_args(entry: dict) -> list[str]:
    """Map one registry entry (minus ``model``) to vLLM flags, in registry order."""
    args: list[str] = []
    for key, value in entry.items():
        if key == "model" or key in REGISTRY_ONLY_KEYS or value is False:
            continue
        flag = f"--{key}"
        if value is True:
            args.append(flag)
        elif isinstance(value, (dict, list)):
            spec = VLLM_FLAGS.get(key, {})
            if isinstance(value, list) and spec.get("nargs") in ("+", "*"):
                args.append(flag)
                args.extend(_render_scalar(item) for item in value)
            else:
                args.extend([flag, json.dumps(value, separators=(",", ":"), sort_keys=True)])
        else:
            args.extend([flag, _render_scalar(value)])
    return args


@dataclass(frozen=True)
class NodeSpec:
    """Where one host sits in the cluster, as the inventory says."""

    node_rank: int = 0
    nnodes: int = 1
    head_address: str = "127.0.0.1"
    host_address: str | None = None
    devices_per_node: int = 1
    executor: str = "ray"
    runtime: str = "native"
    api_host: str = "0.0.0.0"  # noqa: S104 - the API is meant to be reachable; firewall decides who
    api_port: int = 8000
    master_port: int = 29501

    def check(self) -> None:
        if self.executor not in EXECUTORS:
            raise RegistryError(
                f"executor '{self.executor}' is not supported; allowed values: {', '.join(EXECUTORS)}"
            )
        if self.runtime not in RUNTIMES:
            raise RegistryError(
                f"runtime '{self.runtime}' is not supported; allowed values: {', '.join(RUNTIMES)}"
            )
        for name in ("nnodes", "devices_per_node"):
            if getattr(self, name) < 1:
                raise RegistryError(f"{name} is {getattr(self, name)}; allowed: an integer >= 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise RegistryError(
                f"node_rank {self.node_rank} is outside the cluster; allowed: 0..{self.nnodes - 1}"
            )
        for name in ("api_port", "master_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise RegistryError(f"{name} is {getattr(self, name)}; allowed: 1..65535")
        if not self.head_address:
            raise RegistryError("head_address is empty; give the head host's data address")


@dataclass(frozen=True)
class Topology:
    world_size: int
    nodes_used: int


def plan_topology(name: str, entry: dict, node: NodeSpec) -> Topology:
    """How many nodes the model spans; fail when the inventory cannot hold it."""
    tp = entry.get("tensor-parallel-size", 1)
    pp = entry.get("pipeline-parallel-size", 1)
    world = tp * pp
    offered = node.nnodes * node.devices_per_node
    if world > offered:
        raise RegistryError(
            f"model '{name}': tensor-parallel-size ({tp}) x pipeline-parallel-size ({pp}) = {world} "
            f"devices, but the inventory offers {offered} ({node.nnodes} node(s) x "
            f"{node.devices_per_node} per node); lower the parallel sizes or add nodes"
        )
    if world <= node.devices_per_node:
        return Topology(world, 1)
    if world % node.devices_per_node:
        raise RegistryError(
            f"model '{name}': tensor-parallel-size ({tp}) x pipeline-parallel-size ({pp}) = {world} "
            f"is not a multiple of the {node.devices_per_node} devices per node; "
            "multi-node serving needs whole nodes"
        )
    return Topology(world, math.ceil(world / node.devices_per_node))


@dataclass
class LaunchPlan:
    model_name: str
    node_rank: int
    role: str  # head | worker | idle
    active: bool
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    topology: Topology | None = None

    def as_dict(self) -> dict:
        return {
            "model_name": self.model_name,
            "node_rank": self.node_rank,
            "role": self.role,
            "active": self.active,
            "argv": list(self.argv),
            "env": dict(self.env),
            "world_size": self.topology.world_size if self.topology else None,
            "nodes_used": self.topology.nodes_used if self.topology else None,
        }


def build_launch_plan(
    name: str,
    entry: dict,
    node: NodeSpec,
    command: list[str] | None = None,
    environment: dict | None = None,
    *,
    served_name: str | None = None,
) -> LaunchPlan:
    """The vLLM process one node runs for one model (or that it runs none).

    ``served_name`` (a deployment's name) replaces the entry's own served-model-name, if any.
    """
    node.check()
    topo = plan_topology(name, entry, node)
    head = node.node_rank == 0
    env = {str(k): str(v) for k, v in (environment or {}).items()}
    if node.host_address:
        env["VLLM_HOST_IP"] = node.host_address
    # Ray places the workers itself: only the head runs vLLM. With mp, every
    # node up to the model's span runs one vLLM process; the rest stay idle.
    runs_vllm = head or (node.executor == "mp" and node.node_rank < topo.nodes_used)
    if not runs_vllm:
        return LaunchPlan(name, node.node_rank, "idle" if node.executor == "mp" else "worker",
                          False, [], env, topo)

    argv = [*(command or ["vllm"]), "serve", entry["model"]]
    if served_name:
        entry = {key: value for key, value in entry.items() if key != "served-model-name"}
    argv += registry_args(entry)
    if served_name or "served-model-name" not in entry:
        argv += ["--served-model-name", served_name or name]
    argv += ["--distributed-executor-backend", node.executor]
    if node.executor == "mp" and topo.nodes_used > 1:
        argv += [
            "--nnodes", str(topo.nodes_used),
            "--node-rank", str(node.node_rank),
            "--master-addr", node.head_address,
            "--master-port", str(node.master_port),
        ]
    if head:
        argv += ["--host", node.api_host, "--port", str(node.api_port)]
    else:
        argv.append("--headless")
    return LaunchPlan(name, node.node_rank, "head" if head else "worker", True, argv, env, topo)


# --------------------------------------------------------------------------
# systemd unit
# --------------------------------------------------------------------------


def systemd_quote(word: str) -> str:
    """Quote one word for ExecStart=/Environment= (systemd.service(5) syntax)."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\n\"'\\;"):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


# The unit's Description= line: `vLLM <model> (node rank <n>, <role>)`;
# templates/vllm-launch.service.j2 writes it and unit_model reads it back.
_DESCRIPTION_KEY = "Description=vLLM "
_DESCRIPTION_RANK = " (node rank "

def unit_model(unit: str | None) -> str | None:
    """The registry name of the model a launch unit (templates/vllm-launch.service.j2) launches.

    None when there is no unit, or it is not one of ours (no such Description=).
    The vllm role's rollback restores and probes this model.
    """
    for line in (unit or "").splitlines():
        if line.startswith(_DESCRIPTION_KEY):
            model, found, _ = line[len(_DESCRIPTION_KEY):].rpartition(_DESCRIPTION_RANK)
            return model if found and model else None
    return None


def container_exec(prefix: list[str], argv: list[str], env_names: list[str], pid_file: str
                   ) -> tuple[list[str], list[str]]:
    """ExecStart= and ExecStop= argvs that run ``argv`` in the node's Ray container (container runtime).

    ``prefix`` is the engine's exec into that container (``podman exec servekit-ray``). The
    environment reaches the exec by name (``--env=NAME`` takes the unit's value: Environment= and the
    secrets file, never on the command line). ``sh`` records the PID in ``pid_file`` (inside the
    container, one per unit) so that ExecStop can stop vLLM: the engines do not stop an exec'd
    process when their client is killed (moby/moby#9098, docker/cli#5309); SIGTERM, then SIGKILL
    after 50 s. ``$$`` is systemd's escape of ``$``.
    """
    start = [*prefix[:-1], *(f"--env={name}" for name in sorted(set(env_names))), *prefix[-1:],
             "/bin/sh", "-c", f'echo $$ > {pid_file} && exec "$@"', "vllm", *argv]
    stop = [*prefix, "/bin/sh", "-c",
            f'p=$(cat {pid_file} 2>/dev/null) && kill -TERM "$p" 2>/dev/null || exit 0; i=0; '
            f'while kill -0 "$p" 2>/dev/null; do i=$((i+1)); if [ "$i" -ge 50 ]; then kill -KILL "$p"; fi; '
            f'sleep 1; done; rm -f {pid_file}']
    return start, stop


def _command_line(argv: list[str] | None) -> str:
    return " ".join(systemd_quote(word) for word in argv or [])


def unit_vars(
    plan: LaunchPlan,
    *,
    exec_argv: list[str] | None = None,
    environment_files: list[str] | None = None,
    after: list[str] | None = None,
    exec_start_pre: list[str] | None = None,
    exec_stop: list[str] | None = None,
    timeout_start_sec: int | None = None,
    restart_sec: int = 10,
    start_limit_burst: int = 5,
    start_limit_interval_sec: int = 600,
    checksums: dict[str, str] | None = None,
) -> dict:
    """What templates/vllm-launch.service.j2 needs to run ``exec_argv`` (default: the plan's argv).

    Plain JSON values, command lines and Environment= words already quoted for
    systemd: the module returns them and the control node renders the template.

    ``Restart=always``: a rank of a multi-node engine often exits 0 when a peer
    dies (its collective fails and vLLM shuts down cleanly), so on-failure
    would leave it down. The start limit bounds the loop of a model that
    cannot start; ``exec_start_pre`` (a worker waiting for the head's
    rendezvous) orders the ranks head first. ``checksums`` (file -> checksum,
    of files the processes read only when they start, such as an
    EnvironmentFile=) become comments: a changed file changes the unit, and
    the caller restarts on a changed unit.
    """
    return {
        "model_name": plan.model_name,
        "node_rank": plan.node_rank,
        "role": plan.role,
        "checksums": [[str(path), str(value)] for path, value in sorted((checksums or {}).items())],
        "after": ["network-online.target", *(after or [])],
        "start_limit_interval_sec": start_limit_interval_sec,
        "start_limit_burst": start_limit_burst,
        "restart_sec": restart_sec,
        "environment_files": list(environment_files or []),
        "environment": [systemd_quote(f"{key}={value}") for key, value in sorted(plan.env.items())],
        "exec_start_pre": _command_line(exec_start_pre),
        "timeout_start_sec": timeout_start_sec,
        "exec_start": _command_line(exec_argv if exec_argv is not None else plan.argv),
        "exec_stop": _command_line(exec_stop),
    }


def render_unit(plan: LaunchPlan, **options: object) -> str:
    """The unit text for ``plan`` (``options``: those of ``unit_vars``), rendered on the control node.

    For the servekit CLI and the tests; the module itself never renders (its
    action plugin does, with the play's Templar). Needs ansible-core, so it is
    imported here and not at the top: this file also runs inside module payloads.
    """
    from .unit_template import LAUNCH_UNIT, render_template, template_path

    return render_template(template_path(LAUNCH_UNIT), unit_vars(plan, **options))
