"""``servekit status``: what playbooks/status.yml read on each node, as a table or JSON, and
whether the cluster serves.

The playbook writes one JSON document (``{"nodes": [...]}``): per node the
raw output of ``systemctl show`` for the servekit units, the first line of
the vLLM unit (``vllm_launch`` writes ``# Managed by servekit (vllm_launch):
model M, node rank N, role R``), the watchdog's journal of the last hour,
on the head the Ray cluster's live nodes (address -> devices) and the HTTP
status of a one-token completion. A node the play could not reach has no
``ray``/``vllm`` entries. The cluster serves when the head answered that
completion; everything else explains why not.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from servekit.module_utils.placement import format_placement

_LAUNCH = re.compile(r"model (?P<model>[^ ,]+), node rank (?P<rank>\d+), role (?P<role>\w+)")
# roles/vllm/files/watchdog.py logs this line when it restarts the vLLM unit.
_RESTART = re.compile(r"failed completions in a row: restarting ")


def parse_systemctl_show(text: str) -> dict[str, dict[str, str]]:
    """``systemctl show -p Id,... UNIT...`` output: one ``Key=Value`` block per unit, blank-line
    separated (systemctl(1)); keyed by ``Id``."""
    units: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            units[props["Id"]] = props
    return units


def unit_state(props: dict[str, str] | None) -> str:
    """``active/running``, ``inactive/dead``, ``absent`` (no such unit) or ``unknown``."""
    if not props:
        return "unknown"
    if props.get("LoadState") == "not-found":
        return "absent"
    return f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')}"


def watchdog_restarts(journal: list[str]) -> int:
    """Restarts the watchdog made, counted in its journal lines."""
    return sum(1 for line in journal if _RESTART.search(line))


@dataclass
class NodeStatus:
    name: str
    head: bool
    address: str
    reachable: bool
    ray_unit: str = "unknown"
    ray_alive: bool | None = None
    ray_devices: float | None = None
    vllm_unit: str = "unknown"
    watchdog_unit: str = "unknown"
    proxy_unit: str = "unknown"
    model: str | None = None
    rank: int | None = None
    role: str | None = None
    watchdog_restarts_1h: int = 0
    ready: bool | None = None
    ready_detail: str = ""


@dataclass
class ReplicaStatus:
    deployment: str
    replica: int  # 1-based, as the placement table shows it
    model: str
    node: str
    devices: list[int]
    port: int
    unit: str
    unit_state: str
    ready: bool
    in_rotation: bool | None  # None: the router's list could not be read


@dataclass
class ClusterStatus:
    nodes: list[NodeStatus]
    serving: bool
    problems: list[str] = field(default_factory=list)
    # where cluster_deployments' replicas run (Replica.as_dict); None without deployments
    placement: list[dict[str, Any]] | None = None
    replicas: list[ReplicaStatus] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        found = {"serving": self.serving, "problems": self.problems,
                 "nodes": [asdict(node) for node in self.nodes]}
        if self.placement is not None:
            found["placement"] = self.placement
        if self.replicas:
            found["replicas"] = [asdict(replica) for replica in self.replicas]
        return found


def _router_rotation(raw_nodes: list[dict[str, Any]]) -> dict[str, bool] | None:
    """The head's router: worker URL -> healthy; None when it was not read."""
    for raw in raw_nodes:
        text = ((raw.get("vllm") or {}).get("router_workers") or "").strip() if raw.get("head") else ""
        if text:
            return {w["url"]: bool(w.get("is_healthy")) for w in json.loads(text).get("workers", [])}
    return None


def replica_statuses(raw_nodes: list[dict[str, Any]]) -> list[ReplicaStatus]:
    """Every node's replica engines, with their unit, readiness and place in the router's rotation."""
    rotation = _router_rotation(raw_nodes)
    found = []
    for raw in raw_nodes:
        vllm = raw.get("vllm") or {}
        units = parse_systemctl_show(vllm.get("replica_units") or "")
        for r in vllm.get("replicas") or []:
            found.append(ReplicaStatus(
                deployment=r["deployment"], replica=int(r["replica"]) + 1, model=r["model"], node=raw["name"],
                devices=list(r.get("devices", [])), port=int(r["port"]), unit=r["unit"],
                unit_state=unit_state(units.get(r["unit"])), ready=str(r.get("ready_status")) == "200",
                in_rotation=None if rotation is None else rotation.get(r["url"], False)))
    return sorted(found, key=lambda r: (r.deployment, r.replica))


def _replica_problems(replicas: list[ReplicaStatus]) -> list[str]:
    problems = []
    for r in replicas:
        where = f"{r.deployment} replica {r.replica} ({r.unit} on {r.node})"
        if not r.ready:
            problems.append(f"{where}: no completion (unit {r.unit_state})")
        if r.in_rotation is False:
            problems.append(f"{where}: out of the router's rotation")
    if replicas and replicas[0].in_rotation is None:
        problems.append("the router's workers could not be read on the head")
    for name in sorted({r.deployment for r in replicas}):
        if not any(r.ready and r.in_rotation for r in replicas if r.deployment == name):
            problems.append(f"deployment {name}: no replica serves")
    return problems


