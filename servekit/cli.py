"""servekit: look at the model registry, render launches, run the playbooks.

Exit codes: 0 success; 2 bad input (one line on stderr), including what the
playbook's validate play rejects; 1 a playbook failure on a host; 130
cancelled with Ctrl+C.

The composition root: it wires the subcommands of the three rooms of the package (the
core's commands, the lab's, the completion script from this very parser) and nothing imports
it (tests/unit/test_import_direction.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from servekit import commands as cmd
from servekit import runner
from servekit.commands import LAB_INVENTORY, UsageError
from servekit.completion import bash_completion
from servekit.lab import LabError
from servekit.lab import cli as lab_cli
from servekit.module_utils.vllm_registry import EXECUTORS, RUNTIMES, RegistryError
from servekit.project import ProjectNotFound


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(runner.EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="servekit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command_name", required=True, parser_class=_Parser)
    registry_help = "registry YAML (default: config/model_registry.yml)"

    models = sub.add_parser("models", help="list the models in the registry")
    models.add_argument("--registry", help=registry_help)
    models.set_defaults(func=cmd.cmd_models)

    render = sub.add_parser("render", help="show what one node would launch for a model")
    render.add_argument("model", nargs="?", help="registry name (default: $MODEL_NAME)")
    render.add_argument("--registry", help=registry_help)
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
    render.add_argument("--inventory", "-i", help="show where every replica of the inventory's "
                        "cluster_deployments runs (nodes, devices) instead of one node's launch")
    render.set_defaults(func=cmd.cmd_render)

    up = sub.add_parser("up", help="run site.yml through ansible-runner")
    up.add_argument("--inventory", "-i", help=f"inventory file or folder (default: the lab, "
                                              f"{LAB_INVENTORY}, once `servekit lab up` wrote it)")
    up.add_argument("--tags", "-t", help="comma-separated stages (preflight, rdma, vllm, ...)")
    up.add_argument("--skip-tags", help="comma-separated stages to skip")
    up.add_argument("--limit", "-l", help="host pattern")
    up.add_argument("--model", help="registry name to serve (sets MODEL_NAME)")
    up.add_argument("--check", action="store_true", help="dry run: --check --diff")
    up.add_argument("--diff", action="store_true", help="show file changes")
    up.add_argument("--extra-vars", "-e", action="append", help="extra variables, as for ansible")
    up.add_argument("--verbose", "-v", action="count", default=0)
    up.set_defaults(func=cmd.cmd_up)

    ask = sub.add_parser("ask", help="one chat completion from the cluster's API (openai client)")
    ask.add_argument("prompt", nargs="?", default="Say hello to the cluster.")
    ask.add_argument("--inventory", "-i",
                     help=f"inventory file or folder (default: the lab, {LAB_INVENTORY})")
    ask.add_argument("--model", help="served model name (default: $MODEL_NAME, else the inventory's default)")
    ask.add_argument("--max-tokens", type=int, default=32)
    ask.add_argument("--timeout", type=float, default=120.0)
    ask.set_defaults(func=cmd.cmd_ask)

    _add_day2_parsers(sub)
    lab_cli.add_parser(sub)
    return parser


def _add_day2_parsers(sub) -> None:
    inventory_help = f"inventory file or folder (default: the lab, {LAB_INVENTORY})"
    status = sub.add_parser("status", help="per node: Ray, vLLM rank and unit, watchdog, readiness; "
                                           "exit 1 when the cluster does not serve")
    status.add_argument("--inventory", "-i", help=inventory_help)
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.set_defaults(func=cmd.cmd_status)

    logs = sub.add_parser("logs", help="the journal of the servekit units, each line prefixed by its node")
    logs.add_argument("node", nargs="?", help="one node (default: every node)")
    logs.add_argument("--inventory", "-i", help=inventory_help)
    logs.add_argument("--unit", "-u", action="append", choices=tuple(cmd.LOG_UNITS),
                      help="repeatable (default: all of ray, vllm, watchdog, proxy, router, keeper, "
                           "and every replica engine)")
    logs.add_argument("--deployment", "-d",
                      help="only this deployment's replica engines (cluster_deployments)")
    logs.add_argument("--replica", "-r", type=int, help="with --deployment: only its replica N (1-based)")
    logs.add_argument("--lines", "-n", type=int, default=50, help="last lines per node (default 50)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    logs.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    logs.set_defaults(func=cmd.cmd_logs)

    down = sub.add_parser("down", help="stop and remove the units site.yml started (packages, models, "
                                       "secrets and firewall stay); `servekit up` brings it back")
    down.add_argument("--inventory", "-i", help=inventory_help)
    down.add_argument("--yes", "-y", action="store_true", help="do not ask")
    down.add_argument("--purge-models", action="store_true", help="also delete the copied model files")
    down.add_argument("--purge-runtime", action="store_true", help="also delete the venv and caches")
    down.set_defaults(func=cmd.cmd_down)

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash",))
    completion.set_defaults(func=_print_completion)


def _print_completion(args: argparse.Namespace) -> int:
    print(bash_completion(build_parser()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"servekit lab: error: {exc}", file=sys.stderr)
        return 1
    except (ProjectNotFound, RegistryError, UsageError) as exc:
        print(f"servekit: error: {exc}", file=sys.stderr)
        return runner.EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return runner.EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
