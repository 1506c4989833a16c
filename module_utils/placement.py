"""Deployments (``cluster_deployments``) and where their replicas run: pure functions.

Shared by the ``deployment_placement`` module (the validate stage, on the
control node, imported as ``ansible.module_utils.placement``) and the
``servekit`` CLI (``servekit.module_utils.placement``). Nothing here touches
a host.

A deployment is ``{name, model, replicas (default 1), nodes (optional)}``:
``name`` is the served model name, ``model`` a registry entry. Each replica
needs the entry's tensor-parallel-size x pipeline-parallel-size devices:

- a replica that fits on one node takes that many distinct devices of one
  node, so several replicas share a node (8 GPUs: four TP 2 replicas);
- a larger one spans whole nodes, as the single engine does today
  (``plan_topology`` in vllm_registry.py): devices per node x nodes ==
  TP x PP, every device of those nodes, which must all have the same count.

``nodes`` restricts a deployment to those hosts. The placement is
deterministic: replicas that span nodes go first, then the others from the
largest down (ties in list order), each on the fitting node that holds the
fewest replicas of its deployment so far, then the one with the fewest free
devices (ties in inventory order), on that node's lowest free device
indices. Spreading a deployment's replicas over nodes keeps it serving when
one node goes down; placing the large replicas first and then filling the
fullest node keeps the small ones from splintering the nodes a larger
replica needs, and with power-of-two sizes it keeps every replica's devices
an aligned block.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FIELD = "cluster_deployments"
KEYS = ("name", "model", "replicas", "nodes")


class PlacementError(ValueError):
    """The deployments are malformed or do not fit; the message names the field."""


@dataclass(frozen=True)
class Deployment:
    name: str
    model: str
    replicas: int
    nodes: tuple[str, ...] | None  # None: any node
    tensor_parallel: int
    pipeline_parallel: int

    @property
    def devices(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel


@dataclass(frozen=True)
class Replica:
    deployment: str
    index: int  # 0-based within its deployment
    model: str
    devices: tuple[tuple[str, tuple[int, ...]], ...]  # (node, device indices), head-first order

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(node for node, _ in self.devices)

    def as_dict(self) -> dict[str, Any]:
        return {"deployment": self.deployment, "replica": self.index, "model": self.model,
                "nodes": list(self.nodes), "devices": {node: list(idx) for node, idx in self.devices}}


def default_deployments(model: str) -> list[dict[str, Any]]:
    """What runs without ``cluster_deployments``: one deployment of ``cluster_model``, one replica."""
    return [{"name": model, "model": model, "replicas": 1}]


def _shown(value: Any) -> str:
    return repr(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _item_problems(where: str, item: Mapping[str, Any], models: Mapping[str, Any],
                   hosts: Sequence[str]) -> list[str]:
    """Problems of one deployment's keys, model, replicas and nodes (its name is checked by the caller)."""
    problems = []
    for key in item:
        if key not in KEYS:
            hint = difflib.get_close_matches(str(key), KEYS, n=1)
            problems.append(f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]}?)" if hint else "")
                            + f"; allowed: {', '.join(KEYS)}")
    model = item.get("model")
    if not isinstance(model, str) or model not in models:
        problems.append(f"{where}.model = {_shown(model)}: must be a model registry entry; "
                        f"entries: {', '.join(sorted(models))}")
    replicas = item.get("replicas", 1)
    if not _int(replicas) or replicas < 1:
        problems.append(f"{where}.replicas = {_shown(replicas)}: must be an integer >= 1")
    nodes = item.get("nodes")
    if nodes is None:
        return problems
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        return [*problems, f"{where}.nodes = {_shown(nodes)}: must be a non-empty list of inventory hosts; "
                           f"hosts: {', '.join(hosts)}"]
    return problems + [f"{where}.nodes = {_shown(node)}: not a host of the inventory's head or workers; "
                       f"hosts: {', '.join(hosts)}" for node in nodes if node not in hosts]


