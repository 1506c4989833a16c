"""The ray stage's readiness decision: every node joined, with the devices vLLM needs.

Runs the role's own check tasks on the control node (--start-at-task), fed
the head's `ray.nodes()` summary ({address: devices}) as the wait task
registers it. Before issue 11 a node that joined with 0 GPUs passed, and
vLLM then hung on "Waiting for creating a placement group".
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import ansible_playbook

HOSTS = """\
all:
  children:
    head:
      hosts:
        lab-head:
          {ansible_connection: local, cluster_data_address: 10.0.0.10}
    workers:
      hosts:
        lab-worker-1:
          {ansible_connection: local, cluster_data_address: 10.0.0.11}
"""
PLAY = """\
- name: Ray readiness decision
  hosts: head:workers
  gather_facts: false
  roles:
    - role: cluster
    - role: ray
"""


def _readiness(tmp_path: Path, alive: dict, executor: str = "ray") -> subprocess.CompletedProcess:
    (tmp_path / "hosts.yml").write_text(HOSTS)
    (tmp_path / "play.yml").write_text(PLAY)
    extra = {"__ray_nodes": {"rc": 0, "stdout": json.dumps(alive), "stderr_lines": []},
             "cluster_executor": executor}
    return ansible_playbook("-i", tmp_path / "hosts.yml", tmp_path / "play.yml",
                            "--start-at-task", "Check every node joined the Ray cluster",
                            "-e", json.dumps(extra), timeout=120)


def test_every_node_with_its_device_passes(tmp_path):
    proc = _readiness(tmp_path, {"10.0.0.10": 1.0, "10.0.0.11": 1.0})
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_a_node_with_no_device_fails_naming_it(tmp_path):
    proc = _readiness(tmp_path, {"10.0.0.10": 1.0, "10.0.0.11": 0})
    assert proc.returncode != 0
    assert "ray: lab-worker-1 (10.0.0.11) advertises 0 GPU to Ray" in " ".join(proc.stdout.split())
    assert "cluster_devices_per_node = 1" in " ".join(proc.stdout.split())


def test_mp_needs_no_device_from_ray(tmp_path):
    proc = _readiness(tmp_path, {"10.0.0.10": 0, "10.0.0.11": 0}, executor="mp")
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize("alive", [{"10.0.0.10": 1.0}, {}])
def test_a_missing_node_fails_naming_it(tmp_path, alive):
    proc = _readiness(tmp_path, alive)
    assert proc.returncode != 0
    assert "lab-worker-1 did not join the Ray cluster" in " ".join(proc.stdout.split())
