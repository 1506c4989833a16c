"""The runtime stage's image probe (issue 24, item 2): Ray and vLLM in the serving image.

The probe (roles/runtime/files/image_probe.py) runs for real here under
Python interpreters that lack what recent images lack: this machine's
system Python (neither package) and the project's own venv, whose vLLM 0.32
came without Ray (vLLM made Ray optional; NVIDIA's 26.05-py3 NGC vLLM image
"ships without ray", NVIDIA/dgx-spark-playbooks nvidia/vllm/README.md). The
runtime role's filter then reads its report as the assert does.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, ansible_playbook, write_play

PROBE = ROOT / "roles/runtime/files/image_probe.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
IMAGE = "nvcr.io/nvidia/vllm:26.05-py3"
PINS = {"ray": "2.60.0", "vllm": "0.32.0"}


def _filters():
    path = ROOT / "roles/runtime/filter_plugins/container.py"
    spec = importlib.util.spec_from_file_location("container", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _probe(python: str, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run([python, "-c", PROBE.read_text(), *args], capture_output=True, text=True,
                          check=False, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no system python3")
def test_an_image_without_ray_or_vllm_fails_naming_both():
    out = _probe(str(SYSTEM_PYTHON), env={"PATH": "/usr/bin:/bin"})
    found = _filters().image_probe_problems(out, IMAGE, PINS)
    assert found["missing"] == [
        f"{IMAGE}: `import ray` fails: ModuleNotFoundError: No module named 'ray'",
        f"{IMAGE}: `import vllm` fails: ModuleNotFoundError: No module named 'vllm'",
    ]


def test_vllm_without_ray_fails_naming_ray_only():
    """The project's venv: vLLM 0.32 installed, Ray not (vLLM no longer depends on it)."""
    venv_bin = str(Path(sys.executable).parent)
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("this venv has Ray")
    out = _probe(sys.executable, venv_bin)
    found = _filters().image_probe_problems(out, IMAGE, PINS)
    assert found["missing"] == [f"{IMAGE}: `import ray` fails: ModuleNotFoundError: No module named 'ray'"]
    assert found["versions"] == {"vllm": "0.32.0"} and found["differs"] == []


def test_an_image_with_both_passes_and_a_version_off_the_pin_is_a_warning(tmp_path):
    # packages and commands laid out as pip installs them: site-packages/<name>/__init__.py, bin/<name>
    site, bin_dir = tmp_path / "site", tmp_path / "bin"
    for name, version in (("ray", "2.60.0"), ("vllm", "0.31.1")):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"__version__ = {version!r}\n")
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    out = _probe(str(SYSTEM_PYTHON if SYSTEM_PYTHON.exists() else sys.executable),
                 env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(site)})
    found = _filters().image_probe_problems(out, IMAGE, PINS)
    assert found["missing"] == []
    assert found["differs"] == [f"{IMAGE}: vllm 0.31.1, servekit pins 0.32.0"]
    # importable but no command: the units could not start it
    (bin_dir / "ray").unlink()
    out = _probe(str(SYSTEM_PYTHON if SYSTEM_PYTHON.exists() else sys.executable),
                 env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(site)})
    assert _filters().image_probe_problems(out, IMAGE, PINS)["missing"] == [
        f"{IMAGE}: `import ray` works but the `ray` command is not on the image's PATH "
        "(or in cluster_container_bin_dir)"]


def test_log_lines_before_the_report_and_no_python_at_all():
    """vLLM's import logs to stdout first; an image without python3 prints nothing."""
    report = json.dumps({"packages": {"ray": {"version": "2.60.0", "command": "/usr/bin/ray"},
                                      "vllm": {"version": "0.32.0", "command": "/usr/bin/vllm"}}})
    stdout = "INFO 12-07 05:12:14 [__init__.py:216] Automatically detected platform cuda.\n" + report
    assert _filters().image_probe_problems(stdout, IMAGE, PINS)["missing"] == []
    assert _filters().image_probe_problems("", IMAGE, PINS)["missing"] == [
        f"{IMAGE}: python3 in the image printed no probe report (is there a python3?)"]


@pytest.mark.parametrize(("engine", "extra"), [
    ("docker", []), ("podman", ["-e", "cluster_podman_cgroups=disabled",
                                "-e", "cluster_container_bin_dir=/opt/servekit/venv/bin"])])
def test_probe_argv_runs_the_images_python_without_pulling(tmp_path, engine, extra):
    play = [{"hosts": "localhost", "gather_facts": False, "roles": ["cluster"],
             "vars_files": [str(ROOT / f"roles/runtime/{kind}/main.yml") for kind in ("defaults", "vars")],
             "tasks": [{"ansible.builtin.copy": {"content": "{{ __runtime_probe_argv | to_json }}",
                                                 "dest": str(tmp_path / "argv.json"), "mode": "0644"}}]}]
    # outside the role its lookup finds the probe where a playbook's files/ would hold it
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "image_probe.py").symlink_to(PROBE)
    proc = ansible_playbook("-i", "localhost,", "-c", "local", write_play(tmp_path / "p.yml", play),
                            "-e", f"ansible_python_interpreter={sys.executable}",
                            "-e", f"cluster_container_engine={engine}", *extra, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    argv = json.loads((tmp_path / "argv.json").read_text())
    image = argv.index("vllm/vllm-openai:v0.32.0")
    assert argv[1:5] == ["run", "--rm", "--network=host", "--pull=never"]
    assert argv[image + 1] == "-c" and argv[image + 2] == PROBE.read_text().rstrip("\n")
    if engine == "podman":
        assert "--cgroups=disabled" in argv
        assert argv[image - 1] == "/opt/servekit/venv/bin/python3" and argv[-1] == "/opt/servekit/venv/bin"
    else:
        assert argv[image - 1] == "python3" and argv[-1] == ""


CDI_SPEC = (ROOT / "tests/fixtures/public/nvidia-ctk-cdi-generate.yaml").read_text()


def test_the_cdi_spec_is_made_again_when_the_loaded_driver_is_not_the_one_it_names():
    """Hardware review P2: the spec was generated once (`creates:`), and went stale
    after a driver upgrade. It names the driver by its libraries' version suffix."""
    filters = _filters()
    assert filters.cdi_spec_driver(CDI_SPEC) == "999.88.77"
    assert filters.cdi_spec_stale(CDI_SPEC, "999.88.77\n") is False  # /sys/module/nvidia/version
    assert filters.cdi_spec_stale(CDI_SPEC, "580.95.05\n") is True   # the driver was upgraded
    assert filters.cdi_spec_stale("", "580.95.05") is True           # no spec yet
    assert filters.cdi_spec_stale(CDI_SPEC, "") is False             # no driver loaded: keep it
    assert filters.cdi_spec_stale("", "") is True
