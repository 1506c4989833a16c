"""The firewall ruleset, rendered by the role's own tasks and checked by nft.

The role's ``apply.yml`` runs in check mode on the control node (local
connection, a two-node GPU layout like inventory/example-2node-roce): it
finds the control node the way it does on a node, renders the ruleset in its
compare task and, being a dry run, loads and schedules nothing; the test
reads the rendered text from that task's diff. Where nft is installed and we
are root, the text is parsed with ``nft -c`` (check only, nothing is loaded).
The lab loads the same template for real (CI scans the nodes from an
outsider namespace, and .ci/lockout-check forces a lock-out).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ansible_playbook, write_play

NFT = shutil.which("nft")
HOSTS = {"spark-01": "192.168.100.1", "spark-02": "192.168.100.2"}


def render(tmp: Path, ssh_connection: str | None, **extra_vars) -> dict[str, str]:
    """Rulesets per host, rendered by roles/firewall/tasks/apply.yml in --check --diff."""
    inventory = {"all": {"children": {
        "head": {"hosts": {"spark-01": {"ansible_host": HOSTS["spark-01"]}}},
        "workers": {"hosts": {"spark-02": {"ansible_host": HOSTS["spark-02"]}}},
    }}}
    (tmp / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = [{
        "name": "Render the firewall ruleset with the role's own tasks",
        "hosts": "head:workers",
        "gather_facts": False,
        "roles": ["cluster"],
        "tasks": [
            {"ansible.builtin.include_role": {"name": "firewall", "tasks_from": "apply"},
             "vars": {"firewall_rules_file": str(tmp / "{{ inventory_hostname }}.persisted.nft")}},
            {"ansible.builtin.copy": {"content": "{{ __firewall_compare.diff[0].after }}",
                                      "dest": str(tmp / "{{ inventory_hostname }}.nft"), "mode": "0600"},
             "check_mode": False},
        ],
    }]
    args = ["-i", tmp / "hosts.yml", write_play(tmp / "render.yml", play), "--check", "--diff",
            "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}"]
    for key, value in extra_vars.items():
        args += ["-e", yaml.safe_dump({key: value}, default_flow_style=True).strip()]
    # what sshd sets on a node; a local connection passes it to the task
    proc = ansible_playbook(*args, unset=["SSH_CONNECTION"],
                            env={"SSH_CONNECTION": ssh_connection} if ssh_connection is not None else None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Schedule the revert" not in proc.stdout, "a dry run must not schedule a revert"
    assert not list(tmp.glob("*.persisted.nft*")), "a dry run must write no ruleset"
    return {host: (tmp / f"{host}.nft").read_text() for host in HOSTS}


def input_rules(text: str) -> list[str]:
    """The rules of the input chain, in order, without comments."""
    chain = text.split("chain input {", 1)[1].split("\n  }", 1)[0]
    lines = [line.strip() for line in chain.splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "type filter"))]


@pytest.fixture(scope="module")
def rulesets(tmp_path_factory) -> dict[str, str]:
    return render(tmp_path_factory.mktemp("firewall"), "198.51.100.7 50022 192.168.100.1 22",
                  firewall_ssh_cidrs=["10.0.0.0/8", "fd00::/8"])


def test_cluster_nodes_are_trusted_and_the_default_is_drop(rulesets):
    for text in rulesets.values():
        assert "policy drop;" in text
        assert "elements = { 192.168.100.1, 192.168.100.2 }" in text
        assert "ip saddr @cluster4 accept" in text


def test_ssh_from_the_given_networks_and_the_api_only_on_the_head(rulesets):
    for text in rulesets.values():
        assert "ip saddr 10.0.0.0/8 tcp dport 22 accept" in text
        assert "ip6 saddr fd00::/8 tcp dport 22 accept" in text
    assert "tcp dport 8000 accept" in rulesets["spark-01"]
    assert "tcp dport 8000" not in rulesets["spark-02"]


def test_the_control_node_comes_first_even_outside_the_ssh_networks(rulesets):
    for host, text in rulesets.items():
        assert input_rules(text)[0] == "ip saddr 198.51.100.7 tcp dport 22 accept", f"{host}:\n{text}"


def test_empty_ssh_networks_and_a_wrong_port_keep_the_control_node_in(tmp_path):
    # sshd answers on 2222 (the node's view); the inventory says port 22 and no networks at all
    rulesets = render(tmp_path, "198.51.100.7 50022 192.168.100.1 2222",
                      firewall_ssh_cidrs=[], firewall_ssh_port=22)
    for host, text in rulesets.items():
        rules = input_rules(text)
        assert rules[0] == "ip saddr 198.51.100.7 tcp dport 2222 accept", f"{host}:\n{text}"
        assert not [r for r in rules[1:] if "tcp dport 22 " in r or "tcp dport 2222 " in r], rules


@pytest.mark.parametrize(("ssh_connection", "rule"), [
    ("2001:db8::7 50022 2001:db8::1 22", "ip6 saddr 2001:db8::7 tcp dport 22 accept"),
    ("::ffff:198.51.100.7 50022 ::ffff:192.168.100.1 22", "ip saddr 198.51.100.7 tcp dport 22 accept"),
    ("fe80::7%eth0 50022 fe80::1%eth0 22", "ip6 saddr fe80::7 tcp dport 22 accept"),
], ids=["ipv6", "ipv4-mapped", "link-local-zone"])
def test_control_node_address_forms(tmp_path, ssh_connection, rule):
    rulesets = render(tmp_path, ssh_connection, firewall_ssh_cidrs=[])
    assert input_rules(rulesets["spark-02"])[0] == rule


def _source_address(host: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


@pytest.mark.skipif(_source_address(HOSTS["spark-02"]) is None, reason="no route towards 192.168.100.2 here")
def test_without_ssh_connection_the_address_towards_ansible_host_and_ansible_port(tmp_path):
    rulesets = render(tmp_path, None, firewall_ssh_cidrs=[], ansible_port=2022)
    for host, text in rulesets.items():
        expected = f"ip saddr {_source_address(HOSTS[host])} tcp dport 2022 accept"
        assert input_rules(text)[0] == expected, f"{host}:\n{text}"


@pytest.mark.skipif(NFT is None or os.geteuid() != 0, reason="needs nft (package nftables) and root")
def test_rulesets_parse_with_nft(rulesets, tmp_path):
    for host, text in rulesets.items():
        path = tmp_path / f"{host}.nft"
        path.write_text(text)
        proc = subprocess.run([NFT, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{host}: {proc.stderr}"


def test_the_control_node_rule_is_explained_in_the_ruleset(rulesets):
    assert re.search(r"# First, whatever firewall_ssh_cidrs and firewall_ssh_port say", rulesets["spark-01"])
