"""vLLM's CPU platform with a Ray device (lab only; see the package's docstring)."""

from __future__ import annotations

from vllm.platforms.cpu import CpuPlatform

COMMUNICATOR = "servekit_lab_platform.communicator.LabCpuCommunicator"


class LabCpuPlatform(CpuPlatform):
    # The Ray resource each vLLM worker asks for. It must be one of Ray's
    # accelerator names: the worker reads
    # ray.get_runtime_context().get_accelerator_ids()[ray_device_key]
    # (vllm/v1/executor/ray_executor_v2.py, ray_utils.py), which has no entry
    # for a custom resource (KeyError: probe in ARCHITECTURE.md).
    ray_device_key: str = "GPU"

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        # By name: vLLM imports it in the worker (resolve_obj_by_qualname), so
        # the CPU communicator is never imported while the platform resolves
        # (a top-level import there caused a circular-import warning).
        return COMMUNICATOR
