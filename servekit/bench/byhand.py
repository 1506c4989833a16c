#!/usr/bin/env python3
"""Start the vLLM a node's servekit unit runs, by hand: the overhead benchmark's baseline.

    python3 byhand.py start --unit /etc/systemd/system/servekit-vllm.service \
        --log /var/log/servekit-byhand.log --pidfile /run/servekit-byhand.pid \
        [--listen 0.0.0.0:8000] [--vllm-defaults]
    python3 byhand.py stop --pidfile /run/servekit-byhand.pid

benchmarks/overhead.yml copies this file to the nodes (stdlib only, the
nodes' /usr/bin/python3) after it stopped the units. ``start`` reads the
unit's ExecStart=, Environment= and EnvironmentFile= lines and starts the
same argv with the same environment as a plain background process (its own
session, no unit, no restart policy, no limits), as an operator would from
a root shell. ``--listen`` moves the API from the proxy's backend address to
the public one (the proxy is stopped meanwhile); ``--vllm-defaults`` drops
the CPU tuning the inventory set (VLLM_CPU_*, OMP_*, KMP_*), leaving vLLM's
own defaults (vllm/envs.py: VLLM_CPU_KVCACHE_SPACE unset, VLLM_CPU_OMP_THREADS_BIND
auto), except the variables named by ``--keep``. ``stop`` ends the process
group it started (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

# Settings the inventory may give vLLM's CPU backend; --vllm-defaults drops them.
TUNING_PREFIXES = ("VLLM_CPU_", "OMP_", "KMP_")
# What a root login shell would have; the unit's own environment comes on top.
BASE_ENV_KEYS = ("PATH", "LANG", "HOME", "TERM")


def _unescape(word: str) -> str:
    # systemd.service(5): "$$" is a literal "$", "%%" a literal "%"
    # (module_utils/vllm_registry.py systemd_quote writes them so)
    return word.replace("$$", "$").replace("%%", "%")


def parse_unit(text: str) -> dict:
    """ExecStart argv, Environment= assignments and EnvironmentFile= paths of a servekit vLLM unit."""
    exec_start: list[str] | None = None
    environment: dict[str, str] = {}
    files: list[tuple[str, bool]] = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Service" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key == "ExecStart":
            words = [_unescape(w) for w in shlex.split(value)]
            # systemd's prefixes (-, @, :, +, !) on the executable
            while words and words[0][:1] in "-@:+!" and len(words[0]) > 1:
                words[0] = words[0][1:]
            exec_start = words
        elif key == "Environment":
            for assignment in shlex.split(value):
                name, _, val = _unescape(assignment).partition("=")
                environment[name] = val
        elif key == "EnvironmentFile":
            files.append((value[1:], True) if value.startswith("-") else (value, False))
    if not exec_start:
        raise ValueError("no ExecStart= in the unit's [Service] section")
    return {"exec_start": exec_start, "environment": environment, "environment_files": files}


def parse_environment_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (comments, optional quotes)."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def listen_on(argv: list[str], address: str) -> list[str]:
    """argv with --host/--port set to HOST:PORT (the head's API, in place of the proxy's backend)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen: {address!r}; allowed form: HOST:PORT (0.0.0.0:8000)")
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word in ("--host", "--port") and i + 1 < len(argv):
            skip = True
            continue
        if word.startswith(("--host=", "--port=")):
            continue
        out.append(word)
    if "--headless" in out:
        raise ValueError("--listen: this node runs a headless rank (no API); give --listen on the head only")
    return [*out, "--host", host, "--port", port]


def drop_tuning(env: dict[str, str], keep: tuple[str, ...] = ()) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in keep or not k.startswith(TUNING_PREFIXES)}


def launch_environment(unit: dict, base: dict[str, str], vllm_defaults: bool = False,
                       keep: tuple[str, ...] = ()) -> dict:
    """A root shell's basics, then each EnvironmentFile= in order, then Environment= (systemd's order)."""
    env = {k: base[k] for k in BASE_ENV_KEYS if k in base}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    for path, optional in unit["environment_files"]:
        try:
            env.update(parse_environment_file(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            if not optional:
                raise
    env.update(unit["environment"])
    return drop_tuning(env, keep) if vllm_defaults else env


def start(args: argparse.Namespace) -> int:
    pidfile = Path(args.pidfile)
    if pidfile.exists():
        print(f"{pidfile} exists: a by-hand vLLM may still run; stop it first", file=sys.stderr)
        return 1
    unit = parse_unit(Path(args.unit).read_text())
    argv = listen_on(unit["exec_start"], args.listen) if args.listen else unit["exec_start"]
    env = launch_environment(unit, dict(os.environ), vllm_defaults=args.vllm_defaults,
                             keep=tuple(args.keep or ()))
    with open(args.log, "w", encoding="utf-8") as log:
        log.write("# by hand: " + shlex.join(argv) + "\n")
        log.write("# environment keys: " + " ".join(sorted(env)) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd="/", start_new_session=True)
    pidfile.write_text(f"{proc.pid}\n")
    time.sleep(3)
    if proc.poll() is not None:
        pidfile.unlink()
        print(f"vLLM exited at once ({proc.returncode}); see {args.log}", file=sys.stderr)
        return 1
    print(f"started {proc.pid}: {shlex.join(argv)}")
    return 0


def stop(args: argparse.Namespace) -> int:
    pidfile = Path(args.pidfile)
    if not pidfile.exists():
        print("nothing to stop")
        return 0
    pid = int(pidfile.read_text().split()[0])
    for sig, wait in ((signal.SIGTERM, args.timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(1)
        else:
            continue
        break
    pidfile.unlink()
    print(f"stopped {pid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start")
    p.add_argument("--unit", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--pidfile", required=True)
    p.add_argument("--listen", help="HOST:PORT for the API (head only)")
    p.add_argument("--vllm-defaults", action="store_true", help="drop the inventory's CPU tuning")
    p.add_argument("--keep", action="append", metavar="NAME",
                   help="with --vllm-defaults: keep this variable (repeatable), e.g. VLLM_CPU_KVCACHE_SPACE "
                        "where vLLM's default KV cache size cannot fit")
    p.set_defaults(func=start)
    p = sub.add_parser("stop")
    p.add_argument("--pidfile", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=stop)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"byhand: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
