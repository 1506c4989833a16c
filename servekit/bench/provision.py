"""Provisioning speed on the lab at 2/4/8 nodes (issue 14 item 3): `servekit up` from bare nodes, and re-run.

    python -m servekit.bench.provision run [--workers 1,3,7] [--reruns 3] \
        [--variant NAME:ANSIBLE_X=V[,ANSIBLE_Y=W]] ... [--skip-vllm-above NODES] \
        [--results-dir .cache/bench/provision]
    python -m servekit.bench.provision recap PLAYBOOK_LOG      # the PLAY RECAP and timings of a log, as JSON

For each worker count N (1, 3, 7: 2, 4 and 8 nodes) `run` brings the lab up
(`servekit lab up --workers N`: bare nodes), times `servekit up` once from
bare nodes and then ``--reruns`` idempotent re-runs per settings variant
(round after round, variants interleaved), reads each run's PLAY RECAP (ok,
changed, failed per host) and the servekit_timings total, brings the lab
down, and after each size writes ``results.json`` and ``results.md`` under a
run folder of ``--results-dir``. The lab is always brought down, also after
a failure, Ctrl+C or SIGTERM; a lab that is already up is refused, never
reused or taken down (it is someone else's). benchmarks/provision.sh is the
entry point; it also takes the lab down if this process dies by SIGKILL.

A variant is a set of ANSIBLE_* environment overrides for the re-runs (the
cold run always uses the project's settings), e.g.
``nopipe:ANSIBLE_PIPELINING=false`` or ``forks5:ANSIBLE_FORKS=5``: `servekit
up` hands its environment to ansible-playbook (ansible-runner copies
os.environ), so each changes exactly that setting. servekit up's own
ANSIBLE_CONFIG, stdout callback and the servekit_timings callback stay.

Exit codes: 0 done; 1 a lab or playbook step failed (the results so far are
written); 2 bad input or a lab already up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servekit.bench.report import spread_of

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

ANSI = re.compile(r"\x1b\[[0-9;]*m")
RECAP_HOST = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:[a-z]+=\d+\s*)+)$")
COUNT = re.compile(r"([a-z]+)=(\d+)")
TIMINGS_LINE = re.compile(r"^(?P<name>.*\S)\s+(?P<seconds>\d+(?:\.\d+)?)s$")
RECAP_KEYS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
# The lab's nodes: a copy of the Debian base plus, after the runtime stage,
# vLLM's CPU venv (torch) each; vLLM itself runs on two of them.
DISK_PER_NODE_GIB = 4.0
MEMORY_PER_NODE_GIB = 1.0
MEMORY_SERVING_GIB = 6.0
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
ENV_NAME = re.compile(r"^ANSIBLE_[A-Z0-9_]+$")
# servekit up sets these itself (servekit/runner.py up_env): a variant must not replace them.
RESERVED_ENV = ("ANSIBLE_CONFIG", "ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CALLBACKS_ENABLED",
                "ANSIBLE_CALLBACK_PLUGINS")


class BenchError(RuntimeError):
    """A step of the benchmark failed (the lab is still brought down)."""


# --------------------------------------------------------------------------
# reading ansible-playbook output
# --------------------------------------------------------------------------


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    """Per host the counters of the last PLAY RECAP in an ansible-playbook log ({} when there is none).

    The default callback (and servekit's, which extends it) prints one line per
    host, ``host : ok=N changed=N unreachable=N failed=N skipped=N rescued=N
    ignored=N``, coloured per counter on a terminal; the colours are removed.
    """
    lines = strip_ansi(text).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")]
    if not starts:
        return {}
    recap: dict[str, dict[str, int]] = {}
    for line in lines[starts[-1] + 1:]:
        match = RECAP_HOST.match(line.strip())
        if not match:
            if recap:
                break
            continue
        recap[match["host"]] = {key: int(value) for key, value in COUNT.findall(match["counts"])}
    return recap


def recap_totals(recap: Mapping[str, Mapping[str, int]], exclude: tuple[str, ...] = ("localhost",)
                 ) -> dict[str, int]:
    """Each counter summed over the nodes (the control node's localhost left out), and ``hosts``."""
    nodes = {host: counts for host, counts in recap.items() if host not in exclude}
    totals = {key: sum(counts.get(key, 0) for counts in nodes.values()) for key in RECAP_KEYS}
    totals["hosts"] = len(nodes)
    return totals


def parse_timings(text: str) -> dict[str, Any] | None:
    """The servekit_timings block (callback_plugins/servekit_timings.py): slowest tasks and the total."""
    lines = strip_ansi(text).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("TASK TIMINGS")]
    if not starts:
        return None
    tasks: list[tuple[str, float]] = []
    total = None
    for line in lines[starts[-1] + 1:]:
        match = TIMINGS_LINE.match(line.rstrip())
        if not match:
            if tasks or total is not None:
                break
            continue
        if match["name"] == "total":
            total = float(match["seconds"])
            break
        tasks.append((match["name"], float(match["seconds"])))
    return {"total_s": total, "slowest": tasks}


def read_log(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8", errors="replace")
    recap = parse_recap(text)
    return {"recap": recap, "totals": recap_totals(recap), "timings": parse_timings(text)}


# --------------------------------------------------------------------------
# settings, results
# --------------------------------------------------------------------------


def parse_workers(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= n <= 8 for n in counts):
        raise ValueError(f"--workers: {text!r}; allowed: worker counts 1 to 8 (servekit lab up --workers), "
                         "e.g. 1,3,7 for 2, 4 and 8 nodes")
    return counts


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:ANSIBLE_X=V[,ANSIBLE_Y=W]`` -> (NAME, {ANSIBLE_X: V, ...})."""
    form = ("allowed form: NAME:ANSIBLE_SETTING=VALUE[,ANSIBLE_OTHER=VALUE], "
            "e.g. nopipe:ANSIBLE_PIPELINING=false")
    name, sep, rest = text.partition(":")
    if not sep or not VARIANT_NAME.match(name) or name == "default" or not rest:
        raise ValueError(f"--variant: {text!r}; {form} (NAME of letters, digits, ._-; not 'default')")
    env: dict[str, str] = {}
    for assignment in rest.split(","):
        key, eq, value = assignment.partition("=")
        if not eq or not ENV_NAME.match(key):
            raise ValueError(f"--variant: {text!r}: {assignment!r} is not ANSIBLE_SETTING=VALUE; {form}")
        if key in RESERVED_ENV:
            raise ValueError(f"--variant: {text!r}: {key} is set by servekit up itself; allowed: any other "
                             "ANSIBLE_* setting")
        env[key] = value
    return name, env


def summarize(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size and variant: the re-runs' median wall time, its range and spread, and changed counts."""
    rows = []
    for size in sizes:
        cold = size.get("cold") or {}
        variants: dict[str, list[dict]] = {}
        for rerun in size.get("reruns", []):
            variants.setdefault(rerun["variant"], []).append(rerun)
        for variant, runs in variants.items() or [("default", [])]:
            ok = [run for run in runs if run["rc"] == 0]
            rows.append({
                "nodes": size["nodes"], "workers": size["workers"], "variant": variant,
                "lab_up_s": size.get("lab_up_s"),
                "cold_s": cold.get("wall_s"), "cold_changed": (cold.get("totals") or {}).get("changed"),
                "cold_rc": cold.get("rc"),
                "rerun": spread_of(run["wall_s"] for run in ok),
                "rerun_changed": [(run.get("totals") or {}).get("changed") for run in runs],
                "rerun_failed": len(runs) - len(ok),
            })
    return rows


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, on the default settings: 2-node re-run < 60 s; 8-node within 1.5x the 2-node."""
    base = {row["nodes"]: row["rerun"]["median"] for row in rows
            if row["variant"] == "default" and row["rerun"]}
    out = []
    if 2 in base:
        out.append(f"2-node re-run {base[2]:.0f} s (median): {'met' if base[2] < 60 else 'NOT met'} "
                   "(target under 60 s)")
    for nodes in sorted(n for n in base if n > 2):
        if 2 in base:
            ratio = base[nodes] / base[2]
            verdict = "met" if nodes != 8 or ratio <= 1.5 else "NOT met"
            out.append(f"{nodes}-node re-run / 2-node re-run = {ratio:.2f}"
                       + (f": {verdict} (target at most 1.5)" if nodes == 8 else ""))
    return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_markdown(doc: Mapping[str, Any]) -> str:
    rows = summarize(doc["sizes"])
    lines = [
        f"# Provisioning speed: {doc['started']}",
        "",
        f"Machine: {doc['machine']}. `servekit up` (site.yml, tags: {doc['tags'] or 'default'}) from bare "
        f"lab nodes (`servekit lab up`), then {doc['reruns']} idempotent re-run(s) per settings variant, "
        "round after round. Re-run: median wall time in s, [min-max], spread = (max - min) / median.",
        "",
        "| nodes | variant | lab up s | cold up s | cold changed | re-run s median [min-max] | spread "
        "| re-run changed | failed re-runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rerun = row["rerun"]
        cell = f"{rerun['median']:.1f} [{rerun['min']:.1f}-{rerun['max']:.1f}]" if rerun else "-"
        spread = f"{rerun['spread']:.1%}" if rerun and rerun["spread"] is not None else "-"
        cold = _s(row["cold_s"]) + ("" if row["cold_rc"] in (0, None) else f" (rc {row['cold_rc']})")
        changed = ", ".join("-" if c is None else str(c) for c in row["rerun_changed"]) or "-"
        lines.append(f"| {row['nodes']} | {row['variant']} | {_s(row['lab_up_s'])} | {cold} | "
                     f"{'-' if row['cold_changed'] is None else row['cold_changed']} | {cell} | {spread} | "
                     f"{changed} | {row['rerun_failed']} |")
    variants = doc.get("variants") or {}
    if variants:
        lines += ["", "Variants (environment of the re-runs):", ""]
        lines += [f"- `{name}`: " + " ".join(f"`{k}={v}`" for k, v in env.items())
                  for name, env in variants.items()]
    checks = targets(rows)
    if checks:
        lines += ["", "Targets (issue 14):", ""] + [f"- {line}" for line in checks]
    for size in doc["sizes"]:
        slowest = ((size.get("cold") or {}).get("timings") or {}).get("slowest") or []
        if slowest:
            lines += ["", f"Slowest tasks of the cold run, {size['nodes']} nodes:", ""]
            lines += [f"- {seconds:.1f} s {name}" for name, seconds in slowest[:8]]
    if doc.get("errors"):
        lines += ["", "Errors:", ""] + [f"- {error}" for error in doc["errors"]]
    return "\n".join(lines) + "\n"


def write_results(run_dir: Path, doc: Mapping[str, Any]) -> None:
    (run_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (run_dir / "results.md").write_text(format_markdown(doc), encoding="utf-8")


# --------------------------------------------------------------------------
# host checks
# --------------------------------------------------------------------------


def meminfo_available_gib(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / (1 << 20)
    raise ValueError("no MemAvailable in /proc/meminfo")


def room_for(nodes: int, free_disk_gib: float, available_memory_gib: float, serving: bool) -> list[str]:
    """Why the host cannot hold a lab of ``nodes`` nodes ([] when it can)."""
    problems = []
    disk = nodes * DISK_PER_NODE_GIB
    memory = nodes * MEMORY_PER_NODE_GIB + (MEMORY_SERVING_GIB if serving else 0)
    if free_disk_gib < disk:
        problems.append(f"{nodes} nodes need about {disk:.0f} GiB of disk ({DISK_PER_NODE_GIB:.0f} GiB each: "
                        f"the base and vLLM's venv), {free_disk_gib:.1f} GiB free")
    if available_memory_gib < memory:
        problems.append(f"{nodes} nodes need about {memory:.0f} GiB of memory (Ray on each, vLLM on two), "
                        f"{available_memory_gib:.1f} GiB available")
    return problems


# --------------------------------------------------------------------------
# running it
# --------------------------------------------------------------------------


class Runner:
    """Runs servekit's commands as children; on SIGTERM/SIGINT stops the one running, then unwinds."""

    def __init__(self, root: Path, log_dir: Path) -> None:
        self.root = root
        self.log_dir = log_dir
        self.child: subprocess.Popen | None = None

    def servekit(self, args: list[str], log_name: str, env: Mapping[str, str] | None = None,
                 timeout: float = 7200.0) -> tuple[int, float, Path]:
        """``python -m servekit.cli ARGS``, its output to the terminal and to ``log_name``.

        Returns (exit code, wall seconds, log path).
        """
        log_path = self.log_dir / log_name
        argv = [sys.executable, "-m", "servekit.cli", *args]
        print(f"== {' '.join(['servekit', *args])}  (log: {log_path})", flush=True)
        started = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            self.child = subprocess.Popen(argv, cwd=self.root, env={**os.environ, **(env or {})},
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          errors="replace")
            deadline = started + timeout
            for line in self.child.stdout or ():
                log.write(line)
                sys.stdout.write(line)
                if time.monotonic() > deadline:
                    self.stop_child()
                    break
            rc = self.child.wait()
        self.child = None
        return rc, time.monotonic() - started, log_path

    def stop_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        # servekit up cancels its playbook (and the module processes it started) on SIGINT
        child.send_signal(signal.SIGINT)
        try:
            child.wait(120)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _terminate(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def close_control_masters(control_dir: Path) -> None:
    """End the ssh ControlPersist masters of one lab (its nodes are gone; a stale master would hang)."""
    ssh = shutil.which("ssh")
    for sock in control_dir.glob("*") if ssh else ():
        subprocess.run([ssh, "-o", f"ControlPath={sock}", "-O", "exit", "servekit-lab"],
                       capture_output=True, check=False, timeout=30)
    shutil.rmtree(control_dir, ignore_errors=True)


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20)
    except (OSError, ValueError, IndexError):
        mem = 0.0
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB"


def bench_size(runner: Runner, lab, workers: int, args: argparse.Namespace, *,
               variants: dict[str, dict[str, str]], size: dict[str, Any]) -> None:
    """One lab size: up, cold `servekit up`, re-runs; fills ``size`` as it goes (the caller takes it down)."""
    nodes = workers + 1
    rc, seconds, log = runner.servekit(["lab", "up", "--workers", str(workers)], f"n{nodes}-lab-up.log")
    size["lab_up_s"] = round(seconds, 1)
    if rc != 0:
        raise BenchError(f"{nodes} nodes: servekit lab up failed (rc {rc}); see {log}")
    if not lab.nodes:
        raise BenchError(f"{nodes} nodes: servekit lab up wrote no lab state")
    up = ["up"]
    if args.tags:
        up += ["--tags", args.tags]
    skip = [t for t in (args.skip_tags or "").split(",") if t]
    if args.skip_vllm_above is not None and nodes > args.skip_vllm_above:
        skip.append("vllm")
        size["skipped_vllm"] = True
    if skip:
        up += ["--skip-tags", ",".join(skip)]
    size["command"] = " ".join(["servekit", *up])
    # A control path folder per lab: a master left from the previous lab's node
    # of the same name and address would hang until its ServerAlive gave up.
    control_dir = Path(tempfile.mkdtemp(prefix=f"servekit-cp-n{nodes}-", dir="/tmp"))
    base_env = {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir)}
    try:
        rc, seconds, log = runner.servekit(up, f"n{nodes}-cold.log", base_env, args.timeout)
        size["cold"] = {"rc": rc, "wall_s": round(seconds, 1), "log": log.name, **read_log(log)}
        if rc != 0:
            raise BenchError(f"{nodes} nodes: the cold servekit up failed (rc {rc}); see {log}")
        for round_no in range(1, args.reruns + 1):
            for name, env in variants.items():
                rc, seconds, log = runner.servekit(up, f"n{nodes}-rerun{round_no}-{name}.log",
                                                   {**base_env, **env}, args.timeout)
                entry = {"variant": name, "round": round_no, "rc": rc, "wall_s": round(seconds, 1),
                         "log": log.name, **read_log(log)}
                size.setdefault("reruns", []).append(entry)
                changed = entry["totals"]["changed"]
                what = f"{nodes} nodes, re-run {round_no} ({name})"
                if rc != 0:
                    size.setdefault("errors", []).append(f"{what} failed (rc {rc}); see {log}")
                elif changed:
                    size.setdefault("errors", []).append(
                        f"{what} changed {changed} task(s): not idempotent; see {log}")
    finally:
        close_control_masters(control_dir)


def _variants(texts: list[str] | None) -> dict[str, dict[str, str]]:
    variants: dict[str, dict[str, str]] = {"default": {}}
    for text in texts or []:
        name, env = parse_variant(text)
        if name in variants:
            raise ValueError(f"--variant: {name!r} given twice; allowed: distinct names")
        variants[name] = env
    return variants


def _check_host(args: argparse.Namespace, lab) -> None:
    where = lab.paths.state
    while not where.exists():
        where = where.parent
    free_disk = shutil.disk_usage(where).free / (1 << 30)
    memory = meminfo_available_gib(Path("/proc/meminfo").read_text())
    problems = [p for n in args.workers
                for p in room_for(n + 1, free_disk, memory,
                                  serving=args.skip_vllm_above is None or n + 1 <= args.skip_vllm_above)]
    if problems:
        raise ValueError("the host is too small: " + "; ".join(dict.fromkeys(problems))
                         + " (--skip-host-check to try anyway)")


def _take_down(runner: Runner, lab, size: dict[str, Any]) -> bool:
    """`servekit lab down`; whether the lab is gone."""
    runner.stop_child()
    rc, seconds, log = runner.servekit(["lab", "down"], f"n{size['nodes']}-lab-down.log")
    size["lab_down_s"] = round(seconds, 1)
    if rc != 0 or lab.nodes:
        size.setdefault("errors", []).append(f"servekit lab down failed (rc {rc}); see {log}; LAB LEFT UP: "
                                             "run `servekit lab down` by hand")
        return False
    return True


def new_document(args: argparse.Namespace, variants: dict[str, dict[str, str]], started: datetime
                 ) -> dict[str, Any]:
    return {
        "format": 1, "started": started.isoformat(timespec="seconds"), "machine": machine_description(),
        "workers": args.workers, "reruns": args.reruns, "tags": args.tags, "skip_tags": args.skip_tags,
        "skip_vllm_above": args.skip_vllm_above,
        "variants": {name: env for name, env in variants.items() if env}, "sizes": [], "errors": [],
    }


def cmd_run(args: argparse.Namespace) -> int:
    from servekit import lab as lab_module
    from servekit.project import project_root

    root = project_root()
    lab = lab_module.Lab.default(root)
    if lab.nodes:
        print(f"provision_bench: a lab is up ({', '.join(n.name for n in lab.nodes)}); this benchmark brings "
              "its own labs up and down: run `servekit lab down` first (only if that lab is yours)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    variants = _variants(args.variant)
    if not args.skip_host_check:
        _check_host(args, lab)
    started = datetime.now(UTC)
    run_dir = Path(args.results_dir) / started.strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True, exist_ok=False)
    # benchmarks/provision.sh takes the lab down if this process dies without doing so
    marker = Path(args.results_dir) / ".lab-owned"
    doc = new_document(args, variants, started)
    runner = Runner(root, run_dir)
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    rc = 0
    try:
        for workers in args.workers:
            size: dict[str, Any] = {"workers": workers, "nodes": workers + 1}
            doc["sizes"].append(size)
            marker.write_text(f"{os.getpid()}\n")
            down = False
            try:
                bench_size(runner, lab, workers, args, variants=variants, size=size)
            except BenchError as exc:
                doc["errors"].append(str(exc))
                rc = EXIT_FAILED
            finally:
                down = _take_down(runner, lab, size)
                if down:
                    marker.unlink(missing_ok=True)
                doc["errors"] += size.get("errors", [])
                write_results(run_dir, doc)
            if not down:
                print(f"provision_bench: LAB LEFT UP: servekit lab down failed; see {run_dir}",
                      file=sys.stderr)
                return EXIT_FAILED
            if rc:
                break
    except KeyboardInterrupt:
        doc["errors"].append("interrupted")
        write_results(run_dir, doc)
        left = "LAB LEFT UP: run `servekit lab down`" if lab.nodes else "the lab was brought down"
        print(f"provision_bench: interrupted; {left}", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return finish(run_dir, doc, rc)


def finish(run_dir: Path, doc: Mapping[str, Any], rc: int) -> int:
    print()
    print((run_dir / "results.md").read_text())
    print(f"results: {run_dir}/ (results.json, results.md, one log per servekit command)")
    if doc["errors"]:
        print("provision_bench: errors:\n  " + "\n  ".join(doc["errors"]), file=sys.stderr)
        return rc or EXIT_FAILED
    return rc


def cmd_recap(args: argparse.Namespace) -> int:
    print(json.dumps(read_log(Path(args.log)), indent=2))
    return 0


def _workers(text: str) -> list[int]:
    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--workers: ")) from exc


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m servekit.bench.provision",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="bring labs of each size up, time servekit up and its re-runs, "
                                     "take them down")
    run.add_argument("--workers", type=_workers, default=[1, 3, 7],
                     help="worker counts, one lab each (default 1,3,7: 2, 4 and 8 nodes)")
    run.add_argument("--reruns", type=_count, default=3, help="idempotent re-runs per variant (default 3)")
    run.add_argument("--variant", action="append", metavar="NAME:ANSIBLE_X=V[,...]",
                     help="re-run also with these ANSIBLE_* settings (repeatable); 'default' always runs")
    run.add_argument("--tags", help="servekit up --tags (default: all stages site.yml runs)")
    run.add_argument("--skip-tags", help="servekit up --skip-tags")
    run.add_argument("--skip-vllm-above", type=int, metavar="NODES",
                     help="labs of more nodes skip the vllm stage (default: every size serves; under the Ray "
                          "executor vLLM runs on the head and Ray places the second rank on one worker)")
    run.add_argument("--timeout", type=float, default=7200.0, help="seconds per servekit up (default 7200)")
    run.add_argument("--results-dir", default=".cache/bench/provision")
    run.add_argument("--skip-host-check", action="store_true", help="do not check disk and memory first")
    run.set_defaults(func=cmd_run)
    recap = sub.add_parser("recap", help="the PLAY RECAP counters and task timings of a playbook log "
                                         "(JSON)")
    recap.add_argument("log")
    recap.set_defaults(func=cmd_recap)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"provision_bench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
