"""Shared fixtures: paths into the checkout. Running Ansible: tests/helpers.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, ansible_playbook
from render_cluster import ExampleRenders

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


@pytest.fixture(scope="session")
def example_render(tmp_path_factory) -> ExampleRenders:
    """``example_render(name, runtime=None)``: the folder of the one full render (tests/render_cluster.py)
    of ``inventory/<name>`` this session, shared by every test that reads it."""
    return ExampleRenders(tmp_path_factory)


@pytest.fixture(scope="session")
def example_validate():
    """``example_validate(name)``: the one run this session of the validate stage
    (playbooks/validate.yml) on the shipped ``inventory/<name>``, as shipped. No host is contacted
    (the play runs on localhost; ssh is /bin/false should anything try)."""
    done: dict[str, subprocess.CompletedProcess] = {}

    def validate(name: str) -> subprocess.CompletedProcess:
        if name not in done:
            done[name] = ansible_playbook(
                "-i", ROOT / "inventory" / name / "hosts.yml", ROOT / "playbooks" / "validate.yml",
                env={"ANSIBLE_NOCOLOR": "1", "ANSIBLE_SSH_EXECUTABLE": "/bin/false", "ANSIBLE_TIMEOUT": "1"},
                timeout=300)
        return done[name]
    return validate
