"""``--check`` on a fresh node: the stages that write a unit and then start it do not fail.

A dry run writes no unit, so systemd has nothing to start: the start task is
skipped when the unit task reported a change in this run (one condition, the
same in every role), never matched on systemd's error text. Here the ray and
firewall roles run in check mode on the control node as two fresh nodes
(local connection, unit directories and paths under a temporary directory);
this machine runs no systemd as PID 1, so a start task that ran would fail.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, ansible_playbook, write_play

HOSTS = {"node-a": "10.0.0.10", "node-b": "10.0.0.11"}
UNIT_START = re.compile(r"^\s+(?:- )?(?:ansible\.builtin\.)?systemd_service:", re.M)
START_TASKS = {
    "ray": ["Start the Ray head", "Start the Ray workers"],
    "firewall": ["Enable and start the firewall"],
}


def _fresh_nodes(tmp: Path, role: str, **extra_vars) -> tuple[int, str]:
    inventory = {"all": {"children": {
        "head": {"hosts": {"node-a": {"ansible_host": HOSTS["node-a"]}}},
        "workers": {"hosts": {"node-b": {"ansible_host": HOSTS["node-b"]}}},
    }}}
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = [{"name": f"Dry run of the {role} stage on fresh nodes", "hosts": "head:workers",
             "gather_facts": False, "roles": ["cluster", role]}]
    args = ["-i", tmp / "hosts.yml", write_play(tmp / "play.yml", play), "--check", "--diff",
            "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}"]
    for key, value in extra_vars.items():
        args += ["-e", yaml.safe_dump({key: value}, default_flow_style=True).strip()]
    proc = ansible_playbook(*args, unset=["SSH_CONNECTION"],
                            env={"SSH_CONNECTION": "198.51.100.7 50022 10.0.0.10 22"}, timeout=240)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("role", sorted(START_TASKS))
def test_dry_run_of_a_fresh_node_skips_starting_the_unit_it_would_write(tmp_path, role):
    extra = {"ray": {"ray_unit_dir": str(tmp_path / "units"),
                     "cluster_ray_auth_token_file": str(tmp_path / "ray-token")},
             "firewall": {"firewall_rules_file": str(tmp_path / "{{ inventory_hostname }}.nft")}}[role]
    rc, out = _fresh_nodes(tmp_path, role, **extra)
    assert rc == 0, out[-4000:]
    for name in START_TASKS[role]:
        section = out.split(f"TASK [{role} : {name}]", 1)
        assert len(section) == 2, f"the dry run did not reach {name!r}"
        result = section[1].split("TASK [", 1)[0]
        assert "skipping:" in result and "changed:" not in result and "fatal:" not in result, result
    assert not (tmp_path / "units").exists() and not list(tmp_path.glob("*.nft")), "a dry run wrote files"


def test_no_role_matches_systemds_error_text_to_pass_a_dry_run():
    """The one mechanism: no failed_when on 'Could not find the requested service' left anywhere."""
    pasted = [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("roles/*/*/*.yml"))
              if "Could not find the requested service" in p.read_text()]
    assert not pasted, f"use `when: not (ansible_check_mode and <unit task> is changed)` in {pasted}"
    starts = sum(len(UNIT_START.findall(p.read_text())) for p in ROOT.glob("roles/*/*/*.yml"))
    assert starts >= 10, "the scan found too few systemd_service tasks to be looking at the roles"


def test_dry_run_of_a_fresh_head_skips_starting_the_router_and_its_keeper(tmp_path):
    """The vllm role's tasks/router.yml with replica engines, in check mode on a fresh head: the
    router's and the rotation keeper's units would be written, so neither start runs (nor the
    reads of the router that is not there), and nothing is written."""
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "head": {"hosts": {"node-a": dict(host, ansible_host=HOSTS["node-a"])}}}}}))
    out = tmp_path / "out"
    overrides = {
        "__vllm_single": False, "vllm_unit_dir": str(out), "vllm_router_workers_file": str(out / "w.json"),
        "vllm_api_proxy_config": str(out / "api-proxy.conf"), "cluster_root": str(out),
        "__vllm_router_workers": [{"url": "http://10.0.0.10:8100", "model_id": "m"},
                                  {"url": "http://10.0.0.11:8100", "model_id": "m"}],
        "__vllm_models_data": [{"id": "m", "object": "model", "created": 0, "owned_by": "servekit"}],
        # tasks/secrets.yml's results, which run before router.yml
        "__vllm_secrets": {"changed": False}, "__vllm_secrets_gone": {"changed": False}}
    play = [{"hosts": "head", "gather_facts": False,
             "vars_files": [str(ROOT / "roles/cluster/defaults/main.yml")],
             "tasks": [{"ansible.builtin.include_role": {"name": "vllm", "tasks_from": "router"}}]}]
    (tmp_path / "vars.json").write_text(json.dumps(overrides))
    proc = ansible_playbook("-i", tmp_path / "hosts.yml", write_play(tmp_path / "play.yml", play),
                            "--check", "--diff", "-e", f"@{tmp_path / 'vars.json'}", timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:]
    starts = ("Run the router", "Run the rotation keeper", "Read the replica engines the running router has")
    for name in starts:
        section = proc.stdout.split(f"TASK [vllm : {name}]", 1)
        assert len(section) == 2, f"the dry run did not reach {name!r}"
        result = section[1].split("TASK [", 1)[0]
        assert "skipping:" in result and "changed:" not in result and "fatal:" not in result, result
    keeper_unit = proc.stdout.split("TASK [vllm : Write the rotation keeper's unit]", 1)[1].split("TASK [")[0]
    assert "changed: [node-a]" in keeper_unit, keeper_unit
    assert not out.exists(), "a dry run wrote files"
