"""Filters of the runtime role: one compose service as a ``podman run`` argv.

Podman runs the node's Ray container with ``podman run`` built from the very
service the compose template renders for Docker, not through podman-compose:
Debian bookworm's podman-compose 1.0.3 (podman_compose.py, container_to_args
and get_net_args) adds ``--net <project>_default --network-alias <service>``
even to ``network_mode: host`` (podman: "cannot set multiple networks without
bridge network mode, selected mode host") and has no ``ipc`` or ``pid`` key.
"""

from __future__ import annotations

import json
import re

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


def image_probe_problems(stdout: str, image: str, pins: dict | None = None) -> dict:
    """What files/image_probe.py, run in ``image``, found missing, and versions that differ from ``pins``.

    Returns ``{"missing": [...], "differs": [...], "versions": {...}}``; each message names the
    image. vLLM's import may log to stdout first, so the report is the last line that is JSON.
    """
    report = None
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                report = json.loads(line)
            except ValueError:
                continue
            break
    if not isinstance(report, dict) or not isinstance(report.get("packages"), dict):
        return {"missing": [f"{image}: python3 in the image printed no probe report (is there a python3?)"],
                "differs": [], "versions": {}}
    missing, differs, versions = [], [], {}
    for name, entry in sorted(report["packages"].items()):
        if "error" in entry:
            missing.append(f"{image}: `import {name}` fails: {entry['error']}")
            continue
        versions[name] = entry.get("version")
        if not entry.get("command"):
            missing.append(f"{image}: `import {name}` works but the `{name}` command is not on the "
                           "image's PATH (or in runtime_container_bin_dir)")
        pin = (pins or {}).get(name)
        if pin and entry.get("version") != pin:
            differs.append(f"{image}: {name} {entry.get('version')}, servekit pins {pin}")
    return {"missing": missing, "differs": differs, "versions": versions}


_CDI_LIBCUDA = re.compile(r"^\s*-?\s*hostPath:\s*\S*/libcuda\.so\.(\d+(?:\.\d+)+)\s*$", re.MULTILINE)


def cdi_spec_driver(spec_text: str | None) -> str | None:
    """The driver version a CDI spec from ``nvidia-ctk cdi generate`` was made for: the
    version suffix of the libcuda.so it mounts (the toolkit names the host's driver libraries
    by it). None when there is no spec or it mounts no libcuda.so.<version>."""
    match = _CDI_LIBCUDA.search(spec_text or "")
    return match.group(1) if match else None


def cdi_spec_stale(spec_text: str | None, loaded_driver: str | None) -> bool:
    """Whether to (re)generate the CDI spec: there is none, or it names another driver than
    the one loaded (/sys/module/nvidia/version). NVIDIA's Container Toolkit docs: regenerate
    the spec after any change to the driver. With no driver loaded, only a missing spec."""
    if not spec_text:
        return True
    loaded = (loaded_driver or "").strip()
    return bool(loaded) and cdi_spec_driver(spec_text) != loaded


class FilterModule:
    def filters(self) -> dict:
        return {"podman_run_argv": podman_run_argv, "image_probe_problems": image_probe_problems,
                "cdi_spec_stale": cdi_spec_stale}
