"""Shared fixtures: paths into the checkout. Running Ansible: tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import ROOT
from render_cluster import ExampleRenders

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


@pytest.fixture(scope="session")
def example_render(tmp_path_factory) -> ExampleRenders:
    """``example_render(name, runtime=None)``: the folder of the one full render (tests/render_cluster.py)
    of ``inventory/<name>`` this session, shared by every test that reads it."""
    return ExampleRenders(tmp_path_factory)
