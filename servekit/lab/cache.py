"""What ``lab down`` keeps: the base root filesystem, the wheelhouse nodes install from, the lab model,
the container image."""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from servekit.lab.base import (
    BASE_PACKAGES,
    LAB_INSTALLER,
    LAB_REQUIREMENTS,
    LAB_ROUTER,
    PLATFORM_PLUGIN_DIR,
    SUITE,
    Paths,
    log,
    run,
    stamp,
)


def host_debian_mirror() -> str | None:
    """The Debian mirror this host's apt uses (deb822 or one-line format), if any."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1)
            if "security" not in uri and uri.startswith(("http://", "https://")):
                return uri
    return None


@dataclass
class Cache:
    """What the lab keeps under ``paths.cache``, made when missing or stale."""

    paths: Paths

    def ensure_base(self) -> None:
        paths = self.paths
        marker = paths.base / ".servekit-base"
        wanted = stamp((SUITE, *BASE_PACKAGES))
        if marker.is_file() and marker.read_text().strip() == wanted:
            log(f"base root filesystem cached at {paths.base}")
            return
        tmp = paths.base.with_name(paths.base.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(tmp)]
        mirror = host_debian_mirror()
        if mirror:
            argv.append(mirror)
        log(f"debootstrap {SUITE} into {tmp} (about a minute)")
        started = time.monotonic()
        run(argv)
        # Per-node identity is made per node: host keys and machine-id.
        for key in (tmp / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        (tmp / "etc" / "machine-id").write_text("")
        # Nodes are reached over the data network with systemd-networkd.
        networkd = tmp / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
        networkd.parent.mkdir(parents=True, exist_ok=True)
        if not networkd.exists():
            networkd.symlink_to("/lib/systemd/system/systemd-networkd.service")
        (tmp / ".servekit-base").write_text(wanted + "\n")
        shutil.rmtree(paths.base, ignore_errors=True)
        tmp.rename(paths.base)
        log(f"base ready in {time.monotonic() - started:.0f} s")

    def ensure_wheelhouse(self) -> None:
        """Download every wheel the lab nodes install, once, with the control node's pip."""
        paths = self.paths
        marker = paths.wheelhouse / ".servekit-requirements"
        wanted = stamp((*LAB_REQUIREMENTS, LAB_INSTALLER))
        if marker.is_file() and marker.read_text().strip() == wanted:
            log(f"wheelhouse cached at {paths.wheelhouse}")
            return
        paths.wheelhouse.mkdir(parents=True, exist_ok=True)
        log(f"downloading {' '.join(LAB_REQUIREMENTS)}, their dependencies and {LAB_INSTALLER} "
            f"into {paths.wheelhouse}")
        started = time.monotonic()
        run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
             "--dest", str(paths.wheelhouse), *LAB_REQUIREMENTS, LAB_INSTALLER])
        marker.write_text(wanted + "\n")
        log(f"wheelhouse ready in {time.monotonic() - started:.0f} s")

    def ensure_router_wheels(self) -> None:
        """The router's wheels (LAB_ROUTER) beside the rest; a marker of their own keeps the big download."""
        paths = self.paths
        marker = paths.wheelhouse / ".servekit-router"
        wanted = stamp(LAB_ROUTER)
        if marker.is_file() and marker.read_text().strip() == wanted:
            return
        log(f"downloading {' '.join(LAB_ROUTER)} and their dependencies into {paths.wheelhouse}")
        run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
             "--dest", str(paths.wheelhouse), *LAB_ROUTER])
        marker.write_text(wanted + "\n")

    def ensure_platform_wheel(self) -> None:
        """Build the lab-only vLLM platform plugin (lab/vllm-lab-platform) into the wheelhouse.

        Only the lab inventory asks for it (runtime_extra_requirements), so only
        lab nodes install it. Rebuilt when its sources change.
        """
        paths = self.paths
        source = paths.root / PLATFORM_PLUGIN_DIR
        files = sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and ".egg-info" not in str(p) and "build" not in p.relative_to(source).parts)
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()
        marker = paths.wheelhouse / ".servekit-lab-platform"
        if marker.is_file() and marker.read_text().strip() == digest and any(
                paths.wheelhouse.glob("servekit_lab_platform-*.whl")):
            return
        for old in paths.wheelhouse.glob("servekit_lab_platform-*.whl"):
            old.unlink()
        with tempfile.TemporaryDirectory() as tmp:
            # a copy: pip's build leaves build/ and *.egg-info next to the sources
            shutil.copytree(source, Path(tmp) / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
            run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                 "--wheel-dir", str(paths.wheelhouse), str(Path(tmp) / "src")])
        marker.write_text(digest + "\n")
        log(f"lab platform plugin built into {paths.wheelhouse}")

    def ensure_model(self) -> None:
        """lab-tiny and lab-tiny-b (servekit/lab/tinymodel.py SEEDS), generated once."""
        from servekit.lab.tinymodel import SEEDS, generate

        for name, path in (("lab-tiny", self.paths.model), ("lab-tiny-b", self.paths.model_b)):
            if (path / "model.safetensors").is_file():
                log(f"lab model {name} cached at {path}")
                continue
            log(f"generating the lab model {name} into {path}")
            generate(path, seed=SEEDS[name])

    def container_image(self, build: bool) -> Path | None:
        """The container runtime's image archive (servekit/lab/image.py): built when asked, else if cached."""
        from servekit.lab import image as lab_image

        paths = self.paths
        if build:
            return lab_image.ensure_image(paths.cache, paths.base, paths.wheelhouse, LAB_REQUIREMENTS,
                                          log=log)
        return lab_image.cached_image(paths.cache, paths.base, paths.wheelhouse, LAB_REQUIREMENTS)
