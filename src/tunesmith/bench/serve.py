"""Throughput and latency of ``tunesmith serve`` under concurrent chat requests.

Serves two runs on their shared base (the embedded model by default) with the real server on
127.0.0.1 (uvicorn in a thread, one loaded base) and sends a fixed set of clinic questions as
streaming chat requests over HTTP, ``concurrency`` at a time, greedy, ``max_tokens`` each.
Reported per level: requests/s, generated tokens/s, time to first token (first content
chunk) p50/p95, end-to-end p50/p95 and errors. Then the same requests at the highest
concurrency go to the first adapter alone and to an alternating mix of both adapters: peft's
mixed-adapter batches should cost little over a single-adapter batch.

Make the two runs first, e.g.
``tunesmith train examples/smollm2_lora.yaml --max-steps 30 --seed 1 --output /tmp/run1``
(and ``--seed 2 --output /tmp/run2``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

HELP = "OpenAI-server throughput and latency at concurrency 1/4/16, one adapter vs a mix"


@dataclass
class LevelResult:
    """One batch of requests at one concurrency."""

    label: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p95_s: float
    e2e_p50_s: float
    e2e_p95_s: float


@dataclass
class ServeBench:
    runs: list[str]
    threads: int
    max_tokens: int
    levels: list[LevelResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs=2, metavar="RUN_DIR", help="two runs (adapters) on one base")
    p.add_argument("--concurrency", default="1,4,16", help="levels (default 1,4,16)")
    p.add_argument("--requests", type=int, default=32, help="requests per level (default 32)")
    p.add_argument("--max-tokens", type=int, default=64, help="answer limit (default 64)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", help="also write the JSON here")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def _one(
    http, model: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, float, int]:
    """One streamed chat request: (time to first token, end to end, completion tokens)."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            delta = event["choices"][0]["delta"] if event.get("choices") else {}
            if first is None and delta.get("content"):
                first = time.perf_counter() - start
    end = time.perf_counter() - start
    return (first if first is not None else end), end, tokens


async def run_level(
    url: str, jobs: list[tuple[str, Any]], concurrency: int, max_tokens: int, label: str
) -> LevelResult:
    """Send ``jobs`` ((model, messages) pairs), ``concurrency`` in flight at a time."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    results: list[tuple[float, float, int]] = []
    errors = 0

    async def worker(http, model, messages):
        nonlocal errors
        async with gate:
            try:
                results.append(await _one(http, model, messages, max_tokens))
            except Exception:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http, m, q) for m, q in jobs))
        wall = time.perf_counter() - start
    ttft = [r[0] for r in results] or [0.0]
    e2e = [r[1] for r in results] or [0.0]
    return LevelResult(
        label=label,
        concurrency=concurrency,
        requests=len(jobs),
        errors=errors,
        wall_s=wall,
        requests_per_s=len(results) / wall,
        tokens_per_s=sum(r[2] for r in results) / wall,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p95_s=percentile(ttft, 95),
        e2e_p50_s=percentile(e2e, 50),
        e2e_p95_s=percentile(e2e, 95),
    )


def conversations(n: int) -> list[list[dict[str, str]]]:
    """``n`` fixed clinic questions (system + user, as in training), the same every run."""
    from tunesmith.demo.dataset import demo_splits

    _, held_out = demo_splits(seed=0, n_train=8, n_eval=n)
    return [[{"role": t.role, "content": t.content} for t in c.prompt_turns] for c in held_out][:n]


def measure(args: argparse.Namespace) -> ServeBench:
    """Serve the two runs and run every level; the first adapter alone, then the mix."""
    from pathlib import Path

    from tunesmith.serve import serve
    from tunesmith.serve.thread import running

    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    convs = conversations(args.requests)
    names = [Path(r).resolve().name for r in args.runs]
    app = serve(
        *args.runs, max_batch=max(levels), max_queue=max(args.requests, 64),
        watch_cores=not args.threads,
    )  # fmt: skip
    report = ServeBench([str(r) for r in args.runs], _threads(), args.max_tokens)
    single = [(names[0], c) for c in convs]
    mixed = [(names[i % 2], c) for i, c in enumerate(convs)]
    with running(app) as url:
        asyncio.run(run_level(url, single[:2], 1, args.max_tokens, "warm-up"))
        for c in levels:
            report.levels.append(
                asyncio.run(run_level(url, single, c, args.max_tokens, "one adapter"))
            )
        report.levels.append(
            asyncio.run(run_level(url, mixed, max(levels), args.max_tokens, "two adapters, mixed"))
        )
    return report


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def format_table(report: ServeBench) -> str:
    head = "| requests to | concurrency | req/s | gen tok/s | TTFT p50 / p95 (s) | end-to-end p50 / p95 (s) | errors |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report.levels:
        lines.append(
            f"| {r.label} | {r.concurrency} | {r.requests_per_s:.2f} | {r.tokens_per_s:.1f} | "
            f"{r.ttft_p50_s:.2f} / {r.ttft_p95_s:.2f} | {r.e2e_p50_s:.2f} / {r.e2e_p95_s:.2f} | "
            f"{r.errors} |"
        )
    from tunesmith.bench.machine import describe, one_line

    return "\n".join([*lines, "", one_line(describe())])


def run(args: argparse.Namespace) -> int:
    """``tunesmith bench serve`` (commands/bench.py has already quieted the libraries)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report = measure(args)
    data = report.to_dict()
    if args.out:
        from tunesmith.atomic import write_text

        write_text(args.out, json.dumps(data, indent=2) + "\n")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(
            f"runs: {', '.join(report.runs)}; torch threads {report.threads}; "
            f"max_tokens {report.max_tokens}, greedy, streamed"
        )
        print(format_table(report))
    return 1 if any(r.errors for r in report.levels) else 0
