"""lazyembed's own measurements for ``make bench``, each run in a FRESH subprocess.

Why subprocesses: every memory figure must start from a clean process (nothing a previous
measurement allocated may be counted), and timings must not share a process with torch.
bench/run.py starts these; by hand, from the repository root in .venv-bench:

    python -m bench.lazyembed_bench footprint --variant fp32 --threads 2

Every command prints its result as ONE JSON line, the last line of stdout. ``worker`` is
the exception: a long-lived throughput worker for any contender (lazyembed or a peer),
driven over stdin/stdout JSON lines by the runner, so contenders can be interleaved
A B C D A B C D ... and drift hits all of them alike.

Every Embedder here runs with ``cache_memory_mb=0`` (a cache would answer repeated texts
without the model) unless the measurement is of the cache itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import timeit
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from bench import corpus
from bench.peers import rss_bytes, spread

if TYPE_CHECKING:
    from lazyembed import Embedder

MB = float(1 << 20)
LAZYEMBED_CONTENDERS = ("lazyembed-fp32", "lazyembed-int8")
FOOTPRINT_SENTENCES = 32  # same texts as bench.peers.footprint(batch_size=32)
FOOTPRINT_LONG = 64  # the largest batch: 64 long documents, truncated to 256 pieces


def make_embedder(variant: str, threads: int, **settings: Any) -> Embedder:
    """An Embedder as the benchmark needs it: cache off, never idle-unloaded, fixed threads
    (so prepack_weights="auto" pre-packs, unless a caller says otherwise)."""
    from lazyembed import Embedder

    options: dict[str, Any] = {"cache_memory_mb": 0, "idle_timeout": "never"}
    options.update(settings)
    return Embedder(variant=variant, intra_op_threads=threads, **options)


# ---- one-off setup -----------------------------------------------------------------------


def prepare(variant: str, threads: int) -> dict[str, Any]:
    """Resolve and convert the model now, so no conversion lands inside a measurement."""
    embedder = make_embedder(variant, threads)
    started = time.perf_counter()
    embedder.prepare()
    report = embedder.model_report()
    report["prepare_s"] = time.perf_counter() - started
    return report


# ---- memory -------------------------------------------------------------------------------


def footprint(variant: str, threads: int) -> dict[str, Any]:
    """RSS above the pre-load point (imports + prepare()) after batch 32, batch 64, unload.

    The texts are the ones bench.peers.footprint uses (corpus.sentences(32) and
    corpus.long_documents(64)), so the rows compare like with like.
    """
    texts = corpus.sentences(FOOTPRINT_SENTENCES)
    longs = corpus.long_documents(FOOTPRINT_LONG)
    baseline = rss_bytes()
    embedder = make_embedder(variant, threads, encode_batch_size=FOOTPRINT_LONG)
    embedder.prepare()
    # A cache hit no longer imports onnxruntime; import it here so that the pre-load
    # point includes the library, as it did before and as every peer's does.
    import onnxruntime  # noqa: F401

    gc.collect()
    before = rss_bytes()
    embedder.warmup()
    loaded = rss_bytes()
    embedder.embed_numpy(texts)  # one batch of 32
    gc.collect()
    after_32 = rss_bytes()
    embedder.embed_numpy(longs)  # one batch of 64 x 256 word pieces
    gc.collect()
    after_64 = rss_bytes()
    embedder.unload_model()
    gc.collect()
    unloaded = rss_bytes()
    status = embedder.get_memory_usage()
    return {
        "contender": f"lazyembed-{variant}",
        "threads": threads,
        "imports_mb": (before - baseline) / MB,
        "loaded_mb": (loaded - before) / MB,
        "after_batch32_mb": (after_32 - before) / MB,
        "after_batch64_long_mb": (after_64 - before) / MB,
        "after_unload_mb": (unloaded - before) / MB,
        "preload_rss_mb": before / MB,
        "lifecycle_load_mb": next((e["mb"] for e in status["events"] if e["kind"] == "load"), None),
        "last_unload": status["last_unload"],
    }


def cycles(variant: str, threads: int, n: int) -> dict[str, Any]:
    """RSS over n load → embed → unload cycles; growth = after cycle n - after cycle 10."""
    texts = corpus.sentences(min(n, 2000))
    # A model that comes and goes: with an idle timeout, prepack_weights="auto" creates
    # each load unpacked and a load serving one call never gets busy enough to pre-pack.
    embedder = make_embedder(variant, threads, prepack_weights=False)
    embedder.prepare()
    gc.collect()
    before = rss_bytes()
    marks = {1, 2, 5, 10, n, *range(50, n + 1, 50)}
    points: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(1, n + 1):
        embedder.embed(texts[i % len(texts)])
        embedder.unload_model()
        if i in marks:
            points[str(i)] = (rss_bytes() - before) / MB
    seconds = time.perf_counter() - started
    first = points[str(min(10, n))]
    return {
        "contender": f"lazyembed-{variant}",
        "cycles": n,
        "seconds": seconds,
        "ms_per_cycle": 1000.0 * seconds / n,
        "preload_rss_mb": before / MB,
        "after_mb_by_cycle": points,
        "growth_mb": points[str(n)] - first,
        "growth_from_cycle": min(10, n),
    }


def timeline(threads: int, idle_timeout_s: float, interval_s: float) -> dict[str, Any]:
    """RSS sampled every interval_s through imports → load → embeds → idle → auto unload →
    transparent reload → idle. Phases are marked here; load/unload come from the events.
    """
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.perf_counter()
    wall0 = time.time()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, rss_bytes() / MB))
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    phases: list[tuple[float, str]] = []

    def mark(label: str) -> None:
        phases.append((time.perf_counter() - t0, label))

    mark("start")
    time.sleep(0.3)
    mark("imports")
    from lazyembed import Embedder

    texts = corpus.sentences(160)
    embedder = Embedder(
        intra_op_threads=threads, cache_memory_mb=0, idle_timeout=f"{idle_timeout_s}s"
    )
    embedder.prepare()
    time.sleep(0.3)
    mark("first embed (load)")
    embedder.embed_numpy(texts[:32])
    mark("embeds")
    for start in range(32, 128, 32):
        embedder.embed_numpy(texts[start : start + 32])
    mark("idle")
    time.sleep(idle_timeout_s + 1.5)
    mark("embed again (reload)")
    embedder.embed_numpy(texts[128:160])
    mark("idle ")
    time.sleep(idle_timeout_s + 1.5)
    mark("end")
    stop.set()
    sampler.join()
    events = [
        {**event, "t": event["time"] - wall0} for event in embedder.get_memory_usage()["events"]
    ]
    return {
        "threads": threads,
        "idle_timeout_s": idle_timeout_s,
        "interval_s": interval_s,
        "samples": samples,
        "phases": phases,
        "events": events,
    }


# ---- time -----------------------------------------------------------------------------------


def reload_latency(variant: str, threads: int, repeats: int, prepack: bool) -> dict[str, Any]:
    """unload_model() → embed(a NEW text) → first vector, in a warm process, in ms.

    ``prepack`` False is how a model with an idle timeout reloads (prepack_weights="auto"
    creates the session unpacked and pre-packs only once that load is busy); True is what
    a never-idle model gets at load, shown for the trade.
    """
    pool = corpus.sentences(repeats + 1)
    embedder = make_embedder(variant, threads, prepack_weights=prepack)
    embedder.embed(pool[0])  # warm: imports done, files in the page cache
    totals: list[float] = []
    loads: list[float] = []
    for i in range(repeats):
        embedder.unload_model()
        started = time.perf_counter()
        embedder.embed(pool[i + 1])
        totals.append(1000.0 * (time.perf_counter() - started))
        loads.append(float(embedder.get_memory_usage()["last_load_ms"]))
    return {
        "contender": f"lazyembed-{variant}{'-prepacked' if prepack else ''}",
        "threads": threads,
        "repeats": repeats,
        "ms": spread(totals),
        "lifecycle_load_ms": spread(loads),
    }


def peer_reload(threads: int, repeats: int) -> dict[str, Any]:
    """sentence-transformers' figure (bench.peers.reload_latency), in its own process."""
    from bench import peers

    return peers.reload_latency(threads=threads, repeats=repeats)