def parse_deployments(raw: Any, models: Mapping[str, Mapping[str, Any]],
                      hosts: Sequence[str]) -> tuple[list[Deployment], list[str]]:
    """The deployments, and every problem of the input (each names its field); no placement yet."""
    if not isinstance(raw, list):
        return [], [f"{FIELD} = {_shown(raw)}: must be a list of deployments "
                    f"({{name, model, replicas, nodes}})"]
    problems: list[str] = []
    found: list[Deployment] = []
    first_named: dict[str, int] = {}
    for index, item in enumerate(raw):
        where = f"{FIELD}[{index}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where} = {_shown(item)}: must be a mapping with keys name, model "
                            "and optionally replicas, nodes")
            continue
        found_here = _item_problems(where, item, models, hosts)
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            found_here.insert(0, f"{where}.name = {_shown(name)}: is required, a non-empty string "
                                 "(the served model name clients ask for)")
        elif name in first_named:
            found_here.insert(0, f"{where}.name = {name!r}: {FIELD}[{first_named[name]}].name is the same; "
                                 "served names must be unique")
        else:
            first_named[name] = index
        problems.extend(found_here)
        if not found_here:
            entry = models[item["model"]]
            nodes = item.get("nodes")
            found.append(Deployment(
                name=name, model=item["model"], replicas=item.get("replicas", 1),
                nodes=tuple(n for n in hosts if n in nodes) if nodes else None,
                tensor_parallel=int(entry.get("tensor-parallel-size", 1)),
                pipeline_parallel=int(entry.get("pipeline-parallel-size", 1))))
    return found, problems


def _needs(deployment: Deployment) -> str:
    return (f"{deployment.devices} device(s) (tensor-parallel-size {deployment.tensor_parallel} x "
            f"pipeline-parallel-size {deployment.pipeline_parallel} of model {deployment.model!r})")


def _free_text(free: Mapping[str, list[int]], devices: Mapping[str, int], among: Sequence[str]) -> str:
    return ", ".join(f"{node} {len(free[node])} of {devices[node]}" for node in among)


def place(deployments: Sequence[Deployment], devices: Mapping[str, int]) -> list[Replica]:
    """Every replica's nodes and device indices; ``devices`` maps each host (inventory order,
    head first) to its device count. Raises PlacementError naming the first replica that does
    not fit, what it needs and what is free."""
    hosts = list(devices)
    free = {node: list(range(devices[node])) for node in hosts}
    largest = max(devices.values(), default=0)
    work = [(d, r) for d in deployments for r in range(d.replicas)]
    # spanning replicas first, then the larger ones; sorted() is stable: ties keep list order
    order = sorted(range(len(work)), key=lambda i: (work[i][0].devices <= largest, -work[i][0].devices))
    placed: dict[int, Replica] = {}
    for i in order:
        deployment, index = work[i]
        among = list(deployment.nodes or hosts)
        where = (f"{FIELD}: deployment {deployment.name!r} replica {index + 1} of {deployment.replicas}"
                 + (f" (nodes: {', '.join(among)})" if deployment.nodes else ""))
        if deployment.devices <= max((devices[n] for n in among), default=0):
            fitting = [n for n in among if len(free[n]) >= deployment.devices]
            if not fitting:
                raise PlacementError(f"{where} needs {_needs(deployment)} on one node; free: "
                                     f"{_free_text(free, devices, among)}")
            node = min(fitting, key=lambda n: (sum(1 for r in placed.values()
                                                   if r.deployment == deployment.name and n in r.nodes),
                                               len(free[n]), hosts.index(n)))
            taken, free[node] = free[node][:deployment.devices], free[node][deployment.devices:]
            placed[i] = Replica(deployment.name, index, deployment.model, ((node, tuple(taken)),))
            continue
        whole = [n for n in among if len(free[n]) == devices[n]]
        chosen: list[str] = []
        for per_node in dict.fromkeys(devices[n] for n in among):  # device counts, first seen first
            same = [n for n in whole if devices[n] == per_node]
            span, rest = divmod(deployment.devices, per_node)
            if not rest and len(same) >= span:
                chosen = same[:span]
                break
        if not chosen:
            counts = sorted({devices[n] for n in among})
            raise PlacementError(
                f"{where} needs {_needs(deployment)}, more than one node holds, so whole nodes of "
                f"the same device count whose devices add up to it (devices per node x nodes == "
                f"tensor x pipeline; counts here: {', '.join(map(str, counts))}); free: "
                f"{_free_text(free, devices, among)}")
        for node in chosen:
            free[node] = []
        placed[i] = Replica(deployment.name, index, deployment.model,
                            tuple((node, tuple(range(devices[node]))) for node in chosen))
    return [placed[i] for i in range(len(work))]


def plan(raw: Any, models: Mapping[str, Mapping[str, Any]],
         devices: Mapping[str, int]) -> list[Replica]:
    """Check ``raw`` (the inventory's list) and place it; PlacementError lists every input problem."""
    deployments, problems = parse_deployments(raw, models, list(devices))
    if problems:
        raise PlacementError(f"{FIELD}: {len(problems)} problem(s): " + "; ".join(problems))
    return place(deployments, devices)


def engines(replicas: Sequence[Replica]) -> int:
    """vLLM engines the placement needs: one per replica."""
    return len(replicas)


def format_table(replicas: Sequence[Replica]) -> str:
    """DEPLOYMENT  REPLICA  MODEL  NODE  DEVICES, one row per node of each replica."""
    return format_placement([r.as_dict() for r in replicas])


