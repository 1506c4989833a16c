"""What each ``servekit`` command does; ``servekit/cli.py`` parses the arguments and dispatches here."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from servekit import runner
from servekit.inventory import ClusterView, InventoryError
from servekit.module_utils.placement import PlacementError, engines, format_table, not_served_yet
from servekit.module_utils.vllm_registry import (
    NodeSpec,
    build_launch_plan,
    load_registry_file,
    render_unit,
    select_model,
)
from servekit.project import project_root, state_dir

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
    if args.inventory:
        return render_placement(args)
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


def render_placement(args: argparse.Namespace) -> int:
    """Where every replica of the inventory's deployments runs (its nodes and device indices)."""
    view = cluster_view(_up_inventory(project_root(), args.inventory))
    try:
        replicas = view.placement(project_root(), args.model or os.environ.get("MODEL_NAME"))
    except PlacementError as exc:
        raise UsageError(str(exc)) from exc
    unserved = not_served_yet(view.deployments, replicas, str(view.var("cluster_executor") or "ray"))
    if args.format == "json":
        print(json.dumps({"placement": [r.as_dict() for r in replicas], "engines": engines(replicas),
                          "not_served": unserved}, indent=2))
        return 0
    print(f"# {args.inventory}: {engines(replicas)} vLLM engine(s), one per replica"
          + ("" if view.deployments else " (no cluster_deployments: one replica of the model)"))
    print(format_table(replicas))
    if unserved:
        print("# not served: the validate stage refuses this set: " + "; ".join(unserved))
    return 0


def cluster_view(inventory: str | Path) -> ClusterView:
    """The cluster of ``inventory`` (relative to the current directory, as ``-i`` is), or a
    UsageError naming -i. The .ci scripts call it too, with a string."""
    root = project_root()
    path = Path(inventory).resolve()
    try:
        return ClusterView.load(path, root, env=runner.ansible_env(root, path))
    except InventoryError as exc:
        raise UsageError(f"--inventory: {exc}") from exc


def cmd_ask(args: argparse.Namespace) -> int:
    """One chat completion through the head's OpenAI-compatible API, with the openai client."""
    try:
        import openai  # slow to import: only for this command
    except ImportError as exc:
        raise UsageError("the openai package is not installed (pip install openai)") from exc

    view = cluster_view(_up_inventory(project_root(), args.inventory))
    model = args.model or os.environ.get("MODEL_NAME") or view.served_model
    if not model:
        raise UsageError("--model: the inventory sets no cluster_default_model; name the model")
    endpoint = f"{view.api_url}/v1"
    api_key = os.environ.get("OPENAI_API_KEY") or view.api_key or "none"
    client = openai.OpenAI(base_url=endpoint, api_key=api_key, timeout=args.timeout,
                           http_client=_api_http_client(openai, view))
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens)
    print(f"endpoint:   {endpoint}\nmodel:      {model}\nprompt:     {args.prompt}")
    print(f"completion: {json.dumps(reply.choices[0].message.content)}")
    print(f"tokens:     {reply.usage.prompt_tokens} in, {reply.usage.completion_tokens} out")
    return 0


def _api_http_client(openai, view: ClusterView):
    """The openai client's HTTP client, trusting the cluster's CA when its API is HTTPS (None: default)."""
    ca = view.api_ca_file(state_dir())
    if ca is None:
        return None
    if not ca.is_file():
        raise UsageError(f"the API is HTTPS and its CA {ca} is missing: run `servekit up` (it makes "
                         "servekit's CA), or set cluster_api_tls_ca_file")
    import ssl

    return openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(ca)))


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
# day 2: status, logs, down
# --------------------------------------------------------------------------

# `servekit logs --unit`: the inventory variable naming each unit (None: a name of its own).
LOG_UNITS = {"ray": None, "vllm": "vllm_unit_name", "watchdog": "vllm_watchdog_unit",
             "proxy": "vllm_api_proxy_unit", "router": "vllm_router_unit", "keeper": None}


def _day2_cluster(given: str | None) -> tuple[Path, Path, ClusterView]:
    """The project, the inventory (as for `up`) and its cluster; never an example inventory."""
    root = project_root()
    inventory = _up_inventory(root, given)
    view = cluster_view(inventory)
    if str(view.var("cluster_example_inventory")).lower() in ("true", "yes", "1"):
        raise UsageError(f"--inventory {given}: an example inventory (cluster_example_inventory: true); "
                         "its addresses are not your machines")
    return root, inventory, view


