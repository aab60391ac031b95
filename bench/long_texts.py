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


def compare(
    sources: list[str],
    scenarios: list[str],
    repeats: int,
    threads: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every scenario for every source, sources interleaved, one fresh process per repeat."""
    table: dict[str, Any] = {}
    for scenario in scenarios:
        runs: dict[str, list[dict[str, Any]]] = {src: [] for src in sources}
        for _ in range(repeats):
            for src in sources:
                runs[src].append(_run(src, scenario, threads, env))
        table[scenario] = {
            src: {
                "texts": rows[0]["texts"],
                **{
                    key: [value for row in rows for value in row[key]]
                    for key in ("peak_above_loaded_mb", "after_call_above_loaded_mb", "docs_per_s")
                },
            }
            for src, rows in runs.items()
        }
    return {"threads": threads, "repeats": repeats, "scenarios": table}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| lazyembed | scenario | texts | peak above loaded, MB | after the call, MB | docs/s |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, by_src in result["scenarios"].items():
        for src, row in by_src.items():
            lines.append(
                f"| {src} | {scenario} | {row['texts']} | "
                f"{_summary(row['peak_above_loaded_mb'], 0)} | "
                f"{_summary(row['after_call_above_loaded_mb'], 0)} | "
                f"{_summary(row['docs_per_s'], 1)} |"
            )
    lines.append(
        f"\nMedian (min-max) of {result['repeats']} fresh processes per row, "
        f"{result['threads']} threads; peak = the kernel's VmHWM during the call, reset "
        "after a warm-up call; long48 = 48 corpus documents, huge100 = 100 texts of 100k "
        "characters, count100 = count_tokens(truncate=False) of those."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--src",
        action="append",
        help="PYTHONPATH of a lazyembed to measure (repeatable; '.' is this checkout); "
        "several are interleaved, one fresh process per repeat",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, help="(internal) one scenario")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(measure(args.scenario, args.repeats, args.threads)))
        return
    print(markdown(compare(args.src or ["."], args.only, args.repeats, args.threads)))


def _run(src: str, scenario: str, threads: int, base: dict[str, str] | None) -> dict[str, Any]:
    env = dict(os.environ if base is None else base)
    source = str(ROOT / "src") if src == "." else src
    env["PYTHONPATH"] = os.pathsep.join((source, str(ROOT)))
    argv = [sys.executable, "-m", "bench.long_texts", "--scenario", scenario]
    argv += ["--repeats", "1", "--threads", str(threads)]
    out = subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()