def format_placement(placement: Sequence[Mapping[str, Any]]) -> str:
    """``format_table`` of ``Replica.as_dict`` records (as ``servekit status --format json`` has them)."""
    rows = [("DEPLOYMENT", "REPLICA", "MODEL", "NODE", "DEVICES")]
    rows += [(r["deployment"], str(r["replica"] + 1), r["model"], node, ",".join(map(str, devices)))
             for r in placement for node, devices in r["devices"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def conflicts_with_model_name(raw: Any, model_name: str | None) -> list[str]:
    """MODEL_NAME (``servekit up --model``) picks ``cluster_model``; with deployments set it would
    be ignored, so it is refused instead of silently losing."""
    if raw and model_name:
        return [f"MODEL_NAME = {model_name!r} is set, but {FIELD} decides what is served: unset "
                f"MODEL_NAME (or leave out servekit up --model), or edit {FIELD}"]
    return []


def serves_replicas(raw: Any, replicas: Sequence[Replica]) -> bool:
    """Whether the placement runs as replica engines (one vLLM engine per replica, behind the head's
    router) rather than as the single engine of ``cluster_model``: deployments are set, and there is
    more than one engine or one served under another name than its registry entry (one engine under
    its own name is the single engine, as without deployments, whether it spans nodes or not)."""
    if not raw or not replicas:
        return False
    return engines(replicas) > 1 or replicas[0].deployment != replicas[0].model


def unit_slug(name: str) -> str:
    """A served name as it appears in a systemd unit name: lower case, [a-z0-9] runs kept, '-' between."""
    out, dash = [], False
    for char in name.lower():
        if char.isascii() and char.isalnum():
            out.append(char)
            dash = False
        elif not dash and out:
            out.append("-")
            dash = True
    return "".join(out).rstrip("-") or "model"


# A replica engine's unit: servekit-vllm-<unit_slug(deployment)>-<replica, 1-based>.service.
UNIT_STEM = "servekit-vllm"


def replica_unit(slug: str, number: int | str) -> str:
    """The unit name of replica ``number`` (1-based) of the deployment whose ``unit_slug`` is ``slug``;
    ``servekit logs`` passes journalctl -u patterns for either part."""
    return f"{UNIT_STEM}-{slug}-{number}.service"


def replica_engines(replicas: Sequence[Replica], port_base: int) -> list[dict[str, Any]]:
    """One record per replica engine: deployment, replica (0-based), model, node, nodes, devices,
    port, unit.

    ``node`` is where the engine's unit, API and router target live: the replica's only node, or the
    first of the whole nodes a spanning replica takes (``nodes``, in placement order; its ranks on
    the others are Ray's, see docs/serving.md); ``devices`` are that node's. The port is
    ``port_base`` + the replica's first device index on that node: distinct on a node (replicas there
    hold distinct devices) and unchanged when other deployments are added or removed.
    """
    out = []
    for r in replicas:
        node, devices = r.devices[0]
        out.append({"deployment": r.deployment, "replica": r.index, "model": r.model, "node": node,
                    "nodes": list(r.nodes), "devices": list(devices), "port": port_base + devices[0],
                    "unit": replica_unit(unit_slug(r.deployment), r.index + 1)})
    return out


def not_served_yet(raw: Any, replicas: Sequence[Replica], executor: str = "ray") -> list[str]:
    """What a placed deployment set asks that the serving side does not run (issue 21).

    Replicas inside one node each run as their own engine (vLLM's mp executor on its devices). A
    replica that spans nodes beside other engines runs under the Ray executor, its ranks held to its
    nodes by vLLM's Ray data-parallel placement (docs/serving.md), so it needs
    ``cluster_executor: ray``. Either runtime: on the container runtime each replica engine runs in
    its node's Ray container, as the single engine does.
    """
    if not raw or not serves_replicas(raw, replicas):
        return []
    spanning = [r for r in replicas if len(r.nodes) > 1]
    if spanning and executor != "ray":
        first = spanning[0]
        return [f"cluster_executor = {executor!r}: replica {first.index + 1} of {first.deployment!r} spans "
                f"nodes {', '.join(first.nodes)}, and a replica across nodes beside other engines runs "
                f"under the Ray executor (its ranks are placed on its nodes by Ray); allowed: ray. "
                f"The placement:\n{format_table(replicas)}"]
    seen: dict[str, str] = {}
    for r in replicas:
        slug = unit_slug(r.deployment)
        if seen.setdefault(slug, r.deployment) != r.deployment:
            return [f"{FIELD}: names {seen[slug]!r} and {r.deployment!r} give the same unit name "
                    f"({replica_unit(slug, 'N')}); rename one"]
    return []
