"""Isolated-process mode against in-process: per-call overhead, throughput, reload latency.

Why: issue 7 asks what process isolation costs. Not run in CI (timings on a shared
machine are noisy); run it by hand:

    .venv/bin/python bench/isolation_bench.py [--calls 50] [--passes 5] [--reloads 7] [--json]

Both modes are measured interleaved (A B, then B A, ...), so the drift of a shared
machine hits both alike, and every figure is a median with its min-max spread:

* per call: wall time of one ``encode`` at batch 1 and batch 32 (the same texts for
  both modes), ``--calls`` of each; overhead = isolated - in-process.
* throughput: texts/s over the corpus in batches of 32, ``--passes`` passes per mode
  (both models loaded; the one not being timed is idle).
* reload: unloaded → first vector (load + warm-up + one call, then close), ``--reloads``
  per mode; the isolated figure has the fork server already running (prestart()), as it
  is in a long-lived process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
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


def interleaved(calls: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each call ``repeats`` times, in turn: A B, B A, A B, ... (each value as returned)."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(repeats):
        order = list(calls) if repeat % 2 == 0 else list(reversed(calls))
        for name in order:
            out[name].append(calls[name]())
    return out


def timed_ms(call: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1000

    return run


def throughput(model: Loaded, texts: list[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(texts), 32):
        model.encode(texts[i : i + 32])
    return len(texts) / (time.perf_counter() - start)


def reload_cycle(load: Callable[[], Loaded]) -> None:
    model = load()
    model.encode(["first vector after a reload"])
    model.close()


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(
    loaders: dict[str, Callable[[], Loaded]], texts: list[str], args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    """Every figure of both modes, interleaved: the raw values per mode and metric."""
    runs: dict[str, dict[str, list[float]]] = {mode: {} for mode in loaders}
    models = {mode: load() for mode, load in loaders.items()}
    try:
        for batch in (1, 32):
            chunk = texts[:batch]
            for model in models.values():
                model.encode(chunk)  # warm
            calls = {mode: timed_ms(partial(model.encode, chunk)) for mode, model in models.items()}
            for mode, values in interleaved(calls, args.calls).items():
                runs[mode][f"batch{batch}_ms"] = values
        corpus = texts[: args.texts]
        passes = {mode: partial(throughput, model, corpus) for mode, model in models.items()}
        for mode, values in interleaved(passes, args.passes).items():
            runs[mode]["texts_per_s"] = values
    finally:
        for model in models.values():
            model.close()
    for load in loaders.values():
        reload_cycle(load)  # warm the file cache and, for isolation, the fork server
    cycles = {mode: timed_ms(partial(reload_cycle, load)) for mode, load in loaders.items()}
    for mode, values in interleaved(cycles, args.reloads).items():
        runs[mode]["reload_ms"] = values
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--passes", type=int, default=5, help="throughput passes per mode")
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
        args.calls, args.passes, args.reloads, args.texts = 10, 2, 3, 256

    spec = make_spec(args.cache_dir, args.threads)
    texts = sentences(max(args.texts, 32))
    isolation.prestart()
    loaders: dict[str, Callable[[], Loaded]] = {
        "in-process": lambda: load_runtime(spec),
        "isolated": lambda: isolation.load_isolated(spec),
    }
    runs = measure(loaders, texts, args)
    results = {
        mode: {key: statistics.median(values) for key, values in by_key.items()}
        for mode, by_key in runs.items()
    }
    report: dict[str, Any] = {
        "corpus": source_description(),
        "threads": args.threads,
        "calls": args.calls,
        "passes": args.passes,
        "reloads": args.reloads,
        "interleaved": True,
        "results": results,  # medians
        "spread": {
            mode: {key: spread(values) for key, values in by_key.items()}
            for mode, by_key in runs.items()
        },
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    inp, iso = results["in-process"], results["isolated"]
    print(
        f"# {report['corpus']}; threads={args.threads}; medians of {args.calls} calls, "
        f"{args.passes} throughput passes, {args.reloads} reloads, modes interleaved"
    )
    print(f"{'metric':<22}{'in-process':>12}{'isolated':>12}{'difference':>12}")
    for key, label in (
        ("batch1_ms", "batch 1 (ms/call)"),
        ("batch32_ms", "batch 32 (ms/call)"),
        ("texts_per_s", "texts/s (batch 32)"),
        ("reload_ms", "reload→vector (ms)"),
    ):
        print(f"{label:<22}{inp[key]:>12.2f}{iso[key]:>12.2f}{iso[key] - inp[key]:>+12.2f}")
        low = [report["spread"][mode][key] for mode in ("in-process", "isolated")]
        print(f"{'  min-max':<22}" + "".join(f"{r['min']:>6.1f}-{r['max']:<5.1f}" for r in low))


if __name__ == "__main__":
    main()
