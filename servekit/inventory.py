"""A cluster as its inventory describes it: head, nodes, API URL and key, ports.

Every value is what Ansible itself makes of the inventory: ``resolve_inventory``
(run in its own process by ``ClusterView.load``, with the caller's Ansible
environment: ansible.cfg, the vault password file) loads the inventory with
Ansible's InventoryManager and VariableManager, the vault decrypted, over the
roles' ``defaults/main.yml`` (and their ``vars/main.yml``, which defaults may
name), and renders each value with Ansible's Templar: lookups (``env``,
vault), filters and nested templates as a play would see them. One place
decides "MODEL_NAME, else the default": the cluster role's ``cluster_model``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from servekit.module_utils import placement
from servekit.module_utils.vllm_registry import load_registry_file
from servekit.vault import vault_hint


class InventoryError(Exception):
    """The inventory cannot be read or does not describe one cluster."""


def role_defaults(root: Path) -> dict[str, Any]:
    """Every role's ``defaults/main.yml``, merged (role inputs carry their role's prefix)."""
    merged: dict[str, Any] = {}
    for path in sorted(root.glob("roles/*/defaults/main.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


def _plain(value: Any) -> Any:
    """A templated value as JSON-able data (Ansible's tagged containers and scalars included)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def resolve_inventory(inventory: Path, root: Path) -> dict[str, Any]:
    """The head, the workers and every node's variables (role defaults and the inventory's
    own), each rendered by Ansible's Templar. A value Ansible cannot render outside a play
    (one that reads another host's facts, say) stays as written."""
    from ansible import constants as C
    from ansible.cli import CLI
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    init_plugin_loader()  # lookups such as ansible.builtin.env are plugins
    loader = DataLoader()
    password_files = [C.DEFAULT_VAULT_PASSWORD_FILE] if C.DEFAULT_VAULT_PASSWORD_FILE else []
    loader.set_vault_secrets(CLI.setup_vault_secrets(
        loader, vault_ids=C.DEFAULT_VAULT_IDENTITY_LIST, vault_password_files=password_files,
        auto_prompt=False))
    manager = InventoryManager(loader=loader, sources=[str(inventory)])
    variables = VariableManager(loader=loader, inventory=manager)
    layers = [{}, {}]  # role defaults, role vars (templates in defaults may name the latter)
    for layer, kind in zip(layers, ("defaults", "vars"), strict=True):
        for path in sorted(root.glob(f"roles/*/{kind}/main.yml")):
            layer.update(loader.load_from_file(str(path), trusted_as_template=True) or {})
    defaults, role_vars = layers
    magic = set(variables.get_vars(include_hostvars=False))

    def group(name: str) -> list[str]:
        found = manager.groups.get(name)
        return [host.name for host in found.get_hosts()] if found else []

    heads = group("head")
    if len(heads) != 1:
        raise InventoryError(f"{inventory}: group 'head' must hold exactly one host, has {heads}")
    workers = [name for name in group("workers") if name not in heads]
    hostvars = {}
    for name in (*heads, *workers):
        own = variables.get_vars(host=manager.get_host(name), include_hostvars=True)
        context = {**defaults, **role_vars, **own,
                   # the roles' paths are relative to the stage playbooks (playbooks/*.yml)
                   "playbook_dir": str(root / "playbooks")}
        templar = Templar(loader=loader, variables=context)
        rendered = {}
        for key in sorted(set(defaults) | (set(own) - magic)):
            try:
                rendered[key] = _plain(templar.template(context[key]))
            except Exception:  # any value Ansible cannot render here stays as written
                rendered[key] = _plain(context[key])
        hostvars[name] = {**rendered, "inventory_hostname": name}
    return {"head": heads[0], "workers": workers, "hostvars": hostvars}


@dataclass(frozen=True)
class ClusterView:
    """One cluster's nodes and endpoints; ``hostvars`` are the rendered values per node."""

    inventory: Path
    head: str
    workers: tuple[str, ...]
    hostvars: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_resolved(cls, inventory: Path, data: Mapping[str, Any]) -> ClusterView:
        """From ``resolve_inventory``'s result."""
        return cls(inventory=inventory, head=data["head"], workers=tuple(data["workers"]),
                   hostvars=data["hostvars"])

    @classmethod
    def load(cls, inventory: Path, root: Path, env: Mapping[str, str] | None = None) -> ClusterView:
        """Resolve ``inventory`` in a process of its own (``env``: e.g. ANSIBLE_CONFIG and the
        vault password file, read when Ansible is imported); ``root`` is the project whose
        roles' defaults fill in what the inventory leaves unset."""
        if not inventory.exists():
            raise InventoryError(f"{inventory} does not exist (for the lab: servekit lab up)")
        proc = subprocess.run([sys.executable, "-m", "servekit.inventory", str(inventory), str(root)],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, **(env or {})})
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or [""])[-1].removeprefix("servekit: ")
            if "vault" in detail.lower():
                detail += f" ({vault_hint(root)})"
            raise InventoryError(detail if detail.startswith(str(inventory)) else f"{inventory}: {detail}")
        return cls.from_resolved(inventory, json.loads(proc.stdout))

    @property
    def nodes(self) -> tuple[str, ...]:
        """Head first, then the workers: the node ranks the roles use."""
        return (self.head, *self.workers)

    def var(self, name: str, host: str | None = None) -> Any:
        """A variable of ``host`` (default: the head), as Ansible renders it (None: unset)."""
        return self.hostvars[host or self.head].get(name)

    def resolved_vars(self, host: str | None = None) -> dict[str, Any]:
        """Every variable of ``host`` (default: the head)."""
        return dict(self.hostvars[host or self.head])

    def address(self, host: str | None = None) -> str:
        """The data-plane address of ``host`` (``cluster_data_address``)."""
        return str(self.var("cluster_data_address", host))

    @property
    def api_port(self) -> int:
        return int(self.var("cluster_api_port"))

    @property
    def api_tls(self) -> bool:
        """Whether the head's proxy serves HTTPS (cluster_api_tls, which needs cluster_api_proxy)."""
        return _flag(self.var("cluster_api_proxy")) and _flag(self.var("cluster_api_tls"))

    @property
    def api_url(self) -> str:
        """The head's OpenAI-compatible API, without ``/v1``."""
        return f"{'https' if self.api_tls else 'http'}://{self.address()}:{self.api_port}"

    def api_ca_file(self, state: Path) -> Path | None:
        """The CA that verifies the API: cluster_api_tls_ca_file, else servekit's own CA under
        ``state/tls`` (the control node's state dir, servekit/project.py: state_dir;
        roles/vllm/tasks/tls.yml makes it there), else None: no TLS, or the inventory's own
        certificate checked against the system's trust store."""
        if not self.api_tls:
            return None
        if self.var("cluster_api_tls_ca_file"):
            return Path(self.var("cluster_api_tls_ca_file"))
        if self.var("cluster_api_tls_cert"):
            return None
        return state / "tls" / "ca.crt"

    @property
    def api_key(self) -> str | None:
        return self.var("vllm_api_key") or None

    @property
    def default_model(self) -> str | None:
        return self.var("cluster_default_model")

    @property
    def deployments(self) -> Any:
        """``cluster_deployments`` as the inventory gives it ([] when unset)."""
        return self.var("cluster_deployments") or []

    @property
    def served_model(self) -> str | None:
        """The served name a client asks for by default: the first deployment's ``name`` with
        ``cluster_deployments`` (one is served today), else ``cluster_default_model``."""
        raw = self.deployments
        if isinstance(raw, list) and raw and isinstance(raw[0], Mapping) and raw[0].get("name"):
            return str(raw[0]["name"])
        return self.default_model

    def registry_path(self, root: Path) -> Path:
        """``cluster_registry_path``; the role default (under ``playbook_dir``) is ``root``'s registry."""
        value = self.var("cluster_registry_path")
        if not isinstance(value, str) or "{{" in value:
            return root / "config" / "model_registry.yml"
        return root / value

    def placement(self, root: Path, model_name: str | None = None) -> list[placement.Replica]:
        """Every replica's nodes and devices, as the validate stage places them: the inventory's
        ``cluster_deployments``, else one replica of ``model_name`` (MODEL_NAME) or the default
        model. Raises PlacementError (or RegistryError) naming the field."""
        raw = self.deployments
        for problem in placement.conflicts_with_model_name(raw, model_name):
            raise placement.PlacementError(problem)
        if not raw:
            raw = placement.default_deployments(model_name or str(self.default_model))
        devices = {node: int(self.var("cluster_devices_per_node", node)) for node in self.nodes}
        return placement.plan(raw, load_registry_file(str(self.registry_path(root))), devices)

    def ports(self, host: str | None = None) -> dict[str, int]:
        """Every ``*_port`` variable of ``host`` (default: the head) that is a number."""
        found = {}
        for name in self.hostvars[host or self.head]:
            value = self.var(name, host) if name.endswith("_port") else None
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                found[name] = int(value)
        return found


def _flag(value: Any) -> bool:
    """An inventory boolean as Ansible reads it (true, yes, on, 1)."""
    if isinstance(value, str):
        return value.strip().lower() in ("y", "yes", "on", "1", "true", "t")
    return bool(value)



def main(argv: list[str] | None = None) -> int:
    """``python -m servekit.inventory INVENTORY ROOT``: ``resolve_inventory`` as JSON on stdout."""
    inventory, root = (argv if argv is not None else sys.argv[1:])
    try:
        print(json.dumps(resolve_inventory(Path(inventory), Path(root))))
    except InventoryError as exc:
        print(f"servekit: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Ansible's own errors (a bad file, a vault): one line
        print(f"servekit: {inventory}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
