"""servekit: look at the model registry, render launches, run the playbooks.

Exit codes: 0 success; 2 bad input (one line on stderr), including what the
playbook's validate play rejects; 1 a playbook failure on a host; 130
cancelled with Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from servekit import runs
from servekit.module_utils.vllm_registry import (
    EXECUTORS,
    RUNTIMES,
    NodeSpec,
    RegistryError,
    build_launch_plan,
    load_registry_file,
    render_unit,
    select_model,
)

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130
# Plays on the control node that reject input before any host is touched;
# their failures are bad input (exit 2).
VALIDATE_PLAY = "Validate inventory and model registry"  # playbooks/validate.yml
EXAMPLE_GUARD_PLAY = "Refuse to configure an example inventory"  # playbooks/preflight.yml
CONTROL_NODE_PLAYS = (VALIDATE_PLAY, EXAMPLE_GUARD_PLAY)
# `servekit up` without -i: the local lab (written by `servekit lab up`).
LAB_INVENTORY = "inventory/lab"


class UsageError(Exception):
    """Bad command-line input; reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def project_root() -> Path:
    """The checkout holding site.yml (SERVEKIT_HOME overrides)."""
    env = os.environ.get("SERVEKIT_HOME")
    root = Path(env) if env else Path(__file__).resolve().parent.parent
    if not (root / "site.yml").is_file():
        raise UsageError(
            f"no site.yml under {root}; set SERVEKIT_HOME to the servekit checkout"
        )
    return root


def default_registry() -> Path:
    return project_root() / "config" / "model_registry.yml"


