"""vLLM's CPU communicator, with shared memory only among ranks on one host."""

from __future__ import annotations

import socket

import torch.distributed
from vllm.distributed.device_communicators.cpu_communicator import CpuCommunicator


def one_host(hostnames: list[str]) -> bool:
    """Whether every rank of a group reported the same host."""
    return len(set(hostnames)) == 1


class LabCpuCommunicator(CpuCommunicator):
    """vLLM's CPU communicator, whose shared-memory all-reduce stays on one host.

    vLLM's CPU platform uses a shared-memory all-reduce (``_CPUSHMDistributed``)
    when every rank of a group derives the same shared-memory group name
    (``CpuCommunicator._all_group_ranks_share_shm_group_name``). Under the mp
    executor on one host that holds; under the Ray executor ranks on different
    nodes derive the same name too (``VLLM_DIST_IDENT`` comes from the init
    method's port), and the remote rank fails with "open shm in SHMManager
    failed. errno: 2". Requiring one host as well makes a cross-node group fall
    back to torch.distributed (gloo over the data interface), and vLLM logs
    "CPU SHM communicator disabled for group tp:0".
    """

    def _all_group_ranks_share_shm_group_name(self) -> bool:
        # Every rank takes both all_gathers (collectives must match): the
        # first result is the same on all ranks, so all of them go on or stop.
        if not super()._all_group_ranks_share_shm_group_name():
            return False
        hostnames: list[str] = [""] * self.world_size
        torch.distributed.all_gather_object(hostnames, socket.gethostname(), group=self.device_group)
        return one_host(hostnames)
