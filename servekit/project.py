"""Where the Ansible project servekit runs lives (site.yml, ansible.cfg, roles, ...).

In a checkout (``pip install -e .``) it is the checkout. An installed wheel
carries a copy as package data under ``servekit/_project`` (setup.py copies
it at build time). ``SERVEKIT_HOME`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
CHECKOUT = _PACKAGE.parent
PACKAGED = _PACKAGE / "_project"


class ProjectNotFound(Exception):
    """No site.yml where servekit looked; one line for the user."""


def project_root() -> Path:
    """SERVEKIT_HOME when set, else the checkout, else the packaged copy: the first with site.yml."""
    env = os.environ.get("SERVEKIT_HOME")
    candidates = [Path(env)] if env else [CHECKOUT, PACKAGED]
    for root in candidates:
        if (root / "site.yml").is_file():
            return root
    raise ProjectNotFound(
        f"no site.yml under {candidates[0]}; set SERVEKIT_HOME to the servekit checkout")


def state_dir(root: Path | None = None) -> Path:
    """Where servekit keeps the control node's state (runner dirs, facts cache, the cluster CA, status)
    for the project at ``root`` (default: ``project_root()``).

    ``SERVEKIT_STATE_DIR`` when set; else ``.cache`` in the project for a checkout (or
    ``SERVEKIT_HOME``); else, for an installed wheel, ``$XDG_STATE_HOME/servekit``
    (``~/.local/state/servekit``), never inside site-packages. Created mode 0700: it holds
    the cluster CA's private key.
    """
    if os.environ.get("SERVEKIT_STATE_DIR"):
        path = Path(os.environ["SERVEKIT_STATE_DIR"])
    else:
        root = root or project_root()
        if root.resolve() != PACKAGED:
            path = root / ".cache"
        else:
            xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
            path = Path(xdg) / "servekit"
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True)
    return path.resolve()
