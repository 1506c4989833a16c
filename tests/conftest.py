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
# The unit tests' plays run on localhost (connection local), where Mitogen (ansible.cfg's
# default strategy) saves nothing and costs about 1.5 s of start-up per play (a local
# probe play: 4.1 s against 2.4 s); two files of them took 122 s against 60 s. Its own
# test (test_strategy.py) runs the default; the lab phases in CI run everything under it.
os.environ.setdefault("ANSIBLE_STRATEGY", "linear")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def registry_path() -> Path:
    return ROOT / "config" / "model_registry.yml"
