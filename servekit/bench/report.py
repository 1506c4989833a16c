"""Serving benchmark results: read `vllm bench serve` JSON, compare runs, print a table, draw a plot.

Pure functions over the result files that `vllm bench serve --save-result`
writes (one per concurrency level); servekit/bench/serving.py runs the benchmark and
calls these. The keys are those of vllm/benchmarks/serve.py (vLLM 0.32):
``benchmark()`` returns ``completed``, ``failed``, ``duration``,
``request_throughput``, ``output_throughput``, ``total_token_throughput``
and, for each metric in ``--percentile-metrics`` and each value in
``--metric-percentiles``, ``p<P>_<metric>_ms`` (``process_one_metric``);
``main_async`` adds ``max_concurrency``, ``request_rate``, ``model_id``,
``num_prompts`` and ``date``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
PLOT_FILE = "serving.png"
SUMMARY_FORMAT = 1

# Passed to `vllm bench serve` so that every result carries these keys.
PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (50, 99)

# (key, column heading, better: "higher" or "lower")
THROUGHPUT_METRICS = (
    ("request_throughput", "req/s", "higher"),
    ("output_throughput", "out tok/s", "higher"),
)
LATENCY_METRICS = tuple(
    (f"p{p}_{metric}_ms", f"{metric.upper()} p{p} ms", "lower")
    for metric in PERCENTILE_METRICS for p in PERCENTILES
)
METRICS = THROUGHPUT_METRICS + LATENCY_METRICS
METRIC_KEYS = tuple(key for key, _, _ in METRICS)
BETTER = {key: better for key, _, better in METRICS}
HEADINGS = {key: heading for key, heading, _ in METRICS}
# Gated by default: throughput and the medians. A p99 of a few dozen requests
# on a shared CPU moves by more than any sensible threshold from run to run;
# add the p99 keys to the gate where the run is long enough to hold them.
DEFAULT_GATE_METRICS = ("request_throughput", "output_throughput", "p50_ttft_ms", "p50_tpot_ms",
                        "p50_itl_ms", "p50_e2el_ms")
# What makes two runs comparable: the same workload against the same model.
WORKLOAD_KEYS = ("model", "dataset", "input_len", "output_len", "num_prompts", "seed", "request_rate")


class ResultError(ValueError):
    """A result file that is not what `vllm bench serve --save-result` writes."""


def level_from_result(result: Mapping[str, Any], source: str = "result") -> dict[str, Any]:
    """One table row from one `vllm bench serve` result (a dict loaded from its JSON)."""
    if "max_concurrency" not in result or "completed" not in result:
        raise ResultError(f"{source}: not a `vllm bench serve --save-result` file "
                          "(no max_concurrency/completed keys)")
    missing = [key for key in METRIC_KEYS if key not in result]
    if missing:
        raise ResultError(
            f"{source}: no {', '.join(missing)}; run `vllm bench serve` with --percentile-metrics "
            f"{','.join(PERCENTILE_METRICS)} --metric-percentiles {','.join(map(str, PERCENTILES))}")
    level: dict[str, Any] = {
        "concurrency": result["max_concurrency"],
        "completed": int(result["completed"]),
        "failed": int(result.get("failed", 0) or 0),
        "duration_s": _number(result.get("duration")),
        "total_output_tokens": result.get("total_output_tokens"),
        "total_token_throughput": _number(result.get("total_token_throughput")),
    }
    # vLLM reports zeros for a level where every request failed: no figures, not fast ones.
    for key in METRIC_KEYS:
        level[key] = _number(result[key]) if level["completed"] else None
    return level


def spread_of(values: Iterable[float | None]) -> dict[str, Any] | None:
    """Median, range and relative spread ((max - min) / median) of repeated figures; None if none.

    The median, not the mean: on a shared machine one run slowed by another
    job is an outlier, and the median of three or more runs ignores it. The
    spread says how far to trust a difference between two medians.
    """
    numbers = sorted(float(v) for v in values if v is not None)
    if not numbers:
        return None
    median = statistics.median(numbers)
    return {"n": len(numbers), "median": median, "min": numbers[0], "max": numbers[-1],
            "spread": (numbers[-1] - numbers[0]) / median if median else None}


def merge_rounds(rounds: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One level from the same concurrency level run several times (``--repeat``).

    Each metric is the median over the rounds that completed requests, so the
    table, the comparison and the ratios read it like a single run's; the
    requests add up; ``rounds`` and ``spread`` (per metric: n, median, min,
    max, spread) say how much the rounds disagreed.
    """
    if not rounds:
        raise ValueError("merge_rounds: no rounds")
    levels = {level["concurrency"] for level in rounds}
    if len(levels) != 1:
        raise ValueError(f"merge_rounds: rounds of different concurrency levels {sorted(levels)}")
    merged: dict[str, Any] = {
        "concurrency": rounds[0]["concurrency"],
        "completed": sum(int(level["completed"]) for level in rounds),
        "failed": sum(int(level["failed"]) for level in rounds),
        "rounds": len(rounds),
        "result_files": [level.get("result_file") for level in rounds],
        "spread": {},
    }
    for key in ("duration_s", "total_token_throughput", *METRIC_KEYS):
        stats = spread_of(level.get(key) for level in rounds)
        merged[key] = stats["median"] if stats else None
        if stats and key in METRIC_KEYS:
            merged["spread"][key] = stats
    return merged


