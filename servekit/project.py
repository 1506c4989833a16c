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
