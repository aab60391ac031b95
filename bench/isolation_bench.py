"""Isolated-process mode against in-process: per-call overhead, throughput, reload latency.

Why: issue 7 asks what process isolation costs. Not run in CI (timings on a shared
machine are noisy); run it by hand:

    .venv/bin/python bench/isolation_bench.py [--calls 50] [--reloads 7] [--quick] [--json]

* per call: median wall time of one ``encode`` at batch 1 and batch 32 (the same texts
  for both modes); overhead = isolated - in-process.
* throughput: texts/s over the corpus in batches of 32.
* reload: unloaded → first vector (load + warm-up + one call, then close), median of
  ``--reloads``; the isolated figure has the fork server already running (prestart()),
  as it is in a long-lived process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import sentences, source_description

from lazyembed import isolation
from lazyembed.models.convert import ensure_onnx
from lazyembed.models.info import read_model_info
from lazyembed.models.resolve import resolve_model
from lazyembed.runtime import EncodeResult, RuntimeSpec, load_runtime


class Loaded(Protocol):
    def encode(self, texts: Sequence[str]) -> EncodeResult: ...

    def close(self) -> None: ...


def make_spec(cache_dir: Path, threads: int) -> RuntimeSpec:
    resolved = resolve_model(None)
    info = read_model_info(resolved.directory)
    converted = ensure_onnx(resolved.directory, variant="fp32", cache_dir=cache_dir)
    return RuntimeSpec(
        onnx_path=str(converted.path),
        tokenizer_path=str(resolved.directory / "tokenizer.json"),
        max_seq_length=info.max_seq_length,
        dimension=info.dimension,
        threads=threads,
        batch_size=32,
        normalize=info.normalize,
    )


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def per_call(model: Loaded, texts: list[str], batch: int, calls: int) -> float:
    chunk = texts[:batch]
    model.encode(chunk)  # warm
    return median_ms(lambda: model.encode(chunk), calls)


def throughput(model: Loaded, texts: list[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), 32):
        model.encode(texts[i : i + 32])
    return len(texts) / (time.perf_counter() - start)


def reload_ms(load: Callable[[], Loaded], repeats: int) -> float:
    def cycle() -> None:
        model = load()
        model.encode(["first vector after a reload"])
        model.close()

    cycle()  # warm the file cache and, for isolation, the fork server
    return median_ms(cycle, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--reloads", type=int, default=7)
    parser.add_argument("--texts", type=int, default=1000, help="texts for throughput")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("LAZYEMBED_CACHE_DIR", Path.home() / ".cache/lazyembed")),
    )
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.reloads, args.texts = 10, 3, 256

    spec = make_spec(args.cache_dir, args.threads)
    texts = sentences(max(args.texts, 32))
    isolation.prestart()
    results: dict[str, dict[str, float]] = {}
    for mode, load in (
        ("in-process", lambda: load_runtime(spec)),
        ("isolated", lambda: isolation.load_isolated(spec)),
    ):
        loader: Callable[[], Loaded] = load
        model = loader()
        try:
            row = {
                "batch1_ms": per_call(model, texts, 1, args.calls),
                "batch32_ms": per_call(model, texts, 32, args.calls),
                "texts_per_s": throughput(model, texts[: args.texts]),
            }
        finally:
            model.close()
        row["reload_ms"] = reload_ms(loader, args.reloads)
        results[mode] = row

    report: dict[str, Any] = {
        "corpus": source_description(),
        "threads": args.threads,
        "calls": args.calls,
        "reloads": args.reloads,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    inp, iso = results["in-process"], results["isolated"]
    print(f"# {report['corpus']}; threads={args.threads}; medians of {args.calls} calls")
    print(f"{'metric':<22}{'in-process':>12}{'isolated':>12}{'difference':>12}")
    for key, label in (
        ("batch1_ms", "batch 1 (ms/call)"),
        ("batch32_ms", "batch 32 (ms/call)"),
        ("texts_per_s", "texts/s (batch 32)"),
        ("reload_ms", "reload→vector (ms)"),
    ):
        print(f"{label:<22}{inp[key]:>12.2f}{iso[key]:>12.2f}{iso[key] - inp[key]:>+12.2f}")


if __name__ == "__main__":
    main()
