"""Filters of the runtime role: what the image probe found, and whether the CDI spec is stale.

(The ``podman run`` form of the Ray container's compose service is the ray
role's: roles/ray/filter_plugins/compose.py.)
"""

from __future__ import annotations

import json
import re


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
                           "image's PATH (or in cluster_container_bin_dir)")
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
        return {"image_probe_problems": image_probe_problems, "cdi_spec_stale": cdi_spec_stale}
