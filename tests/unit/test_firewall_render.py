"""The firewall ruleset for the example RoCE inventory, rendered by Ansible and checked by nft.

The lab loads the same template for real (CI scans the nodes from an
outsider namespace); here the two-node GPU layout is rendered on the
control node and, where nft is installed and we are root, parsed with
`nft -c` (check only, nothing is loaded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventory" / "example-2node-roce" / "hosts.yml"
NFT = shutil.which("nft")


@pytest.fixture(scope="module")
def rulesets(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("firewall")
    play = [{
        "name": "Render the firewall ruleset",
        "hosts": "head:workers",
        "gather_facts": False,
        "vars_files": [str(ROOT / "roles/firewall/defaults/main.yml")],
        "roles": ["cluster"],
        "tasks": [
            {"ansible.builtin.template": {"src": str(ROOT / "templates/firewall.nft.j2"),
                                          "dest": str(tmp / "{{ inventory_hostname }}.nft"), "mode": "0600"},
             "vars": {"firewall_ssh_cidrs": ["10.0.0.0/8", "fd00::/8"]}},
        ],
    }]
    playbook = tmp / "render.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(INVENTORY), str(playbook),
         "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={sys.executable}",
         "-e", f"cluster_templates_dir={ROOT / 'templates'}"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
        env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")),
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return {host: (tmp / f"{host}.nft").read_text() for host in ("spark-01", "spark-02")}


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


@pytest.mark.skipif(NFT is None or os.geteuid() != 0, reason="needs nft (package nftables) and root")
def test_rulesets_parse_with_nft(rulesets, tmp_path):
    for host, text in rulesets.items():
        path = tmp_path / f"{host}.nft"
        path.write_text(text)
        proc = subprocess.run([NFT, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{host}: {proc.stderr}"