def unit_names(view: ClusterView) -> dict[str, str]:
    names = {kind: view.var(var) for kind, var in LOG_UNITS.items() if var}
    # the rotation keeper's unit is named after the router's (roles/vllm/vars/main.yml)
    keeper = re.sub(r"\.service$", "-keeper.service", str(names["router"]))
    return {**names, "ray": "servekit-ray.service", "keeper": keeper}


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when the cluster serves (the head answered a one-token completion), else 1."""
    from servekit import status as st

    root, inventory, view = _day2_cluster(args.inventory)
    out = state_dir(root) / "status.json"
    out.unlink(missing_ok=True)
    rc = runner.run_playbook(root, inventory, "playbooks/status.yml", {"status_output": str(out)},
                             quiet=True)
    if rc == runner.EXIT_CANCELLED:
        return rc
    if not out.is_file():
        print(f"servekit status: the status playbook failed (rc {rc}); its events are under "
              f"{state_dir(root) / 'runner'}", file=sys.stderr)
        return 1
    executor = str(view.var("cluster_executor"))
    result = st.cluster_status(json.loads(out.read_text()), unit_names(view), executor)
    if view.deployments:  # without them the output stays what it was
        try:
            result.placement = [r.as_dict() for r in view.placement(root, os.environ.get("MODEL_NAME"))]
        except PlacementError as exc:
            result.problems.append(str(exc))
    print(st.format_json(result) if args.format == "json" else st.format_table(result))
    return 0 if result.serving else 1


def log_units(args: argparse.Namespace, names: dict[str, str]) -> list[str]:
    """The units (or journalctl -u patterns) `servekit logs` reads."""
    if args.deployment:  # a deployment's replica engines, on whichever node runs them
        return [replica_unit_pattern(args.deployment, args.replica)]
    if args.replica is not None:
        raise UsageError("--replica: needs --deployment NAME")
    units = [names[kind] for kind in (args.unit or LOG_UNITS)]
    return units if args.unit else [*units, replica_unit_pattern(None, None)]


def replica_unit_pattern(deployment: str | None, replica: int | None) -> str:
    """The unit (or journalctl -u pattern) of a deployment's replica N (1-based), of all its
    replicas, or of every replica engine."""
    from servekit.module_utils.placement import replica_unit, unit_slug

    if deployment is None:
        return replica_unit("*", "[0-9]*")
    return replica_unit(unit_slug(deployment), replica if replica else "[0-9]*")


def journal_argv(units: list[str], lines: int, cursor: str | None = None) -> list[str]:
    """journalctl for ``units``: the last ``lines``, or what came after ``cursor`` (follow)."""
    argv = ["journalctl", "--no-pager", "-o", "short-iso", "--show-cursor"]
    for unit in units:
        argv += ["-u", unit]
    return argv + ([f"--after-cursor={cursor}"] if cursor else ["-n", str(lines)])


def split_cursor(stdout: str) -> tuple[list[str], str | None]:
    """journalctl --show-cursor output: the entries, and the cursor after the last one."""
    lines = stdout.splitlines()
    if lines and lines[-1].startswith("-- cursor: "):
        return lines[:-1], lines[-1][len("-- cursor: "):]
    return [line for line in lines if line != "-- No entries --"], None


def cmd_logs(args: argparse.Namespace) -> int:
    """The journal of the chosen units on one node or all, each line prefixed by its node."""
    root, inventory, view = _day2_cluster(args.inventory)
    if args.node and args.node not in view.nodes:
        raise UsageError(f"node {args.node!r} is not in the inventory; nodes: {', '.join(view.nodes)}")
    units = log_units(args, unit_names(view))
    targets = [args.node] if args.node else list(view.nodes)
    width = max(len(n) for n in targets)
    cursors: dict[str, str | None] = {}
    while True:
        if not cursors:  # the first round: every node in one ansible run
            found = runner.run_command(root, inventory, ":".join(targets), journal_argv(units, args.lines))
        else:  # then per node, what came after its cursor
            found = {}
            for host in targets:
                found.update(runner.run_command(root, inventory, host,
                                                journal_argv(units, args.lines, cursors.get(host))))
        for host in targets:
            result = found.get(host)
            if result is None:
                continue
            if result["unreachable"]:
                print(f"{host:<{width}} | unreachable: {result['msg']}", file=sys.stderr)
                continue
            entries, cursor = split_cursor(result["stdout"])
            cursors[host] = cursor or cursors.get(host)
            for line in entries:
                print(f"{host:<{width}} | {line}", flush=True)
        if not args.follow:
            return 0
        time.sleep(args.interval)


def cmd_down(args: argparse.Namespace) -> int:
    root, inventory, view = _day2_cluster(args.inventory)
    purge = {"down_purge_models": args.purge_models, "down_purge_runtime": args.purge_runtime}
    what = "stop and remove vLLM, its watchdog, the API proxy and Ray"
    extra = [name for flag, name in ((args.purge_models, "the model files"),
                                     (args.purge_runtime, "the venv and caches")) if flag]
    if extra:
        what += ", and delete " + " and ".join(extra)
    print(f"servekit down: {what} on {', '.join(view.nodes)} ({inventory}); packages, "
          f"{'' if args.purge_models else 'model files, '}secrets and the firewall stay.")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("--yes: not a terminal, so nothing was asked; pass --yes to take it down")
        if input("Go on? [y/N] ").strip().lower() not in ("y", "yes"):
            print("servekit down: nothing done")
            return 1
    rc = runner.run_playbook(root, inventory, "playbooks/down.yml", purge)
    if rc == 0:
        print(f"servekit down: done; `servekit up -i {inventory}` brings it back")
    return rc