def node_status(raw: dict[str, Any], units: dict[str, str], ray_nodes: dict[str, float] | None) -> NodeStatus:
    """One node from the playbook's document; ``units`` maps ray/vllm/watchdog/proxy to unit names,
    ``ray_nodes`` is the head's view of Ray (address -> devices; None: not read)."""
    vllm, ray = raw.get("vllm"), raw.get("ray")
    node = NodeStatus(name=raw["name"], head=bool(raw.get("head")), address=str(raw.get("address", "")),
                      reachable=vllm is not None or ray is not None)
    if ray is not None:
        node.ray_unit = unit_state(next(iter(parse_systemctl_show(ray.get("unit", "")).values()), None))
    if ray_nodes is not None:
        node.ray_alive = node.address in ray_nodes
        node.ray_devices = ray_nodes.get(node.address)
    if vllm is None:
        return node
    shown = parse_systemctl_show(vllm.get("units", ""))
    node.vllm_unit = unit_state(shown.get(units["vllm"]))
    node.watchdog_unit = unit_state(shown.get(units["watchdog"]))
    node.proxy_unit = unit_state(shown.get(units["proxy"])) if node.head else "-"
    launch = _LAUNCH.search(vllm.get("launch") or "")
    if launch:
        node.model, node.rank, node.role = launch["model"], int(launch["rank"]), launch["role"]
    node.watchdog_restarts_1h = watchdog_restarts(vllm.get("watchdog_journal") or [])
    if node.head:
        status = vllm.get("ready_status")
        # None: not asked (replica engines are asked one by one instead)
        node.ready = None if status is None and vllm.get("replicas") else str(status) == "200"
        node.ready_detail = "" if node.ready else f"HTTP {status}: {vllm.get('ready_error') or 'no answer'}"
    return node


def _ray_nodes(raw_nodes: list[dict[str, Any]]) -> dict[str, float] | None:
    for raw in raw_nodes:
        text = ((raw.get("ray") or {}).get("nodes") or "").strip() if raw.get("head") else ""
        if text:
            return {str(k): float(v) for k, v in json.loads(text).items()}
    return None


def cluster_status(document: dict[str, Any], units: dict[str, str], executor: str) -> ClusterStatus:
    """Every node, whether the cluster serves (the head's completion), and what is wrong."""
    ray_nodes = _ray_nodes(document["nodes"]) if executor == "ray" else None
    nodes = [node_status(raw, units, ray_nodes) for raw in document["nodes"]]
    problems = [f"{n.name}: unreachable" for n in nodes if not n.reachable]
    head = next((n for n in nodes if n.head), None)
    replicas = replica_statuses(document["nodes"])
    if replicas:
        replica_problems = _replica_problems(replicas)
        serving = not any(p.startswith("deployment ") for p in replica_problems)
        problems += replica_problems
    else:
        serving = bool(head and head.ready)
        if head and head.reachable and not head.ready:
            problems.append(f"{head.name}: no completion ({head.ready_detail})")
    for node in nodes:
        if node.reachable and node.rank is not None and not node.vllm_unit.startswith("active"):
            problems.append(f"{node.name}: vLLM unit {node.vllm_unit}")
        if executor == "ray" and node.ray_alive is False:
            problems.append(f"{node.name}: not a live node of the Ray cluster")
        if node.watchdog_restarts_1h:
            problems.append(f"{node.name}: the watchdog restarted vLLM {node.watchdog_restarts_1h} time(s) "
                            "in the last hour")
    return ClusterStatus(nodes=nodes, serving=serving, problems=problems, replicas=replicas)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_table(status: ClusterStatus) -> str:
    header = ("NODE", "ADDRESS", "REACHABLE", "RAY", "RAY LIVE", "DEVICES", "VLLM", "RANK",
              "WATCHDOG", "RESTARTS/1H", "PROXY", "READY", "MODEL")
    rows = [header]
    for n in status.nodes:
        rows.append(tuple(_cell(v) for v in (
            n.name + (" (head)" if n.head else ""), n.address, n.reachable, n.ray_unit, n.ray_alive,
            n.ray_devices, n.vllm_unit, n.rank, n.watchdog_unit, n.watchdog_restarts_1h, n.proxy_unit,
            n.ready, n.model)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if status.replicas:
        lines += ["", "replica engines (cluster_deployments):", _replica_table(status.replicas), ""]
    elif status.placement:
        lines += ["", "placement (cluster_deployments):", format_placement(status.placement), ""]
    lines.append("serving: " + ("yes" if status.serving else "NO"))
    lines.extend(f"  {problem}" for problem in status.problems)
    return "\n".join(lines)


def _replica_table(replicas: list[ReplicaStatus]) -> str:
    header = ("DEPLOYMENT", "REPLICA", "MODEL", "NODE", "DEVICES", "PORT", "UNIT", "READY", "IN ROTATION")
    rows = [header] + [tuple(_cell(v) for v in (
        r.deployment, r.replica, r.model, r.node, ",".join(map(str, r.devices)), r.port, r.unit_state,
        r.ready, r.in_rotation)) for r in replicas]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def format_json(status: ClusterStatus) -> str:
    return json.dumps(status.as_dict(), indent=2)
