"""Shared fixtures: paths into the checkout. Running Ansible: tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import ROOT

# ansible.cfg's default inventory is the lab, whose vaulted group_vars exist
# while a lab is up: plays the tests run on the implicit localhost must not
# depend on that (testinfra's verify suite passes its inventory explicitly).
os.environ["ANSIBLE_INVENTORY"] = str(ROOT / "tests" / "fixtures" / "no-hosts.yml")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def registry_path() -> Path:
    return ROOT / "config" / "model_registry.yml"