class _Fake:
    """A trivial loaded thing: the bookkeeping benchmark must measure no model."""

    def close(self) -> None:
        return None


def bookkeeping(iterations: int, timer_iterations: int) -> dict[str, Any]:
    """Per-call cost (µs) of Lifecycle.acquire/release vs a new threading.Timer per call."""
    from lazyembed.config import KeepAlive
    from lazyembed.lifecycle import Lifecycle

    lifecycle: Lifecycle[_Fake] = Lifecycle(_Fake, idle_timeout=KeepAlive.after(1800.0))
    minute = KeepAlive.after(60.0)
    with lifecycle.acquire():
        pass  # the one load (and the watcher's start) are not per-call costs

    def acquire_release() -> None:
        with lifecycle.acquire():
            pass

    def acquire_keep_alive() -> None:
        with lifecycle.acquire(keep_alive=minute):
            pass

    def noop() -> None:
        return None

    timers: list[threading.Timer] = []

    def timer_per_call() -> None:
        """The seed's design: cancel the last call's Timer, start a new one."""
        if timers:
            timers.pop().cancel()
        timer = threading.Timer(1800.0, noop)
        timer.daemon = True
        timer.start()
        timers.append(timer)

    def empty() -> None:
        return None

    def per_call_us(call: Callable[[], None], number: int) -> dict[str, float]:
        runs = timeit.repeat(call, number=number, repeat=5)
        return spread([1e6 * run / number for run in runs])

    result = {
        "iterations": iterations,
        "timer_iterations": timer_iterations,
        "empty_call_us": per_call_us(empty, iterations),
        "lifecycle_us": per_call_us(acquire_release, iterations),
        "lifecycle_keep_alive_us": per_call_us(acquire_keep_alive, iterations),
        "timer_per_call_us": per_call_us(timer_per_call, timer_iterations),
        "watcher_wakeups": lifecycle.status().watcher_wakeups,
    }
    for timer in timers:
        timer.cancel()
    lifecycle.close()
    return result