def load_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def workload_of(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {key: summary.get("workload", {}).get(key) for key in WORKLOAD_KEYS}


def comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return workload_of(a) == workload_of(b) and a.get("label") == b.get("label")


def previous_summary(results_dir: Path, current: Mapping[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The newest run under results_dir before ``current`` with the same workload and label.

    Run folders are named by their UTC start time (``current["run"]``), so
    their names sort in time order; unreadable or foreign summaries are
    passed over.
    """
    run = str(current.get("run", ""))
    for path in sorted(results_dir.glob(f"*/{SUMMARY_FILE}"), key=lambda p: p.parent.name, reverse=True):
        if run and path.parent.name >= run:
            continue
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if (isinstance(summary, dict) and summary.get("format") == SUMMARY_FORMAT
                and comparable(summary, current)):
            return path.parent, summary
    return None


def compare(current: Mapping[str, Any], baseline: Mapping[str, Any], threshold: float,
            gate_metrics: Iterable[str] = DEFAULT_GATE_METRICS) -> list[dict[str, Any]]:
    """Per concurrency level and metric: the baseline, the new value, the change, a regression flag.

    ``change`` is (new - old) / old. A higher-is-better metric regresses
    when it falls by more than ``threshold`` (0.10: 10 %), a lower-is-better
    one when it rises by more; only ``gate_metrics`` can regress. Levels or
    metrics missing on one side, and zero baselines, are not compared.
    """
    if not 0 < threshold < 10:
        raise ValueError(f"threshold: {threshold!r} is out of range; allowed: more than 0, less than 10 "
                         "(a share: 0.10 is 10 %)")
    gate = set(gate_metrics)
    unknown = gate - set(METRIC_KEYS)
    if unknown:
        raise ValueError(f"gate metrics: {', '.join(sorted(unknown))} unknown; "
                         f"allowed: {', '.join(METRIC_KEYS)}")
    old_levels = {level["concurrency"]: level for level in baseline.get("levels", [])}
    rows = []
    for level in current.get("levels", []):
        old = old_levels.get(level["concurrency"])
        if old is None:
            continue
        for key in METRIC_KEYS:
            new_value, old_value = level.get(key), old.get(key)
            if new_value is None or not old_value:
                continue
            change = (new_value - old_value) / old_value
            worse = -change if BETTER[key] == "higher" else change
            rows.append({"concurrency": level["concurrency"], "metric": key, "old": old_value,
                         "new": new_value, "change": change,
                         "regression": key in gate and worse > threshold})
    return rows


def ratios(numerator: Mapping[str, Any], denominator: Mapping[str, Any],
           keys: Iterable[str] = ("request_throughput", "output_throughput")) -> list[dict[str, Any]]:
    """numerator / denominator per concurrency level for each key (throughput ratios between runs)."""
    by_level = {level["concurrency"]: level for level in denominator.get("levels", [])}
    out = []
    for level in numerator.get("levels", []):
        other = by_level.get(level["concurrency"])
        if other is None:
            continue
        row: dict[str, Any] = {"concurrency": level["concurrency"]}
        for key in keys:
            row[key] = (level[key] / other[key]) if level.get(key) is not None and other.get(key) else None
        out.append(row)
    return out


def ratios_over_rounds(pairs: list[tuple[Mapping[str, Any], Mapping[str, Any]]],
                       keys: Iterable[str] = ("request_throughput", "output_throughput"),
                       ) -> list[dict[str, Any]]:
    """numerator / denominator per round and level, then per level and key the median ratio and spread.

    Each pair is one round of two runs made back to back (the overhead
    script's interleaved rounds): the ratio of each round is taken first, so
    a slow spell of the machine that hits both runs of a round cancels out.
    """
    keys = tuple(keys)
    per_level: dict[Any, dict[str, list[float | None]]] = {}
    for numerator, denominator in pairs:
        for row in ratios(numerator, denominator, keys):
            bucket = per_level.setdefault(row["concurrency"], {key: [] for key in keys})
            for key in keys:
                bucket[key].append(row[key])
    return [{"concurrency": level, **{key: spread_of(values[key]) for key in keys}}
            for level, values in sorted(per_level.items())]


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if key.endswith("_ms"):
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(summary: Mapping[str, Any], comparison: list[dict[str, Any]] | None = None) -> str:
    """One line per concurrency level; with a comparison, each value carries its change (+4.2%)."""
    changes = {(row["concurrency"], row["metric"]): row for row in comparison or []}
    repeated = any(level.get("rounds", 1) > 1 for level in summary.get("levels", []))
    header = ["conc", "ok", "fail"] + [HEADINGS[key] for key in METRIC_KEYS]
    if repeated:
        # medians of the rounds; the spread of output tok/s ((max - min) / median) beside them
        header[1:1] = ["runs", "tok/s spread"]
    lines = [header]
    for level in summary.get("levels", []):
        cells = [str(level["concurrency"]), str(level["completed"]), str(level["failed"])]
        if repeated:
            spread = (level.get("spread") or {}).get("output_throughput") or {}
            cells[1:1] = [str(level.get("rounds", 1)),
                          "-" if spread.get("spread") is None else f"{spread['spread']:.1%}"]
        for key in METRIC_KEYS:
            cell = _fmt(level.get(key), key)
            row = changes.get((level["concurrency"], key))
            if row is not None:
                cell += f" ({row['change']:+.1%}{' !' if row['regression'] else ''})"
            cells.append(cell)
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
                     for line in lines)


def regressions_text(comparison: list[dict[str, Any]], threshold: float) -> list[str]:
    return [f"concurrency {row['concurrency']}: {HEADINGS[row['metric']]} "
            f"{_fmt(row['old'], row['metric'])} -> {_fmt(row['new'], row['metric'])} "
            f"({row['change']:+.1%}, threshold {threshold:.0%}, "
            f"{BETTER[row['metric']]} is better)"
            for row in comparison if row["regression"]]


def plot(summary: Mapping[str, Any], path: Path, baseline: Mapping[str, Any] | None = None) -> Path:
    """Throughput and latency percentiles against concurrency (PNG); a baseline run is drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a control node
    from matplotlib import pyplot as plt

    panels = (
        ("Output throughput (requests/s on the right)", (("output_throughput", "output tok/s"),), "tokens/s"),
        ("Time to first token", (("p50_ttft_ms", "p50"), ("p99_ttft_ms", "p99")), "ms"),
        ("Time per output token, inter-token latency",
         (("p50_tpot_ms", "TPOT p50"), ("p99_tpot_ms", "TPOT p99"), ("p50_itl_ms", "ITL p50"),
          ("p99_itl_ms", "ITL p99")), "ms"),
        ("End-to-end latency", (("p50_e2el_ms", "p50"), ("p99_e2el_ms", "p99")), "ms"),
    )
    runs = [(summary, "-", "o", ""), (baseline, "--", "x", f" ({(baseline or {}).get('run', 'previous')})")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (title, series, unit) in zip(axes.flat, panels, strict=True):
        twin = ax.twinx() if series[0][0] == "output_throughput" else None
        for run, line, marker, suffix in runs:
            if not run:
                continue
            levels = sorted(run.get("levels", []), key=lambda level: level["concurrency"])
            x = [level["concurrency"] for level in levels]
            for color, (key, name) in enumerate(series):
                ax.plot(x, [level.get(key) for level in levels], linestyle=line, marker=marker,
                        color=f"C{color}", label=name + suffix)
            if twin is not None:
                twin.plot(x, [level.get("request_throughput") for level in levels], linestyle=line,
                          marker=marker, color="C3", label="req/s" + suffix)
        levels_x = sorted({level["concurrency"] for level in summary.get("levels", [])})
        if levels_x:
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels_x, [str(x) for x in levels_x])
        ax.set_title(title)
        ax.set_xlabel("concurrency (max in flight)")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if twin is not None:
            twin.set_ylabel("requests/s")
            twin.set_ylim(bottom=0)
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, fontsize="small")
    workload = summary.get("workload", {})
    fig.suptitle(f"{workload.get('model')} via {summary.get('base_url')}: {summary.get('run')} "
                 f"({workload.get('num_prompts')} prompts, {workload.get('input_len')} in / "
                 f"{workload.get('output_len')} out tokens)", fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
