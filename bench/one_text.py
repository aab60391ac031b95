"""One short text per call, the call made most: calls/s and per-call latency (p50, p99).

lazyembed: `Embedder.embed(str)` (cache off, so every call runs the model; never idle, so
``prepack_weights = "auto"`` pre-packs at load; ``lazyembed-default`` keeps the default
idle timeout, so its weights are pre-packed once it is busy (the 16th run, in the
warm-up); ``lazyembed-unpacked`` sets ``prepack_weights = false``);
fastembed: ``list(TextEmbedding.embed([text]))``; sentence-transformers:
``SentenceTransformer.encode([text])`` (both through bench.peers, same threads). Each
contender is one long-lived subprocess; they are driven in turn for a second each, many
rounds, so drift on a shared machine hits all alike; the ratio to fastembed is per round.
The contenders not being timed are SIGSTOPped, as in the throughput section (bench/run.py),
so an idle peer's spinning thread pool cannot take CPU from the one being timed.
The peers need .venv-bench (see bench/run.sh); from the repository root:

    .venv-bench/bin/python -m bench.one_text [--repeats 9] [--seconds 1] [--threads 2]
    .venv/bin/python -m bench.one_text --contenders lazyembed      # lazyembed alone
    ... --contenders lazyembed@/tmp/old/src lazyembed fastembed    # an older checkout too
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import corpus

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONTENDERS = (
    "lazyembed",
    "lazyembed-default",
    "lazyembed-unpacked",
    "fastembed",
    "sentence-transformers",
)
WARMUP_CALLS = 30


def _load(name: str, threads: int) -> Callable[[str], object]:
    if name.startswith("lazyembed"):
        from lazyembed import Embedder

        # Only the unpacked contender names the setting: an older checkout lacks it.
        settings: dict[str, Any] = {
            "lazyembed": {"idle_timeout": "never"},
            "lazyembed-default": {},
            "lazyembed-unpacked": {"idle_timeout": "never", "prepack_weights": False},
        }[name]
        embedder = Embedder(cache_memory_mb=0, intra_op_threads=threads, **settings)
        return embedder.embed
    from bench import peers

    encode = peers.load_peer(name, threads)
    return lambda text: encode([text], 1)


def serve(name: str, threads: int) -> None:
    """Worker: load, warm up, then answer each stdin line "SECONDS" with latencies (JSON)."""
    from bench.lazyembed_bench import _die_with_parent

    _die_with_parent()  # stopped between turns: the runner's death must still end it
    texts = corpus.sentences(500)
    call = _load(name, threads)
    for text in texts[:WARMUP_CALLS]:
        call(text)
    i = 0
    print(json.dumps({"ready": name}), flush=True)
    for line in sys.stdin:
        latencies: list[float] = []
        deadline = time.perf_counter() + float(line)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call(texts[i % len(texts)])
            latencies.append(time.perf_counter() - started)
            i += 1
        print(json.dumps(latencies), flush=True)


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "calls_per_s": len(ordered) / sum(ordered),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "p1_ms": 1000 * ordered[int(0.01 * len(ordered))],
    }


def _start(contender: str, threads: int, base_env: dict[str, str]) -> subprocess.Popen[str]:
    name, _, src = contender.partition("@")
    env = dict(base_env)
    env["PYTHONPATH"] = os.pathsep.join((src or str(ROOT / "src"), str(ROOT)))
    argv = [sys.executable, "-m", "bench.one_text", "--serve", name, "--threads", str(threads)]
    worker = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    ready = worker.stdout.readline()
    if not ready:  # e.g. a peer not installed in this venv
        raise RuntimeError(f"{contender}: worker exited ({worker.wait()}) before it was ready")
    _signal(worker, signal.SIGSTOP)  # paused until its turn
    return worker


def _signal(worker: subprocess.Popen[str], sig: signal.Signals) -> None:
    if worker.poll() is None:
        os.kill(worker.pid, sig)


def _ask(worker: subprocess.Popen[str], seconds: float) -> list[float]:
    """One turn: resume the worker, time its calls for ``seconds``, pause it again."""
    assert worker.stdin is not None and worker.stdout is not None
    _signal(worker, signal.SIGCONT)
    try:
        worker.stdin.write(f"{seconds}\n")
        worker.stdin.flush()
        latencies: list[float] = json.loads(worker.stdout.readline())
    finally:
        _signal(worker, signal.SIGSTOP)
    return latencies


def _spread(values: list[float], digits: int) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def compare(
    contenders: list[str],
    repeats: int,
    threads: int,
    seconds: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Long-lived workers, one per contender, driven in turn for `seconds` each round."""
    base_env = dict(os.environ if env is None else env)
    base_env.setdefault("TOKENIZERS_PARALLELISM", "false")  # as bench.peers sets it
    workers: dict[str, subprocess.Popen[str]] = {}
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in contenders}
    try:
        for contender in contenders:
            workers[contender] = _start(contender, threads, base_env)
        for _ in range(repeats):
            for contender, worker in workers.items():
                runs[contender].append(_summary(_ask(worker, seconds)))
    finally:
        for worker in workers.values():
            _signal(worker, signal.SIGCONT)
            assert worker.stdin is not None
            worker.stdin.close()
            worker.wait(timeout=60)
    ratios: dict[str, list[float]] = {}
    if "fastembed" in runs:
        for contender, rows in runs.items():
            ratios[contender] = [
                row["calls_per_s"] / peer["calls_per_s"]
                for row, peer in zip(rows, runs["fastembed"], strict=True)
            ]
    return {
        "threads": threads,
        "repeats": repeats,
        "seconds": seconds,
        "paused_between_turns": True,  # SIGSTOP while the others are timed
        "runs": runs,
        "ratio_to_fastembed": ratios,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| contender | calls/s | p1 ms | p50 ms | p99 ms | x fastembed |",
        "|---|---|---|---|---|---|",
    ]
    for contender, rows in result["runs"].items():
        ratio = result["ratio_to_fastembed"].get(contender)
        lines.append(
            f"| {contender} | {_spread([r['calls_per_s'] for r in rows], 0)} | "
            f"{_spread([r['p1_ms'] for r in rows], 2)} | "
            f"{_spread([r['p50_ms'] for r in rows], 2)} | "
            f"{_spread([r['p99_ms'] for r in rows], 2)} | "
            f"{_spread(ratio, 2) if ratio else '—'} |"
        )
    lines.append(
        f"\nOne short corpus sentence per call, {result['threads']} threads, median (min-max) "
        f"of {result['repeats']} rounds of {result['seconds']} s per contender, contenders "
        "in turn (one long-lived process each, SIGSTOPped while the others are timed); the "
        "ratio is taken per round. p1 (the fastest 1 %) approximates an otherwise idle machine."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="rounds")
    parser.add_argument("--seconds", type=float, default=1.0, help="per contender per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contenders", nargs="*", default=list(DEFAULT_CONTENDERS))
    parser.add_argument("--serve", help="(internal) be the worker of one contender")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.threads)
        return
    result = compare(args.contenders, args.repeats, args.threads, args.seconds)
    print(json.dumps(result) if args.json else markdown(result))


if __name__ == "__main__":
    main()