def _cpu_seconds() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _idle_cpu_seconds(seconds: float) -> tuple[float, float]:
    started_cpu, started = _cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return _cpu_seconds() - started_cpu, time.perf_counter() - started


def idle_cpu(kind: str, threads: int, seconds: float) -> dict[str, Any]:
    """Process CPU seconds while a loaded model sits idle for `seconds`.

    kind "lazyembed": an Embedder after one batch. kind "ort-default": a raw ONNX Runtime
    session on the same graph with default options (thread pools may spin), for contrast.
    """
    texts = corpus.sentences(32)
    extra: dict[str, Any] = {}
    if kind == "lazyembed":
        embedder = make_embedder("fp32", threads)
        embedder.embed_numpy(texts)
        wakeups = embedder.get_memory_usage()["watcher_wakeups"]
        cpu, wall = _idle_cpu_seconds(seconds)
        extra["watcher_wakeups"] = embedder.get_memory_usage()["watcher_wakeups"] - wakeups
        extra["still_loaded"] = embedder.is_loaded
    elif kind == "ort-default":
        import onnxruntime as ort

        path = make_embedder("fp32", threads).prepare().converted.path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ids = np.random.default_rng(0).integers(1000, 20000, size=(32, 40), dtype=np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        cpu, wall = _idle_cpu_seconds(seconds)
        del session
    else:
        raise ValueError(f"unknown idle-cpu kind {kind!r}")
    return {
        "kind": kind,
        "threads": threads,
        "seconds": wall,
        "cpu_seconds": cpu,
        "core_pct": 100.0 * cpu / wall,
        **extra,
    }


def _rate(call: Callable[[int], object], seconds: float) -> float:
    """Calls per second of call(i), best of three runs of about `seconds` each."""
    best = 0.0
    for _ in range(3):
        done = 0
        started = time.perf_counter()
        while True:
            for i in range(done, done + 100):
                call(i)
            done += 100
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        best = max(best, done / elapsed)
    return best


def _hit_rates(embedder: Embedder, texts: Sequence[str], seconds: float) -> tuple[float, float]:
    """Single-text calls per second through embed() and embed_numpy(), all cache hits."""
    n = len(texts)
    return (
        _rate(lambda i: embedder.embed(texts[i % n]), seconds),
        _rate(lambda i: embedder.embed_numpy(texts[i % n]), seconds),
    )


def cache(threads: int, n_texts: int, miss_calls: int, seconds: float) -> dict[str, Any]:
    """The cache through Embedder.embed: single-text hits (model unloaded) and the miss
    path's overhead over no cache at all.

    Miss overhead: the same NEW sentence goes to an Embedder without cache, one with the
    memory LRU and one with SQLite only, in rotating order; overhead is the median of the
    per-sentence time ratios minus 1 (pairing cancels the sentences' different lengths).
    """
    texts = corpus.sentences(n_texts + miss_calls + 3)
    hit_texts, miss_texts = texts[:n_texts], texts[n_texts:]
    result: dict[str, Any] = {"threads": threads, "hit_texts": n_texts, "miss_calls": miss_calls}
    with tempfile.TemporaryDirectory(prefix="lazyembed-bench-cache-") as tmp:
        stores: dict[str, dict[str, Any]] = {
            "memory": {"cache_memory_mb": 64},
            "sqlite": {
                "cache_memory_mb": 0,
                "cache_persistent": True,
                "cache_path": Path(tmp) / "hits.sqlite3",
            },
        }
        for name, settings in stores.items():
            embedder = make_embedder("fp32", threads, encode_batch_size=64, **settings)
            embedder.embed_numpy(hit_texts)  # fill (loads the model once)
            embedder.unload_model()
            hits, hits_numpy = _hit_rates(embedder, hit_texts, seconds)
            result[f"{name}_embed_hits_per_s"] = hits
            result[f"{name}_embed_numpy_hits_per_s"] = hits_numpy
            result[f"{name}_model_stayed_unloaded"] = not embedder.is_loaded
            result[f"{name}_stats"] = embedder.get_memory_usage().get("cache")
            embedder.close()

        contenders = {
            "none": make_embedder("fp32", threads),
            "memory": make_embedder("fp32", threads, cache_memory_mb=32),
            "sqlite": make_embedder(
                "fp32",
                threads,
                cache_memory_mb=0,
                cache_persistent=True,
                cache_path=Path(tmp) / "misses.sqlite3",
            ),
        }
        names = list(contenders)
        for j, embedder in enumerate(contenders.values()):
            embedder.embed(texts[-1 - j])  # load and warm; not among the measured texts
        times: dict[str, list[float]] = {name: [] for name in names}
        for i, text in enumerate(miss_texts[:miss_calls]):
            for name in names[i % 3 :] + names[: i % 3]:
                started = time.perf_counter()
                contenders[name].embed(text)
                times[name].append(time.perf_counter() - started)
        for name in ("memory", "sqlite"):
            ratios = [c / n for c, n in zip(times[name], times["none"], strict=True)]
            result[f"{name}_miss_overhead_pct"] = 100.0 * (statistics.median(ratios) - 1.0)
            result[f"{name}_miss_ms"] = spread([1000.0 * t for t in times[name]])
        result["none_ms"] = spread([1000.0 * t for t in times["none"]])
        for embedder in contenders.values():
            embedder.close()
    return result


# ---- the throughput worker ----------------------------------------------------------------

Vectors = np.ndarray[Any, np.dtype[np.float32]]
Encode = Callable[[Sequence[str], int], Vectors]


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the runner dies (even while it is SIGSTOPped)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def load_contender(name: str, threads: int, batch_sizes: Sequence[int]) -> Encode:
    """encode(texts, batch_size) for lazyembed (one Embedder per batch size) or a peer."""
    if name in LAZYEMBED_CONTENDERS:
        variant = name.rsplit("-", 1)[1]
        embedders = {b: make_embedder(variant, threads, encode_batch_size=b) for b in batch_sizes}
        for embedder in embedders.values():
            embedder.warmup()

        def encode(texts: Sequence[str], batch_size: int) -> Vectors:
            return embedders[batch_size].embed_numpy(list(texts))

        return encode
    from bench import peers

    return peers.load_peer(name, threads)


@contextlib.contextmanager
def _protocol_stdout() -> Iterator[IO[str]]:
    """The runner reads replies from our stdout; library prints must not reach it."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        yield channel
    finally:
        channel.close()


def worker(name: str, threads: int, corpus_file: Path, batch_sizes: Sequence[int]) -> None:
    """Serve {"op": "warmup" | "run" | "quit"} requests, one JSON line each way.

    run: {"set": "sentences" | "sentences-sorted" | "long", "batch": B, "save": path | null}
    → {"seconds", "n"}; the vectors are saved (after the timing) when asked, for the
    fidelity figures. "sentences-sorted" is the same sentences ordered by length
    (characters), so every contender's batches are as even as lazyembed's own sorting
    makes them: lazyembed sorts the texts of a call by tokens, fastembed does not sort.
    """
    _die_with_parent()
    data = json.loads(corpus_file.read_text(encoding="utf-8"))
    sets: dict[str, list[str]] = {
        "sentences": data["sentences"],
        "sentences-sorted": sorted(data["sentences"], key=len),
        "long": data["long"],
    }
    with _protocol_stdout() as reply:
        started = time.perf_counter()
        try:
            encode = load_contender(name, threads, batch_sizes)
        except Exception:
            reply.write(json.dumps({"error": traceback.format_exc()}) + "\n")
            return
        reply.write(json.dumps({"ready": name, "load_s": time.perf_counter() - started}) + "\n")
        for line in sys.stdin:
            request = json.loads(line)
            op = request.get("op")
            if op == "quit":
                break
            try:
                if op == "warmup":
                    for b in batch_sizes:
                        encode(sets["sentences"][: max(2 * b, 64)], b)
                    encode(sets["long"][:32], 32 if 32 in batch_sizes else batch_sizes[0])
                    answer: dict[str, Any] = {"ok": True}
                elif op == "run":
                    texts = sets[request["set"]]
                    started = time.perf_counter()
                    vectors = encode(texts, int(request["batch"]))
                    seconds = time.perf_counter() - started
                    if request.get("save"):
                        np.save(request["save"], np.asarray(vectors, dtype=np.float32))
                    answer = {"seconds": seconds, "n": len(texts)}
                else:
                    answer = {"error": f"unknown op {op!r}"}
            except Exception:
                answer = {"error": traceback.format_exc()}
            reply.write(json.dumps(answer) + "\n")


# ---- command line ---------------------------------------------------------------------------


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def library_calls(
    threads: int, texts: Sequence[str], call_size: int, repeats: int
) -> dict[str, Any]:
    """Sentences/s when the library gets the texts in arrival order, `call_size` per call.

    What a server's batcher can do at best: it only sees the texts the clients have sent,
    so it cannot sort a whole corpus by length as one big embed_numpy() call does.
    """
    embedder = make_embedder("fp32", threads, encode_batch_size=64)
    embedder.warmup()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(texts), call_size):
            embedder.embed_numpy(list(texts[i : i + call_size]))
        rates.append(len(texts) / (time.perf_counter() - started))
    embedder.close()
    return {"call_size": call_size, "sentences_per_s": spread(rates)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lazyembed_bench", description=__doc__)
    parser.add_argument("--threads", type=int, default=_default_threads())
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "footprint", "reload"):
        sub = commands.add_parser(name)
        sub.add_argument("--variant", choices=("fp32", "int8"), default="fp32")
        if name == "reload":
            sub.add_argument("--repeats", type=int, default=20)
            sub.add_argument("--prepack", action="store_true", help="prepack_weights=true")
    peer = commands.add_parser("peer-reload", help="sentence-transformers' reload latency")
    peer.add_argument("--repeats", type=int, default=20)
    cyc = commands.add_parser("cycles")
    cyc.add_argument("--variant", choices=("fp32", "int8"), default="fp32")
    cyc.add_argument("-n", type=int, default=1000)
    line = commands.add_parser("timeline")
    line.add_argument("--idle-timeout", type=float, default=2.0)
    line.add_argument("--interval", type=float, default=0.02)
    book = commands.add_parser("bookkeeping")
    book.add_argument("--iterations", type=int, default=200_000)
    book.add_argument("--timer-iterations", type=int, default=2_000)
    idle = commands.add_parser("idle-cpu")
    idle.add_argument("--kind", choices=("lazyembed", "ort-default"), default="lazyembed")
    idle.add_argument("--seconds", type=float, default=10.0)
    cached = commands.add_parser("cache")
    cached.add_argument("--texts", type=int, default=500)
    cached.add_argument("--miss-calls", type=int, default=300)
    cached.add_argument("--seconds", type=float, default=1.0)
    calls = commands.add_parser("library-calls", help="library fed like a server's batcher")
    calls.add_argument("--corpus-file", type=Path, required=True)
    calls.add_argument("--call-size", type=int, default=16)
    calls.add_argument("--repeats", type=int, default=3)
    work = commands.add_parser("worker", help="throughput worker (driven by bench/run.py)")
    work.add_argument("contender")
    work.add_argument("--corpus-file", type=Path, required=True)
    work.add_argument("--batch-sizes", default="1,8,32,64")
    args = parser.parse_args(argv)

    threads: int = args.threads
    result: dict[str, Any]
    if args.command == "worker":
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        worker(args.contender, threads, args.corpus_file, sizes)
        return
    if args.command == "prepare":
        result = prepare(args.variant, threads)
    elif args.command == "footprint":
        result = footprint(args.variant, threads)
    elif args.command == "reload":
        result = reload_latency(args.variant, threads, args.repeats, args.prepack)
    elif args.command == "peer-reload":
        result = peer_reload(threads, args.repeats)
    elif args.command == "cycles":
        result = cycles(args.variant, threads, args.n)
    elif args.command == "timeline":
        result = timeline(threads, args.idle_timeout, args.interval)
    elif args.command == "bookkeeping":
        result = bookkeeping(args.iterations, args.timer_iterations)
    elif args.command == "idle-cpu":
        result = idle_cpu(args.kind, threads, args.seconds)
    elif args.command == "library-calls":
        texts = json.loads(args.corpus_file.read_text(encoding="utf-8"))
        result = library_calls(threads, texts, args.call_size, args.repeats)
    else:
        result = cache(threads, args.texts, args.miss_calls, args.seconds)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
