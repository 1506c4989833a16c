"""Build hook: the wheel carries the Ansible project the CLI runs, as package data.

``servekit up`` runs ``site.yml`` with ``ansible.cfg``, the playbooks, roles,
modules and config next to it (servekit/project.py finds them). A checkout
has them at its top; an installed wheel gets a copy under
``servekit/_project``, made here at build time from the same paths
MANIFEST.in puts into the sdist. Editable installs use the checkout itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# What the CLI runs; keep in step with MANIFEST.in.
PROJECT_FILES = ("site.yml", "ansible.cfg")
PROJECT_DIRS = ("playbooks", "roles", "templates", "library", "module_utils", "action_plugins",
                "callback_plugins", "strategy_plugins", "config", "inventory", "lab")
# Written by `servekit lab up` on the build machine: never shipped.
LAB_GENERATED = ("inventory/lab/hosts.yml", "inventory/lab/group_vars/all/lab.yml",
                 "inventory/lab/group_vars/all/vault.yml")


def project_files(root: Path) -> list[Path]:
    """The project's files under ``root``, relative to it."""
    files = [Path(name) for name in PROJECT_FILES if (root / name).is_file()]
    for top in PROJECT_DIRS:
        files += sorted(path.relative_to(root) for path in (root / top).rglob("*")
                        if path.is_file() and "__pycache__" not in path.parts
                        and "build" not in path.parts and not any(
                            part.endswith(".egg-info") for part in path.parts)
                        and path.suffix not in (".pyc", ".pyo"))
    return [path for path in files if path.as_posix() not in LAB_GENERATED]


class BuildPyWithProject(build_py):
    """build_py, then a copy of the project into ``servekit/_project`` (not for editable installs)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "servekit" / "_project"
        shutil.rmtree(target, ignore_errors=True)
        for rel in project_files(HERE):
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(HERE / rel, dest)


setup(cmdclass={"build_py": BuildPyWithProject})
