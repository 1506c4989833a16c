"""Old import path of the node parsers, kept for tests/verify only.

The parsers and decisions live in ``node_gpu``, ``node_rdma``, ``node_nccl``
and ``node_preflight``; no module imports this file. Delete it once
tests/verify imports from those.
"""

from __future__ import annotations

from .node_gpu import GPU_QUERY, parse_gpu_query
from .node_preflight import parse_proc_limits
from .node_rdma import parse_sysfs_port, roce_v2_gid_index

__all__ = ["GPU_QUERY", "parse_gpu_query", "parse_proc_limits", "parse_sysfs_port", "roce_v2_gid_index"]
