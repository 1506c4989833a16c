"""What each ``servekit`` command does; ``servekit/cli.py`` parses the arguments and dispatches here."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from servekit import lab, runner
from servekit.inventory import ClusterView, InventoryError
from servekit.module_utils.vllm_registry import (
    NodeSpec,
    build_launch_plan,
    load_registry_file,
    render_unit,
    select_model,
)
from servekit.project import project_root

# `servekit up` and `ask` without -i: the local lab (written by `servekit lab up`).
LAB_INVENTORY = "inventory/lab"


class UsageError(Exception):
    """Bad command-line input; reported as one line, exit 2."""


def _models(registry: str | None) -> dict:
    return load_registry_file(str(registry or project_root() / "config" / "model_registry.yml"))


def cmd_models(args: argparse.Namespace) -> int:
    rows = [("NAME", "MODEL", "TP", "PP", "DTYPE", "DESCRIPTION")]
    rows += [(name, entry["model"], str(entry.get("tensor-parallel-size", 1)),
              str(entry.get("pipeline-parallel-size", 1)), str(entry.get("dtype", "auto")),
              entry.get("description", "")) for name, entry in _models(args.registry).items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    name = args.model or os.environ.get("MODEL_NAME")
    entry = select_model(_models(args.registry), name)
    nnodes = args.nnodes
    if nnodes is None:
        world = entry.get("tensor-parallel-size", 1) * entry.get("pipeline-parallel-size", 1)
        nnodes = max(1, -(-world // args.devices_per_node))
    node = NodeSpec(node_rank=args.node_rank, nnodes=nnodes, head_address=args.head_address,
                    host_address=args.host_address, devices_per_node=args.devices_per_node,
                    executor=args.executor, runtime=args.runtime, api_port=args.api_port)
    plan = build_launch_plan(name, entry, node, shlex.split(args.command))
    unit = render_unit(plan) if plan.active else ""
    if args.format == "json":
        print(json.dumps(dict(plan.as_dict(), unit=unit), indent=2))
        return 0
    print(f"# model {name}, node rank {plan.node_rank} of {nnodes}, role {plan.role}")
    if not plan.active:
        print(f"# this node runs no vLLM process ({args.executor} executor)")
        return 0
    for key, value in sorted(plan.env.items()):
        print(f"{key}={shlex.quote(value)} \\")
    print(shlex.join(plan.argv))
    return 0


def cluster_view(inventory: str) -> ClusterView:
    """The cluster of ``inventory`` (relative to the project), or a UsageError naming -i."""
    root = project_root()
    path = Path(inventory) if Path(inventory).is_absolute() else root / inventory
    try:
        return ClusterView.load(path, root, env=runner.ansible_env(root))
    except InventoryError as exc:
        raise UsageError(f"--inventory: {exc}") from exc


def _inventory_head(inventory: str) -> tuple[str, dict]:
    """The head's name and variables, role defaults filled in (.ci/serving's old entry point)."""
    view = cluster_view(inventory)
    return view.head, {name: view.var(name) for name in view.hostvars[view.head]}


def cmd_ask(args: argparse.Namespace) -> int:
    """One chat completion through the head's OpenAI-compatible API, with the openai client."""
    try:
        import openai  # slow to import: only for this command
    except ImportError as exc:
        raise UsageError("the openai package is not installed (pip install openai)") from exc

    view = cluster_view(args.inventory)
    model = args.model or os.environ.get("MODEL_NAME") or view.default_model
    if not model:
        raise UsageError("--model: the inventory sets no cluster_default_model; name the model")
    endpoint = f"{view.api_url}/v1"
    api_key = os.environ.get("OPENAI_API_KEY") or view.api_key or "none"
    client = openai.OpenAI(base_url=endpoint, api_key=api_key, timeout=args.timeout)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens)
    print(f"endpoint:   {endpoint}\nmodel:      {model}\nprompt:     {args.prompt}")
    print(f"completion: {json.dumps(reply.choices[0].message.content)}")
    print(f"tokens:     {reply.usage.prompt_tokens} in, {reply.usage.completion_tokens} out")
    return 0


def _up_inventory(root: Path, given: str | None) -> Path:
    """-i as given (relative to the current directory), else the lab's inventory; never an example."""
    if given is None:
        lab = root / LAB_INVENTORY
        if not (lab / "hosts.yml").is_file():
            raise UsageError(
                f"no --inventory given and no lab inventory ({LAB_INVENTORY}/hosts.yml): "
                "run `servekit lab up`, or pass -i inventory/<cluster>")
        return lab
    inventory = Path(given).resolve()
    if not inventory.exists():
        raise UsageError(f"--inventory {given}: no such file or directory")
    return inventory


def cmd_up(args: argparse.Namespace) -> int:
    root = project_root()
    if args.model:
        os.environ["MODEL_NAME"] = args.model
    if os.environ.get("MODEL_NAME"):
        select_model(_models(None), os.environ["MODEL_NAME"])  # before ansible: lists the models
    options = runner.UpOptions(inventory=args.inventory, tags=args.tags, skip_tags=args.skip_tags,
                               limit=args.limit, check=args.check, diff=args.diff,
                               extra_vars=tuple(args.extra_vars or ()), verbose=args.verbose)
    return runner.run_site(root, _up_inventory(root, args.inventory), options)


# --------------------------------------------------------------------------
# lab
# --------------------------------------------------------------------------


def _lab():
    return lab, lab.Paths.default(project_root())


def cmd_lab_up(args: argparse.Namespace) -> int:
    lab, paths = _lab()
    lab.up(paths, workers=args.workers, container_image=args.container_image)
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    lab, paths = _lab()
    lab.down(paths, purge=args.purge)
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    lab, paths = _lab()
    rows = lab.status(paths)
    if not rows:
        print("no lab is up")
    for row in rows:
        print(f"{row['name']:<14} {row['group']:<8} {row['address']:<12} "
              f"pid={row['pid'] or '-':<8} {row['state']}")
    return 0


def cmd_lab_scan(args: argparse.Namespace) -> int:
    """Print what an outsider reaches; exit 1 when more than SSH (and the API on the head) answers."""
    lab, paths = _lab()
    started = time.monotonic()
    found = lab.scan(paths, args.ports)
    nodes = {n.name: n for n in lab.load_nodes(paths)}
    unexpected = {}
    for name, ports in found.items():
        allowed = {22} | ({args.api_port} if nodes[name].group == "head" else set())
        print(f"{name:<14} {nodes[name].address:<12} open: {', '.join(map(str, ports)) or 'none'}")
        if set(ports) - allowed:
            unexpected[name] = sorted(set(ports) - allowed)
    print(f"scanned {args.ports} on {len(found)} nodes from {lab.OUTSIDER_ADDRESS} "
          f"in {time.monotonic() - started:.0f} s")
    if unexpected:
        print(f"servekit lab scan: reachable beyond SSH and the API: {unexpected}", file=sys.stderr)
        return 1
    return 0


def cmd_lab_stop(args: argparse.Namespace) -> int:
    lab, paths = _lab()
    lab.stop(paths, args.node)
    return 0


def cmd_lab_start(args: argparse.Namespace) -> int:
    lab, paths = _lab()
    lab.start(paths, args.node)
    return 0


def cmd_lab_ssh(args: argparse.Namespace) -> int:
    lab, paths = _lab()
    return lab.ssh(paths, args.node, args.remote)
