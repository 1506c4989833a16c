"""Filters of the ray role: the Ray container's compose service as a ``podman run`` argv.

Podman runs the node's Ray container with ``podman run`` built from the very
service the compose template renders for Docker, not through podman-compose:
Debian bookworm's podman-compose 1.0.3 (podman_compose.py, container_to_args
and get_net_args) adds ``--net <project>_default --network-alias <service>``
even to ``network_mode: host`` (podman: "cannot set multiple networks without
bridge network mode, selected mode host") and has no ``ipc`` or ``pid`` key.
"""

from __future__ import annotations

import json

from ansible.errors import AnsibleFilterError

# compose keys the template renders, and how each becomes podman flags
_HANDLED = {
    "image", "container_name", "pull_policy", "network_mode", "ipc", "pid", "shm_size", "cap_add",
    "ulimits", "devices", "volumes", "labels", "env_file", "environment", "entrypoint", "command",
    "restart",
}


def _ulimit(name: str, value: object) -> str:
    if isinstance(value, dict):
        return f"{name}={value['soft']}:{value['hard']}"
    return f"{name}={value}"


def podman_run_argv(service: dict, extra: list | None = None) -> list[str]:
    """``podman run`` options, image and command of one compose ``service`` (a mapping).

    ``extra`` (for example ``--cgroups=disabled``) goes before the image.
    ``deploy`` GPU reservations have no podman form: GPUs reach Podman as CDI
    devices (``devices: [nvidia.com/gpu=all]``), which the template renders for it.
    """
    unknown = sorted(set(service) - _HANDLED)
    if unknown:
        raise AnsibleFilterError(
            f"podman_run_argv: compose key(s) {', '.join(unknown)} have no podman form here; "
            f"allowed: {', '.join(sorted(_HANDLED))}")
    argv = ["run", "--rm", "--replace"]
    if "container_name" in service:
        argv.append(f"--name={service['container_name']}")
    if "pull_policy" in service:
        # compose's if_not_present is podman's missing
        policy = service["pull_policy"]
        argv.append(f"--pull={'missing' if policy == 'if_not_present' else policy}")
    for key, flag in (("network_mode", "--network"), ("ipc", "--ipc"), ("pid", "--pid"),
                      ("shm_size", "--shm-size")):
        if key in service:
            argv.append(f"{flag}={service[key]}")
    argv += [f"--cap-add={cap}" for cap in service.get("cap_add", [])]
    argv += [f"--ulimit={_ulimit(name, value)}" for name, value in service.get("ulimits", {}).items()]
    argv += [f"--device={device}" for device in service.get("devices", [])]
    argv += [f"--volume={volume}" for volume in service.get("volumes", [])]
    labels = service.get("labels", {})
    if isinstance(labels, dict):
        labels = [f"{key}={value}" for key, value in labels.items()]
    argv += [f"--label={label}" for label in labels]
    env_files = service.get("env_file", [])
    argv += [f"--env-file={path}" for path in ([env_files] if isinstance(env_files, str) else env_files)]
    environment = service.get("environment", {})
    if isinstance(environment, dict):
        environment = [f"{key}={value}" for key, value in environment.items()]
    argv += [f"--env={item}" for item in environment]
    entrypoint = service.get("entrypoint")
    if entrypoint is not None:
        entrypoint = entrypoint if isinstance(entrypoint, list) else [entrypoint]
        argv.append("--entrypoint=" + json.dumps(entrypoint))
    argv += [str(item) for item in extra or []]
    argv.append(service["image"])
    argv += [str(item) for item in service.get("command", [])]
    return argv


class FilterModule:
    def filters(self) -> dict:
        return {"podman_run_argv": podman_run_argv}
