"""collections/install.py: the pinned collections taken from the ansible community package's wheel.

The wheel here is a small stand-in (a zip with the collection's MANIFEST.json);
no package index is asked.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

_spec = importlib.util.spec_from_file_location("collections_install", ROOT / "collections" / "install.py")
install = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install)


def _bundle(tmp: Path, collections: dict[str, str]) -> Path:
    """A stand-in ansible wheel carrying ``{"ns.name": version}``."""
    wheel = tmp / "ansible-12.3.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("ansible/__init__.py", "")
        for name, version in collections.items():
            base = "ansible_collections/" + name.replace(".", "/")
            archive.writestr(f"{base}/MANIFEST.json", json.dumps({"collection_info": {"version": version}}))
            archive.writestr(f"{base}/plugins/modules/x.py", "")
    return wheel


@pytest.fixture
def project(tmp_path, monkeypatch):
    """install.py's folders under tmp_path, and a bundle download that returns the stand-in."""
    monkeypatch.setattr(install, "HERE", tmp_path)
    monkeypatch.setattr(install, "TARGET", tmp_path / "ansible_collections")
    monkeypatch.setattr(install, "REQUIREMENTS", tmp_path / "requirements.yml")
    return tmp_path


def test_the_projects_requirements_pin_exact_versions():
    assert install.pinned(ROOT / "collections" / "requirements.yml") == {"community.crypto": "3.0.5"}


@pytest.mark.parametrize("version", ["", ">=3.0.0", "3.*", "3.0.5,<4"])
def test_a_requirement_without_an_exact_version_is_refused(tmp_path, version):
    req = tmp_path / "requirements.yml"
    req.write_text(f"collections:\n  - name: community.crypto\n    version: '{version}'\n")
    with pytest.raises(install.InstallError, match="needs an exact version"):
        install.pinned(req)


def test_the_pinned_collection_is_taken_from_the_bundle(project, monkeypatch):
    wheel = _bundle(project, {"community.crypto": "3.0.5", "community.general": "11.0.0"})
    monkeypatch.setattr(install, "download_bundle", lambda bundle, cache: wheel)
    install.install_from_bundle({"community.crypto": "3.0.5"}, "ansible==12.3.0", project / "cache")
    assert install.installed_version(project / "ansible_collections", "community.crypto") == "3.0.5"
    assert (project / "ansible_collections/community/crypto/plugins/modules/x.py").is_file()
    assert not (project / "ansible_collections/community/general").exists(), "only what is pinned"


def test_a_bundle_with_another_version_fails_naming_both_and_installs_nothing(project, monkeypatch):
    wheel = _bundle(project, {"community.crypto": "2.22.3"})
    monkeypatch.setattr(install, "download_bundle", lambda bundle, cache: wheel)
    with pytest.raises(install.InstallError, match=r"carries community.crypto 2.22.3, .* pins 3.0.5"):
        install.install_from_bundle({"community.crypto": "3.0.5"}, "ansible==11.0.0", project / "cache")
    assert install.installed_version(project / "ansible_collections", "community.crypto") is None


def test_main_leaves_a_collection_at_its_pin_alone(project, monkeypatch, capsys):
    (project / "requirements.yml").write_text("collections:\n  - {name: community.crypto, version: 3.0.5}\n")
    wheel = _bundle(project, {"community.crypto": "3.0.5"})
    monkeypatch.setattr(install, "download_bundle", lambda bundle, cache: wheel)
    assert install.main([]) == 0
    monkeypatch.setattr(install, "download_bundle", lambda bundle, cache: pytest.fail("downloaded again"))
    assert install.main([]) == 0
    assert "(already there)" in capsys.readouterr().out
