"""Install the collections pinned in collections/requirements.yml into collections/ansible_collections.

Two sources: ``bundle`` (default) takes each collection from a pinned release of
the ``ansible`` community package on the Python package index (pip's own
configuration, so an index mirror works where Ansible Galaxy is unreachable)
and checks that the version inside is the pinned one; ``galaxy`` runs
``ansible-galaxy collection install``. Either way a collection already there
at its pinned version is left alone, and a wrong version after the install
is an error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.yml"
TARGET = HERE / "ansible_collections"


class InstallError(Exception):
    """What went wrong, in one line for the user."""


def pinned(requirements: Path) -> dict[str, str]:
    """``{"namespace.name": "X.Y.Z"}`` from a requirements file; every entry needs an exact version."""
    entries = (yaml.safe_load(requirements.read_text()) or {}).get("collections") or []
    pins = {}
    for entry in entries:
        version = str(entry.get("version", ""))
        if not version or any(c in version for c in "<>=!*,"):
            raise InstallError(f"{requirements}: {entry.get('name')} needs an exact version (X.Y.Z)")
        pins[entry["name"]] = version
    return pins


def installed_version(root: Path, name: str) -> str | None:
    """The version of collection ``name`` under ``root`` (an ansible_collections folder), or None."""
    manifest = root.joinpath(*name.split("."), "MANIFEST.json")
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text())["collection_info"]["version"]


def extract_from_bundle(wheel: Path, name: str, dest: Path) -> None:
    """Unpack collection ``name`` from an ``ansible`` package wheel into ``dest`` (an ansible_collections)."""
    prefix = "ansible_collections/" + name.replace(".", "/") + "/"
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(prefix)]
        if not members:
            raise InstallError(f"{wheel.name} carries no {name}")
        archive.extractall(dest.parent, members=members)


def download_bundle(bundle: str, cache: Path) -> Path:
    """``pip download`` the ``ansible`` release ``bundle`` (e.g. ansible==12.3.0) into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           "--dest", str(cache), bundle], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InstallError(f"pip download {bundle} failed:\n{proc.stderr.strip()}")
    version = bundle.split("==", 1)[1]
    wheels = sorted(cache.glob(f"ansible-{version}-*.whl"))
    if not wheels:
        raise InstallError(f"pip download {bundle} left no wheel in {cache}")
    return wheels[0]


def install_from_bundle(pins: dict[str, str], bundle: str, cache: Path) -> None:
    wheel = download_bundle(bundle, cache)
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        staged = Path(tmp) / "ansible_collections"
        for name, version in pins.items():
            extract_from_bundle(wheel, name, staged)
            found = installed_version(staged, name)
            if found != version:
                raise InstallError(
                    f"{bundle} carries {name} {found}, {REQUIREMENTS.name} pins {version}: set "
                    f"COLLECTIONS_BUNDLE to an ansible release that carries {version}, or use "
                    f"COLLECTIONS_FROM=galaxy")
            dest = TARGET.joinpath(*name.split("."))
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            staged.joinpath(*name.split(".")).rename(dest)


def install_from_galaxy(requirements: Path) -> None:
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    proc = subprocess.run([str(galaxy), "collection", "install", "--force", "-r", str(requirements),
                           "-p", str(HERE)], check=False)
    if proc.returncode != 0:
        raise InstallError("ansible-galaxy collection install failed (see above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", choices=["bundle", "galaxy"], default="bundle")
    parser.add_argument("--bundle", default="ansible==12.3.0",
                        help="the ansible community package release to take collections from")
    parser.add_argument("--cache", type=Path, default=HERE.parent / ".cache" / "collections",
                        help="where the bundle's wheel is downloaded (kept for the next install)")
    args = parser.parse_args(argv)
    try:
        pins = pinned(REQUIREMENTS)
        missing = {n: v for n, v in pins.items() if installed_version(TARGET, n) != v}
        if missing and args.source == "bundle":
            install_from_bundle(missing, args.bundle, args.cache)
        elif missing:
            install_from_galaxy(REQUIREMENTS)
        wrong = [f"{n} {installed_version(TARGET, n)} (pinned {v})" for n, v in pins.items()
                 if installed_version(TARGET, n) != v]
        if wrong:
            raise InstallError("not at the pinned version after the install: " + ", ".join(wrong))
    except InstallError as err:
        print(f"collections/install.py: {err}", file=sys.stderr)
        return 1
    for name, version in pins.items():
        print(f"{name} {version} in {TARGET.joinpath(*name.split('.'))}"
              + (" (installed)" if name in missing else " (already there)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
