"""Long texts: peak memory above the loaded model, what stays after, and docs/s.

Each scenario runs in a fresh subprocess (so nothing a previous one allocated counts):
load the runtime, embed once to warm up, reset the kernel's peak-RSS mark
(/proc/self/clear_refs), then embed the texts and read the peak (VmHWM) and RSS after.
Scenarios: ``long48`` (48 corpus documents of > 256 word pieces), ``huge100``
(100 texts of 100k characters), ``count100`` (`Embedder.count_tokens` of the same 100,
truncate=False). Run from the repository root, in .venv or .venv-bench:

    .venv/bin/python -m bench.long_texts [--repeats 3] [--src /tmp/old/src --src .]

``--src`` measures another checkout's lazyembed (e.g. an older commit's worktree);
several are interleaved repeat by repeat, so drift on a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import corpus

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("long48", "huge100", "count100")
HUGE_CHARS = 100_000
MB = float(1 << 20)


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def huge_texts(n: int = 100, chars: int = HUGE_CHARS) -> list[str]:
    """n different texts of `chars` characters of manual prose (rotated starts)."""
    prose = "\n\n".join(corpus.topic_texts().values())
    out = []
    for i in range(n):
        start = (i * 7919) % max(1, len(prose) - chars)
        text = prose[start : start + chars]
        out.append((text * (chars // max(1, len(text)) + 1))[:chars])
    return out


def measure(scenario: str, repeats: int, threads: int) -> dict[str, Any]:
    from lazyembed import Embedder, memory
    from lazyembed.runtime import load_runtime

    texts = corpus.long_documents(48) if scenario == "long48" else huge_texts()
    embedder = Embedder(cache_memory_mb=0, intra_op_threads=threads)
    spec = embedder.prepare().spec
    if scenario == "count100":
        embedder.count_tokens(["warm-up"], truncate=False)

        def call() -> object:
            return embedder.count_tokens(texts, truncate=False)

    else:
        runtime = load_runtime(spec)

        def call() -> object:
            return runtime.encode(texts)

    call()  # the first call's one-off allocations (arena, pools) are not the point
    memory.release_to_os()
    loaded = _status_kb("VmRSS")
    peaks, afters, seconds = [], [], []
    for _ in range(repeats):
        _reset_peak()
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
        peaks.append(_status_kb("VmHWM") - loaded)
        afters.append(_status_kb("VmRSS") - loaded)
    return {
        "scenario": scenario,
        "texts": len(texts),
        "loaded_mb": loaded / 1024,
        "peak_above_loaded_mb": [kb / 1024 for kb in peaks],
        "after_call_above_loaded_mb": [kb / 1024 for kb in afters],
        "docs_per_s": [len(texts) / s for s in seconds],
    }


def _summary(values: list[float], digits: int) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--src",
        action="append",
        help="PYTHONPATH of a lazyembed to measure (repeatable; "
        "'.' is this checkout); several are interleaved, one fresh process per repeat",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, help="(internal) one scenario")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(measure(args.scenario, args.repeats, args.threads)))
        return
    sources = args.src or ["."]
    print(f"{args.threads} threads, {args.repeats} interleaved repeats (fresh process each)")
    print("| lazyembed | scenario | texts | peak above loaded, MB | after the call, MB | docs/s |")
    print("|---|---|---|---|---|---|")
    for scenario in args.only:
        rows: dict[str, list[dict[str, Any]]] = {src: [] for src in sources}
        for _ in range(args.repeats):
            for src in sources:
                rows[src].append(_run(src, scenario, args.threads))
        for src, runs in rows.items():
            peak, after, rate = (
                [value for run in runs for value in run[key]]
                for key in ("peak_above_loaded_mb", "after_call_above_loaded_mb", "docs_per_s")
            )
            print(
                f"| {src} | {scenario} | {runs[0]['texts']} | {_summary(peak, 0)} | "
                f"{_summary(after, 0)} | {_summary(rate, 1)} |",
                flush=True,
            )


def _run(src: str, scenario: str, threads: int) -> dict[str, Any]:
    env = dict(os.environ)
    source = str(ROOT / "src") if src == "." else src
    env["PYTHONPATH"] = os.pathsep.join((source, str(ROOT)))
    argv = [sys.executable, "-m", "bench.long_texts", "--scenario", scenario]
    argv += ["--repeats", "1", "--threads", str(threads)]
    out = subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()
