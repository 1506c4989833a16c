"""Where an ansible run finds its vault password file when the caller's environment names none.

The core (runner.ansible_env, inventory.ClusterView.load) asks the sources registered here.
The lab registers its own (servekit/lab/__init__.py: the lab's inventory gets the lab's
password file), so the core never imports the lab (tests/unit/test_import_direction.py);
servekit/cli.py imports the lab, so every ``servekit`` command has it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VaultSource:
    # (project root, inventory) -> {"ANSIBLE_VAULT_PASSWORD_FILE": ...}, or {} for another inventory
    env: Callable[[Path, Path], dict[str, str]]
    # (project root) -> a hint for a vault error, e.g. "the lab's is /var/lib/servekit/lab/vault-pass"
    hint: Callable[[Path], str]


_SOURCES: list[VaultSource] = []


def register(source: VaultSource) -> None:
    if source not in _SOURCES:
        _SOURCES.append(source)


def vault_env(root: Path, inventory: Path) -> dict[str, str]:
    """The first registered source's vault settings for a run on ``inventory`` ({} when none has any)."""
    for source in _SOURCES:
        env = source.env(root, inventory)
        if env:
            return env
    return {}


def vault_hint(root: Path) -> str:
    """What to set after a vault error: ANSIBLE_VAULT_PASSWORD_FILE, and where the sources' files are."""
    return "; ".join(["set ANSIBLE_VAULT_PASSWORD_FILE", *(source.hint(root) for source in _SOURCES)])
