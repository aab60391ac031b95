"""ONNX Runtime against OpenVINO (fp32) on the same converted model, in lazyembed's encode path.

Every figure comes from a FRESH subprocess (memory must start clean), and the contenders
are interleaved A B C A B C ... so the drift of a shared machine hits all of them alike.
From the repository root, in a venv with the ``openvino`` extra:

    python -m bench.openvino_bench --repeats 3 --threads 2

Contenders: ``ort`` (the default backend), ``ov`` (OpenVINO, LATENCY hint, compile cache
warm), ``ov-throughput`` (THROUGHPUT hint: one stream per core, runs queued over them).
Per run: load + first vector (ms), sentences/s over 2,000 benchmark sentences (one call:
length-sorted, padding-aware runs of 32), RSS added while loaded (above the process with
its runtime imported) and RSS left after close + release_to_os. Cosines are against the
first ORT run's vectors. ``reshape`` measures what static shapes would cost instead.
The last line of stdout is the whole result as JSON; the markdown table comes before it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bench import corpus
from bench.peers import cosine_stats, rss_bytes, spread

MB = float(1 << 20)
CONTENDERS = ("ort", "ov", "ov-throughput")
SENTENCES = 2000
FIRST_TEXT = "The first vector after a load."


def _spec(threads: int) -> Any:
    from lazyembed import Embedder

    return Embedder(intra_op_threads=threads, encode_batch_size=32).prepare().spec


def _load(contender: str, spec: Any, cache_dir: Path | None) -> Any:
    if contender == "ort":
        from lazyembed.runtime import load_runtime

        return load_runtime(spec)
    from lazyembed.runtime.openvino import load_openvino

    throughput = contender == "ov-throughput"
    return load_openvino(
        spec, precision="fp32", cache_dir=cache_dir, hint="THROUGHPUT" if throughput else "LATENCY"
    )


def run_one(
    contender: str, threads: int, cache_dir: Path | None, vectors_out: Path
) -> dict[str, Any]:
    """One contender in this (fresh) process: load, first vector, throughput, close."""
    from lazyembed import memory

    if contender == "ort":
        import onnxruntime  # noqa: F401  (the import is not the model's memory)
    else:
        import openvino  # noqa: F401
    spec = _spec(threads)
    texts = corpus.sentences(SENTENCES)
    memory.release_to_os()
    base = rss_bytes()
    started = time.perf_counter()
    runtime = _load(contender, spec, cache_dir)
    runtime.encode([FIRST_TEXT])
    first_ms = (time.perf_counter() - started) * 1e3
    runtime.encode(texts[:64])  # the steady state: runs' buffers exist once
    started = time.perf_counter()
    result = runtime.encode(texts)
    seconds = time.perf_counter() - started
    loaded = rss_bytes()
    runtime.close()
    memory.release_to_os()
    after = rss_bytes()
    np.save(vectors_out, result.vectors)
    return {
        "contender": contender,
        "load_first_ms": first_ms,
        "sentences_per_s": len(texts) / seconds,
        "rss_loaded_mb": (loaded - base) / MB,
        "rss_after_close_mb": (after - base) / MB,
    }


def reshape(threads: int) -> dict[str, Any]:
    """Dynamic shapes against a model reshaped to one static run shape (no cache)."""
    import openvino as ov

    spec = _spec(threads)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": "f32"}
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(32, 48), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    out: dict[str, Any] = {}
    requests = {}
    for name in ("dynamic", "static"):
        started = time.perf_counter()
        model = core.read_model(spec.onnx_path)
        if name == "static":
            model.reshape({"input_ids": [32, 48], "attention_mask": [32, 48]})
        requests[name] = core.compile_model(model, "CPU", config).create_infer_request()
        out[f"{name}_compile_ms"] = (time.perf_counter() - started) * 1e3
        requests[name].infer(feeds)
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(10):  # alternated, so the machine's drift hits both alike
        for name, request in requests.items():
            started = time.perf_counter()
            request.infer(feeds)
            times[name].append((time.perf_counter() - started) * 1e3)
    for name, runs in times.items():
        out[f"{name}_run_ms"] = statistics.median(runs)
    return out


def _child(argv: Sequence[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.openvino_bench", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def cpu_line() -> tuple[str, str]:
    from lazyembed.cpu import FLAGS, cpu_features

    cpu = cpu_features()
    checked = ", ".join(f"{flag} {'yes' if getattr(cpu, flag) else 'no'}" for flag in FLAGS)
    try:
        import openvino as ov

        capabilities = ", ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        version = ov.__version__
    except Exception as exc:
        capabilities, version = f"unavailable ({exc})", "not installed"
    return cpu.model_name, f"{checked}; OpenVINO {version} capabilities: {capabilities}"


def compare(repeats: int, threads: int) -> dict[str, Any]:
    """All contenders, interleaved, ``repeats`` times; then the summary."""
    work = Path(tempfile.mkdtemp(prefix="lazyembed-ov-bench-"))
    cache = work / "cache"
    # Fill the compile cache first: the measured loads are reloads, as in a server.
    common = ["--threads", str(threads)]
    cached = [*common, "--cache-dir", str(cache)]
    _child(["one", "ov", *cached, "--out", str(work / "warm.npy")])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (*CONTENDERS, "ov-cold")}
    reshapes = []
    for repeat in range(repeats):
        for contender in CONTENDERS:
            out = work / f"{contender}-{repeat}.npy"
            runs[contender].append(_child(["one", contender, *cached, "--out", str(out)]))
        cold = work / f"ov-cold-{repeat}.npy"
        runs["ov-cold"].append(_child(["one", "ov", *common, "--out", str(cold)]))
        reshapes.append(_child(["reshape", *common]))
    reference = np.load(work / "ort-0.npy")
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        row = {key: spread([r[key] for r in results]) for key in results[0] if key != "contender"}
        vectors = np.load(work / f"{name}-0.npy")
        row["cosine_vs_ort"] = cosine_stats(vectors, reference)
        summary[name] = row
    shapes = {key: spread([r[key] for r in reshapes]) for key in reshapes[0]}
    model, flags = cpu_line()
    return {
        "cpu": model,
        "flags": flags,
        "threads": threads,
        "repeats": repeats,
        "corpus": corpus.source_description(),
        "summary": summary,
        "reshape": shapes,
    }


def markdown(result: dict[str, Any]) -> str:
    """The comparison as a small markdown table (median, spread, ratio to ORT)."""
    summary = result["summary"]
    ort = summary["ort"]

    def cell(name: str, key: str, digits: int = 0, ratio: bool = False) -> str:
        stats = summary[name][key]
        text = f"{stats['median']:.{digits}f} ±{stats['spread_pct']:.0f}%"
        if ratio and name != "ort":
            text += f" ({stats['median'] / ort[key]['median']:.2f}x)"
        return text

    lines = [
        f"CPU: {result['cpu']}, {result['threads']} threads; flags checked: {result['flags']}",
        f"Corpus: {SENTENCES} sentences of {result['corpus']}; median of {result['repeats']} "
        "fresh processes, interleaved; ± is (max - min) / median.",
        "",
        "| contender | sentences/s | load + first vector (ms) | RSS loaded (MB) "
        "| RSS after close (MB) | cosine vs ORT min / mean |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "ort": "ONNX Runtime fp32",
        "ov": "OpenVINO fp32, LATENCY (compile cache warm)",
        "ov-throughput": "OpenVINO fp32, THROUGHPUT (cache warm)",
        "ov-cold": "OpenVINO fp32, LATENCY, no compile cache",
    }
    for name, label in labels.items():
        cos = summary[name]["cosine_vs_ort"]
        lines.append(
            f"| {label} | {cell(name, 'sentences_per_s', ratio=True)} "
            f"| {cell(name, 'load_first_ms', ratio=True)} | {cell(name, 'rss_loaded_mb', 1)} "
            f"| {cell(name, 'rss_after_close_mb', 1)} | {cos['min']:.6f} / {cos['mean']:.6f} |"
        )
    shapes = result["reshape"]
    lines += [
        "",
        "Static shapes instead of dynamic (batch 32 x 48 tokens): compile "
        f"{shapes['static_compile_ms']['median']:.0f} ms per shape against "
        f"{shapes['dynamic_compile_ms']['median']:.0f} ms once; a run "
        f"{shapes['static_run_ms']['median']:.1f} ms against "
        f"{shapes['dynamic_run_ms']['median']:.1f} ms dynamic.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("one", help="one contender in this process (JSON line)")
    one.add_argument("contender", choices=CONTENDERS)
    one.add_argument("--threads", type=int, default=2)
    one.add_argument("--cache-dir", type=Path, default=None)
    one.add_argument("--out", type=Path, required=True)
    shape = sub.add_parser("reshape", help="dynamic against static shapes (JSON line)")
    shape.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "one":
        print(json.dumps(run_one(args.contender, args.threads, args.cache_dir, args.out)))
    elif args.command == "reshape":
        print(json.dumps(reshape(args.threads)))
    else:
        result = compare(args.repeats, args.threads)
        print(markdown(result))
        print(json.dumps(result))


if __name__ == "__main__":
    main()
