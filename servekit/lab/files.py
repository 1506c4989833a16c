"""The files the lab writes for Ansible and for itself: inventory/lab (hosts.yml, lab.yml, the
ansible-vault encrypted vault.yml), and lab.json, the nodes of the lab that is up."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from servekit.lab.base import NODE_WHEELHOUSE, Node, Paths, write_file

HEADER = "# Written by `servekit lab up`; removed by `servekit lab down`. Do not edit.\n"


def _vault_lib(password: str):
    from ansible.constants import DEFAULT_VAULT_ID_MATCH
    from ansible.parsing.vault import VaultLib, VaultSecret

    return VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(password.encode()))])


@dataclass
class LabFiles:
    """The lab's files at ``paths``: its inventory, vault and lab.json."""

    paths: Paths

    def write_inventory(self, nodes: list[Node], container_image: Path | None = None) -> None:
        paths = self.paths
        groups: dict = {"head": {"hosts": {}}, "workers": {"hosts": {}}}
        for node in nodes:
            groups[node.group]["hosts"][node.name] = {"ansible_host": node.address,
                                                      "cluster_rdma_netdev": node.data_if}
        hosts = {"all": {"children": {"cluster": {"children": groups}}}}
        write_file(paths.inventory / "hosts.yml", HEADER + "---\n" + yaml.safe_dump(hosts, sort_keys=False))
        lab_vars = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(paths.key),
            "ansible_ssh_common_args":
                f"-o UserKnownHostsFile={paths.known_hosts} -o StrictHostKeyChecking=yes",
            "lab_wheelhouse": NODE_WHEELHOUSE,
            "lab_model_source": str(paths.model),
            "lab_model_b_source": str(paths.model_b),
        }
        if container_image:
            lab_vars["lab_container_image_archive"] = str(container_image)
        write_file(paths.inventory / "group_vars/all/lab.yml",
                   HEADER + "---\n" + yaml.safe_dump(lab_vars, sort_keys=False))

    def generated(self) -> tuple[Path, ...]:
        """What ``lab up`` writes into the checkout (``lab down`` removes them)."""
        inventory = self.paths.inventory
        return (inventory / "hosts.yml", inventory / "group_vars/all/lab.yml", self.vault_file)

    @property
    def vault_file(self) -> Path:
        return self.paths.inventory / "group_vars/all/vault.yml"

    def read_vault(self) -> dict:
        """The lab's decrypted secrets ({} when there is no vault yet)."""
        password = self.paths.vault_password
        if not (self.vault_file.is_file() and password.is_file()):
            return {}
        vault = _vault_lib(password.read_text().strip())
        return yaml.safe_load(vault.decrypt(self.vault_file.read_bytes())) or {}

    def write_vault(self, data: dict) -> None:
        """Encrypt ``data`` into vault.yml (0600) with the lab's password, made on first use."""
        password = self.paths.vault_password
        if not password.is_file():
            write_file(password, secrets.token_urlsafe(32) + "\n", 0o600)
        vault = _vault_lib(password.read_text().strip())
        write_file(self.vault_file, vault.encrypt(yaml.safe_dump(data).encode()).decode(), 0o600)

    def ensure_vault(self) -> None:
        """The lab's secrets, ansible-vault encrypted in inventory/lab/group_vars/all/vault.yml.

        An API key, and a stand-in HF token (lab-tiny is local, so vLLM never
        sends it anywhere) that lets the verify suite prove a token stays out of
        logs, diffs and process lists. The vault password lives in the lab state
        (0600); the Makefile hands it to Ansible with ANSIBLE_VAULT_PASSWORD_FILE
        (``servekit lab vault-path``), and ``vault_env`` to servekit's own runs.
        Made once and kept while the lab is up; a missing secret is added.
        """
        current = self.read_vault()
        wanted = {
            "vault_vllm_api_key": lambda: "sk-lab-" + secrets.token_urlsafe(24),
            "vault_hf_token": lambda: "hf_lab" + secrets.token_hex(17),
        }
        missing = {key: make() for key, make in wanted.items() if key not in current}
        if missing:
            self.write_vault({**current, **missing})

    def vault_env(self, inventory: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
        """ANSIBLE_VAULT_PASSWORD_FILE for a run on the lab's inventory, unless one is set already.

        Empty for any other inventory, when the caller set its own, or when the
        lab's password file is absent or unreadable (ansible then names the vault).
        """
        paths = self.paths
        if "ANSIBLE_VAULT_PASSWORD_FILE" in environ:
            return {}
        if inventory.resolve() not in (paths.inventory.resolve(), (paths.inventory / "hosts.yml").resolve()):
            return {}
        if not os.access(paths.vault_password, os.R_OK):
            return {}
        return {"ANSIBLE_VAULT_PASSWORD_FILE": str(paths.vault_password)}

    def save_state(self, nodes: list[Node]) -> None:
        write_file(self.paths.state_file, json.dumps({"nodes": [asdict(n) for n in nodes]}, indent=2) + "\n",
                   0o600)

    def load_nodes(self) -> list[Node]:
        try:
            data = json.loads(self.paths.state_file.read_text())
        except OSError:
            return []
        return [Node(**n) for n in data["nodes"]]
