"""Serving benchmark: streamed chat completions at a few concurrency levels.

    python -m servekit.bench --base-url http://HEAD:8000/v1 --model NAME \
        [--requests 16] [--concurrency 1,4] [--max-tokens 32] [--output FILE]

For every concurrency level it sends ``--requests`` streamed chat
completions with the official ``openai`` client and reports requests/s,
output tokens/s, time to first token and request latency (p50/p95). The
JSON result goes to ``--output`` (and stdout). Figures are what this
client measured, end to end, including the network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

PROMPTS = (
    "Explain tensor parallelism in one sentence.",
    "List three uses of a serving cluster.",
    "Say hello to the cluster.",
    "What does RDMA stand for?",
)


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - started
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"ttft_s": first, "latency_s": time.perf_counter() - started, "output_tokens": tokens}


def run_level(client, model: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    results, errors = [], []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(one_request, client, model, PROMPTS[i % len(PROMPTS)], max_tokens)
                   for i in range(requests)]
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:  # every failure is counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
    wall = time.perf_counter() - started
    ttft = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    latency = [r["latency_s"] for r in results]
    out_tokens = sum(r["output_tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(results),
        "errors": errors[:5],
        "error_count": len(errors),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(results) / wall, 3) if wall else None,
        "output_tokens_per_s": round(out_tokens / wall, 2) if wall else None,
        "ttft_p50_s": _round(statistics.median(ttft) if ttft else None),
        "ttft_p95_s": _round(_percentile(ttft, 0.95)),
        "latency_p50_s": _round(statistics.median(latency) if latency else None),
        "latency_p95_s": _round(_percentile(latency, 0.95)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servekit.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="the API, e.g. http://10.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels (default 1,4)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--output", help="write the JSON result here too")
    parser.add_argument("--api-key-stdin", action="store_true",
                        help="read the API key from stdin (keeps it off command lines and environments)")
    args = parser.parse_args(argv)
    try:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--concurrency: {args.concurrency!r} is not a list of integers, e.g. 1,4")
    if not levels or min(levels) < 1 or args.requests < 1:
        parser.error("--concurrency and --requests must be positive")

    import openai

    api_key = sys.stdin.readline().strip() if args.api_key_stdin else os.environ.get("OPENAI_API_KEY")
    client = openai.OpenAI(base_url=args.base_url, api_key=api_key or "none", timeout=args.timeout,
                           max_retries=0)
    one_request(client, args.model, PROMPTS[0], 4)  # warm-up, not counted
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_url": args.base_url,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "levels": [run_level(client, args.model, args.requests, c, args.max_tokens) for c in levels],
    }
    text = json.dumps(report, indent=2)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    print(text)
    return 1 if any(level["error_count"] for level in report["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
