"""A cluster as its inventory describes it: head, nodes, API URL and key, ports.

Values come from ``ansible-inventory --list`` (the inventory and its
group_vars, vault decrypted) over the roles' own ``defaults/main.yml``, so a
port or an address the inventory leaves unset is the one the roles deploy,
not a copy of it here. ansible-inventory does not template: a value such as
``{{ vault_vllm_api_key }}`` or the default ``{{ ansible_host |
default(inventory_hostname) }}`` is followed one step (``resolve_plain_var``),
and one such as ``{{ cluster_root }}/venv`` is rendered with plain Jinja2
over the host's variables (``render_var``; Ansible's own filters and lookups
are not there: such a value stays as written).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from servekit.lab import Paths as LabPaths
from servekit.module_utils import placement
from servekit.module_utils.vllm_registry import load_registry_file

# ``{{ name }}``, ``{{ name | default(None) }}`` or ``{{ name | default(other) }}``
_ONE_VAR = re.compile(r"\{\{\s*(\w+)\s*(?:\|\s*default\(\s*(\w+)\s*\)\s*)?\}\}")


class InventoryError(Exception):
    """The inventory cannot be read or does not describe one cluster."""


def resolve_plain_var(hostvars: Mapping[str, Any], name: str) -> Any:
    """``name`` from ansible-inventory output, following one ``{{ other }}`` indirection.

    ansible-inventory does not template; the lab's ``vllm_api_key`` is
    ``{{ vault_vllm_api_key }}``, whose value comes decrypted from vault.yml.
    ``{{ a | default(b) }}`` gives ``a`` where set, else ``b`` (``None``: None).
    """
    value = hostvars.get(name)
    match = _ONE_VAR.fullmatch(value) if isinstance(value, str) else None
    if not match:
        return value
    first, fallback = match.groups()
    if first in hostvars or fallback in (None, "None"):
        return hostvars.get(first)
    return hostvars.get(fallback)


_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - not HTML


def render_var(hostvars: Mapping[str, Any], name: str, depth: int = 5) -> Any:
    """``name`` as ``resolve_plain_var`` gives it, then any template left in it rendered over
    ``hostvars`` (up to ``depth`` levels); a template plain Jinja2 cannot render stays as is."""
    value = resolve_plain_var(hostvars, name)
    for _ in range(depth):
        if not (isinstance(value, str) and "{{" in value):
            break
        try:
            value = _JINJA.from_string(value).render(hostvars)
        except jinja2.TemplateError:
            break
    return value


def role_defaults(root: Path) -> dict[str, Any]:
    """Every role's ``defaults/main.yml``, merged (role inputs carry their role's prefix)."""
    merged: dict[str, Any] = {}
    for path in sorted(root.glob("roles/*/defaults/main.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


@dataclass(frozen=True)
class ClusterView:
    """One cluster's nodes and endpoints; ``hostvars`` are inventory values over role defaults."""

    inventory: Path
    head: str
    workers: tuple[str, ...]
    hostvars: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_inventory_data(cls, inventory: Path, data: Mapping[str, Any],
                            defaults: Mapping[str, Any]) -> ClusterView:
        """From ``ansible-inventory --list`` JSON and the role defaults."""
        heads = data.get("head", {}).get("hosts", [])
        if len(heads) != 1:
            raise InventoryError(f"{inventory}: group 'head' must hold exactly one host, has {heads}")
        workers = tuple(h for h in _group_hosts(data, "workers") if h not in heads)
        found = data.get("_meta", {}).get("hostvars", {})
        hostvars = {name: {**defaults, "inventory_hostname": name, **found.get(name, {})}
                    for name in (heads[0], *workers)}
        return cls(inventory=inventory, head=heads[0], workers=workers, hostvars=hostvars)

    @classmethod
    def load(cls, inventory: Path, root: Path, env: Mapping[str, str] | None = None) -> ClusterView:
        """Read ``inventory`` with ansible-inventory (``env``: e.g. ANSIBLE_CONFIG); ``root`` is
        the project whose roles' defaults fill in what the inventory leaves unset."""
        if not inventory.exists():
            raise InventoryError(f"{inventory} does not exist (for the lab: servekit lab up)")
        tool = Path(sys.executable).with_name("ansible-inventory")
        proc = subprocess.run([str(tool), "-i", str(inventory), "--list"], capture_output=True,
                              text=True, check=False, env={**os.environ, **(env or {})})
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or [""])[-1]
            if "vault" in detail:
                detail += (" (set ANSIBLE_VAULT_PASSWORD_FILE; the lab's is "
                           f"{LabPaths.default(root).vault_password})")
            raise InventoryError(f"{inventory}: {detail}")
        return cls.from_inventory_data(inventory, json.loads(proc.stdout), role_defaults(root))

    @property
    def nodes(self) -> tuple[str, ...]:
        """Head first, then the workers: the node ranks the roles use."""
        return (self.head, *self.workers)

    def var(self, name: str, host: str | None = None) -> Any:
        """A variable of ``host`` (default: the head), templates rendered (``render_var``)."""
        return render_var(self.hostvars[host or self.head], name)

    def resolved_vars(self, host: str | None = None) -> dict[str, Any]:
        """Every variable of ``host`` (default: the head) as ``var`` gives it."""
        return {name: self.var(name, host) for name in self.hostvars[host or self.head]}

    def address(self, host: str | None = None) -> str:
        """The data-plane address of ``host`` (``cluster_data_address``)."""
        return str(self.var("cluster_data_address", host))

    @property
    def api_port(self) -> int:
        return int(self.var("cluster_api_port"))

    @property
    def api_tls(self) -> bool:
        """Whether the head's proxy serves HTTPS (vllm_api_tls, which needs vllm_api_proxy)."""
        return _flag(self.var("vllm_api_proxy")) and _flag(self.var("vllm_api_tls"))

    @property
    def api_url(self) -> str:
        """The head's OpenAI-compatible API, without ``/v1``."""
        return f"{'https' if self.api_tls else 'http'}://{self.address()}:{self.api_port}"

    def api_ca_file(self, state: Path) -> Path | None:
        """The CA that verifies the API: vllm_api_tls_ca_file, else servekit's own CA under
        ``state/tls`` (the control node's state dir, servekit/project.py: state_dir;
        roles/vllm/tasks/tls.yml makes it there), else None: no TLS, or the inventory's own
        certificate checked against the system's trust store."""
        if not self.api_tls:
            return None
        if self.var("vllm_api_tls_ca_file"):
            return Path(self.var("vllm_api_tls_ca_file"))
        if self.var("vllm_api_tls_cert"):
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


def _group_hosts(data: Mapping[str, Any], group: str) -> list[str]:
    """Hosts of ``group`` and its child groups, in inventory order."""
    entry = data.get(group, {})
    hosts = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts += [h for h in _group_hosts(data, child) if h not in hosts]
    return hosts