def _models(registry: str | None) -> dict:
    return load_registry_file(str(registry or default_registry()))


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    models = _models(args.registry)
    rows = [("NAME", "MODEL", "TP", "PP", "DTYPE", "DESCRIPTION")]
    for name, entry in models.items():
        rows.append((
            name,
            entry["model"],
            str(entry.get("tensor-parallel-size", 1)),
            str(entry.get("pipeline-parallel-size", 1)),
            str(entry.get("dtype", "auto")),
            entry.get("description", ""),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


# --------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    models = _models(args.registry)
    name = args.model or os.environ.get("MODEL_NAME")
    entry = select_model(models, name)
    nnodes = args.nnodes
    if nnodes is None:
        world = entry.get("tensor-parallel-size", 1) * entry.get("pipeline-parallel-size", 1)
        nnodes = max(1, -(-world // args.devices_per_node))
    node = NodeSpec(
        node_rank=args.node_rank,
        nnodes=nnodes,
        head_address=args.head_address,
        host_address=args.host_address,
        devices_per_node=args.devices_per_node,
        executor=args.executor,
        runtime=args.runtime,
        api_port=args.api_port,
    )
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


# --------------------------------------------------------------------------
# ask
# --------------------------------------------------------------------------


def _inventory_head(inventory: str) -> tuple[str, dict]:
    """The head's name and variables, as ansible-inventory resolves them."""
    import subprocess

    root = project_root()
    path = Path(inventory) if Path(inventory).is_absolute() else root / inventory
    if not path.exists():
        raise UsageError(f"--inventory: {inventory} does not exist (for the lab: servekit lab up)")
    tool = Path(sys.executable).with_name("ansible-inventory")
    proc = subprocess.run(
        [str(tool), "-i", str(path), "--list"], capture_output=True, text=True, check=False,
        env=os.environ | _runner_env(root),
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [""])[-1]
        if "vault" in detail:
            detail += " (set ANSIBLE_VAULT_PASSWORD_FILE; the lab's is /var/lib/servekit/lab/vault-pass)"
        raise UsageError(f"--inventory: {inventory}: {detail}")
    data = json.loads(proc.stdout)
    heads = data.get("head", {}).get("hosts", [])
    if len(heads) != 1:
        raise UsageError(f"--inventory: {inventory}: group 'head' must hold exactly one host, has {heads}")
    return heads[0], data["_meta"]["hostvars"].get(heads[0], {})


def resolve_plain_var(hostvars: dict, name: str):
    """``name`` from ansible-inventory output, following one ``{{ other }}`` indirection.

    ansible-inventory does not template; the lab's ``vllm_api_key`` is
    ``{{ vault_vllm_api_key }}``, whose value comes decrypted from vault.yml.
    """
    value = hostvars.get(name)
    match = re.fullmatch(r"\{\{\s*(\w+)\s*(?:\|\s*default\(None\)\s*)?\}\}", value) \
        if isinstance(value, str) else None
    return hostvars.get(match.group(1)) if match else value


def cmd_ask(args: argparse.Namespace) -> int:
    """One chat completion through the head's OpenAI-compatible API, with the openai client."""
    try:
        import openai
    except ImportError as exc:
        raise UsageError("the openai package is not installed (pip install openai)") from exc
    name, hv = _inventory_head(args.inventory)
    address = hv.get("cluster_data_address", hv.get("ansible_host", name))
    port = hv.get("cluster_api_port", 8000)
    model = args.model or os.environ.get("MODEL_NAME") or hv.get("cluster_default_model")
    if not model:
        raise UsageError("--model: the inventory sets no cluster_default_model; name the model")
    endpoint = f"http://{address}:{port}/v1"
    api_key = os.environ.get("OPENAI_API_KEY") or resolve_plain_var(hv, "vllm_api_key") or "none"
    client = openai.OpenAI(base_url=endpoint, api_key=api_key, timeout=args.timeout)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens,
    )
    print(f"endpoint:   {endpoint}")
    print(f"model:      {model}")
    print(f"prompt:     {args.prompt}")
    print(f"completion: {json.dumps(reply.choices[0].message.content)}")
    print(f"tokens:     {reply.usage.prompt_tokens} in, {reply.usage.completion_tokens} out")
    return 0


# --------------------------------------------------------------------------
# up
# --------------------------------------------------------------------------


def _runner_cmdline(args: argparse.Namespace) -> str:
    words: list[str] = []
    if args.check:
        words += ["--check", "--diff"]
    elif args.diff:
        words.append("--diff")
    if args.skip_tags:
        words += ["--skip-tags", args.skip_tags]
    for extra in args.extra_vars or []:
        words += ["--extra-vars", extra]
    return shlex.join(words)


def _runner_env(root: Path) -> dict[str, str]:
    # ansible-playbook comes from the same environment as servekit, even
    # when that venv is not activated.
    bindir = str(Path(sys.executable).parent)
    env = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
    }
    # ansible-runner gives ansible-playbook a pty, so ansible colours its
    # output even when ours goes to a log file: colour only for a terminal.
    env["ANSIBLE_FORCE_COLOR" if sys.stdout.isatty() else "ANSIBLE_NOCOLOR"] = "1"
    return env


def _up_inventory(root: Path, given: str | None) -> Path:
    """-i as given (relative to the current directory), else the lab's inventory.

    Never the example cluster: its addresses are someone else's machines.
    """
    if given is None:
        lab = root / LAB_INVENTORY
        if not (lab / "hosts.yml").is_file():
            raise UsageError(
                f"no --inventory given and no lab inventory ({LAB_INVENTORY}/hosts.yml): "
                "run `servekit lab up`, or pass -i inventory/<cluster>"
            )
        return lab
    inventory = Path(given).resolve()
    if not inventory.exists():
        raise UsageError(f"--inventory {given}: no such file or directory")
    return inventory


def rerun_words(args: argparse.Namespace) -> list[str]:
    """The ``servekit up`` command that repeats this run for real (no --check)."""
    words = ["servekit", "up"]
    if args.inventory is not None:
        words += ["-i", args.inventory]
    for flag, value in (("--tags", args.tags), ("--skip-tags", args.skip_tags), ("--limit", args.limit),
                        ("--model", os.environ.get("MODEL_NAME"))):
        if value:
            words += [flag, value]
    for extra in args.extra_vars or []:
        words += ["-e", extra]
    if args.diff:
        words.append("--diff")
    return words


def cmd_up(args: argparse.Namespace) -> int:
    root = project_root()
    if args.model:
        os.environ["MODEL_NAME"] = args.model
    if os.environ.get("MODEL_NAME"):
        # Fail here, before ansible starts, with the list of models.
        select_model(_models(None), os.environ["MODEL_NAME"])
    inventory = _up_inventory(root, args.inventory)

    import ansible_runner  # slow import: only for the command that needs it

    cancel = threading.Event()
    log = runs.EventLog()
    # Every setting of this run is passed here and nowhere else: a fresh
    # private data dir, and no env/ files (see servekit/runs.py).
    private_dir = runs.new_private_dir(root / ".cache" / "runner")
    thread, runner = ansible_runner.run_async(
        private_data_dir=str(private_dir),
        project_dir=str(root),
        playbook=str(root / "site.yml"),
        inventory=str(inventory),
        tags=args.tags or None,
        # The validate stage and the example-inventory guard run on the
        # control node: a --limit to some nodes must not skip them.
        limit=f"{args.limit},localhost" if args.limit else None,
        cmdline=_runner_cmdline(args) or None,
        verbosity=args.verbose or None,
        envvars=_runner_env(root),
        suppress_env_files=True,
        cancel_callback=cancel.is_set,
        event_handler=log,
        quiet=False,
    )
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        print("\nservekit: cancelling the playbook run...", file=sys.stderr)
        # ansible-runner stops ansible-playbook only; the module processes it
        # started (a long command, a wait loop) would live on as orphans.
        terminate_descendants(os.getpid())
        cancel.set()
        thread.join()
    if cancel.is_set() or runner.status == "canceled":
        print("servekit: cancelled", file=sys.stderr)
        if not args.check:
            print(runs.failure_summary(log.events, rerun_words(args)), file=sys.stderr)
        return EXIT_CANCELLED
    if runner.rc == 0:
        return 0
    return _report_failure(log, runner.rc, private_dir / "artifacts", args)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def terminate_descendants(pid: int, grace_s: float = 5.0) -> list[int]:
    """SIGTERM every descendant of ``pid`` (then SIGKILL after a grace period)."""
    if not Path("/proc/self/stat").exists():
        return []
    children = _children_map()
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for child in found:
            try:
                os.kill(child, sig)
                alive.append(child)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [c for c in alive if Path(f"/proc/{c}").exists() and not _is_zombie(c)]
            time.sleep(0.1)
        if not alive:
            break
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _report_failure(log: runs.EventLog, rc: int | None, artifacts: Path,
                    args: argparse.Namespace) -> int:
    """Bad input caught on the control node exits 2 like any bad input; else 1, with what
    the run changed on each node before it stopped and how to finish or revert it."""
    failures = log.failures()
    first = failures[0] if failures else {}
    message = first.get("msg", "").replace("\n", " ")
    if first.get("play") in CONTROL_NODE_PLAYS:
        print(f"servekit: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    where = f" on {first.get('host')} at '{runs.task_label(first)}'" if first else ""
    print(f"servekit: playbook failed{where} (ansible-playbook rc {rc}); "
          f"events under {artifacts}", file=sys.stderr)
    if args.check:
        print("servekit: dry run: nothing on the nodes was changed", file=sys.stderr)
    else:
        print(runs.failure_summary(log.events, rerun_words(args)), file=sys.stderr)
    return 1


# --------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="servekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command_name", required=True, parser_class=_Parser)

    models = sub.add_parser("models", help="list the models in the registry")
    models.add_argument("--registry", help="registry YAML (default: config/model_registry.yml)")
    models.set_defaults(func=cmd_models)

    render = sub.add_parser("render", help="show what one node would launch for a model")
    render.add_argument("model", nargs="?", help="registry name (default: $MODEL_NAME)")
    render.add_argument("--registry", help="registry YAML (default: config/model_registry.yml)")
    render.add_argument("--node-rank", type=int, default=0, help="0 is the head (default 0)")
    render.add_argument("--nnodes", type=int, help="nodes in the cluster (default: what the model spans)")
    render.add_argument("--devices-per-node", type=int, default=1, help="GPUs per node (default 1)")
    render.add_argument("--head-address", default="127.0.0.1", help="head's data address")
    render.add_argument("--host-address", help="this node's data address (VLLM_HOST_IP)")
    render.add_argument("--executor", choices=EXECUTORS, default="ray")
    render.add_argument("--runtime", choices=RUNTIMES, default="native")
    render.add_argument("--api-port", type=int, default=8000)
    render.add_argument("--command", default="vllm", help="argv prefix before 'serve' (default: vllm)")
    render.add_argument("--format", choices=("text", "json"), default="text")
    render.set_defaults(func=cmd_render)

    up = sub.add_parser("up", help="run site.yml through ansible-runner")
    up.add_argument("--inventory", "-i",
                    help=f"inventory file or folder (default: the lab, {LAB_INVENTORY}, "
                         "once `servekit lab up` wrote it)")
    up.add_argument("--tags", "-t", help="comma-separated stages (preflight, rdma, vllm, ...)")
    up.add_argument("--skip-tags", help="comma-separated stages to skip")
    up.add_argument("--limit", "-l", help="host pattern")
    up.add_argument("--model", help="registry name to serve (sets MODEL_NAME)")
    up.add_argument("--check", action="store_true", help="dry run: --check --diff")
    up.add_argument("--diff", action="store_true", help="show file changes")
    up.add_argument("--extra-vars", "-e", action="append", help="extra variables, as for ansible")
    up.add_argument("--verbose", "-v", action="count", default=0)
    up.set_defaults(func=cmd_up)

    ask = sub.add_parser("ask", help="one chat completion from the cluster's API (openai client)")
    ask.add_argument("prompt", nargs="?", default="Say hello to the cluster.")
    ask.add_argument("--inventory", "-i", default="inventory/lab")
    ask.add_argument("--model", help="served model name (default: $MODEL_NAME, else the inventory's default)")
    ask.add_argument("--max-tokens", type=int, default=32)
    ask.add_argument("--timeout", type=float, default=120.0)
    ask.set_defaults(func=cmd_ask)

    _add_lab_parser(sub)
    return parser


def _lab_scan(lab, paths, args: argparse.Namespace) -> int:
    """Print what an outsider reaches; exit 1 when more than SSH (and the API on the head) answers."""
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


def _add_lab_parser(sub) -> None:
    lab = sub.add_parser("lab", help="the local lab cluster (systemd-nspawn nodes on a bridge)")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser)
    lab_up = lab_sub.add_parser("up", help="build and boot the nodes; write inventory/lab")
    lab_up.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    lab_down = lab_sub.add_parser("down", help="stop and remove every node, netns, bridge and rule")
    lab_down.add_argument("--purge", action="store_true", help="also remove the cached base, wheels, model")
    lab_sub.add_parser("status", help="nodes, addresses and systemd state")
    lab_scan = lab_sub.add_parser("scan", help="scan every TCP port of every node from an outsider namespace")
    lab_scan.add_argument("--ports", default="1-65535", help="ports to try (default 1-65535)")
    lab_scan.add_argument("--api-port", type=int, default=8000, help="the API port allowed on the head")
    for verb, text in (("stop", "power one node off (its files stay)"),
                       ("start", "boot a stopped node again")):
        one = lab_sub.add_parser(verb, help=text)
        one.add_argument("node", help="node name, e.g. lab-worker-1")
    lab_ssh = lab_sub.add_parser("ssh", help="ssh to a node (as root)")
    lab_ssh.add_argument("node", help="node name, e.g. lab-head")
    lab_ssh.add_argument("remote", nargs=argparse.REMAINDER, help="command to run (default: a shell)")
    lab.set_defaults(func=cmd_lab)


def cmd_lab(args: argparse.Namespace) -> int:
    from servekit import lab

    paths = lab.Paths.default(project_root())
    try:
        if args.lab_command == "up":
            lab.up(paths, workers=args.workers)
        elif args.lab_command == "down":
            lab.down(paths, purge=args.purge)
        elif args.lab_command == "status":
            rows = lab.status(paths)
            if not rows:
                print("no lab is up")
            for row in rows:
                print(f"{row['name']:<14} {row['group']:<8} {row['address']:<12} "
                      f"pid={row['pid'] or '-':<8} {row['state']}")
        elif args.lab_command == "scan":
            return _lab_scan(lab, paths, args)
        elif args.lab_command == "stop":
            lab.stop(paths, args.node)
        elif args.lab_command == "start":
            lab.start(paths, args.node)
        else:
            return lab.ssh(paths, args.node, args.remote)
    except lab.LabError as exc:
        print(f"servekit lab: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RegistryError, UsageError) as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
