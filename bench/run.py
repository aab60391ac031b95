"""``make bench``: lazyembed against sentence-transformers and fastembed, on this machine.

Run from the repository root inside .venv-bench (bench/run.sh sets it up):

    python -m bench.run            # full run, writes docs/benchmarks.{md,json} + PNGs
    python -m bench.run --quick    # smoke run (a minute or two), writes to a temp dir

This process only orchestrates: every measurement runs in a fresh subprocess
(bench/lazyembed_bench.py, bench/peers.py, bench/cache_bench.py, bench/isolation_bench.py,
``lazyembed serve``), with the same thread count for every contender. Throughput workers
stay alive across repeats and are driven in turn (A B C D A B C D ...); the ones not being
measured are SIGSTOPped, so an idle peer's spinning thread pool cannot steal CPU from the
one being timed. Each table is printed as soon as it is complete; a section that fails is
recorded and the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from bench import corpus, peers
from bench.peers import spread

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("lazyembed-fp32", "lazyembed-int8", "sentence-transformers", "fastembed")
REFERENCE = "sentence-transformers"
LOCK_PATH = Path(tempfile.gettempdir()) / "lazyembed-bench.lock"
LOCK_HELD_ENV = "LAZYEMBED_BENCH_LOCK_HELD"  # set by bench/run.sh, which holds the lock
# Environment variables that may stay: they say where files live, not how lazyembed runs.
KEPT_LAZYEMBED_ENV = frozenset({"LAZYEMBED_CACHE_DIR"})
SERVER_CLIENTS = 16
LONE_CLIENT_TEXTS = 300  # requests of the server section's one-client row

Result = dict[str, Any]


@dataclass(frozen=True)
class Config:
    """Sizes of one run; --quick shrinks every one of them."""

    quick: bool
    threads: int
    sentences: int
    long_docs: int
    repeats: int
    batch_sizes: tuple[int, ...]
    reload_repeats: int
    cycles: int
    idle_seconds: float
    bookkeeping_iterations: int
    timer_iterations: int
    cache_seconds: float
    cache_texts: int
    cache_miss_calls: int
    server_requests: int
    server_repeats: int
    out: Path


def make_config(args: argparse.Namespace) -> Config:
    quick: bool = args.quick
    out = args.out or (
        Path(tempfile.gettempdir()) / "lazyembed-bench-quick" if quick else ROOT / "docs"
    )
    return Config(
        quick=quick,
        threads=args.threads,
        sentences=args.sentences or (64 if quick else 2000),
        long_docs=8 if quick else 64,
        repeats=args.repeats or (2 if quick else 3),
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        reload_repeats=5 if quick else 20,
        cycles=30 if quick else 1000,
        idle_seconds=2.0 if quick else 10.0,
        bookkeeping_iterations=20_000 if quick else 200_000,
        timer_iterations=200 if quick else 2_000,
        cache_seconds=0.2 if quick else 1.0,
        cache_texts=100 if quick else 500,
        cache_miss_calls=30 if quick else 300,
        server_requests=100 if quick else 2000,
        server_repeats=1 if quick else 3,
        out=out,
    )


# ---- helpers ---------------------------------------------------------------------------------


def bench_env(workdir: Path) -> dict[str, str]:
    """The same environment for every subprocess: no user config, no LAZYEMBED_* knobs.

    TOKENIZERS_PARALLELISM=false for every contender alike (bench.peers sets it for the
    peers; the thread count is the --threads figure for everyone).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LAZYEMBED_") or k in KEPT_LAZYEMBED_ENV
    }
    empty_config = workdir / "empty-config.toml"
    empty_config.write_text("# benchmark: defaults only\n", encoding="utf-8")
    env["LAZYEMBED_CONFIG"] = str(empty_config)
    env["LAZYEMBED_SHARE"] = "never"  # in-process; the daemon section runs its own daemon
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class SubprocessFailed(RuntimeError):
    """A measurement subprocess exited non-zero or printed no JSON."""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_python(argv: Sequence[str], *, timeout: float, whole_stdout: bool = False) -> Result:
    """Run ``python ARGV`` from the repo root; its last stdout line (or all of it) is JSON."""
    command = [sys.executable, *argv]
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SubprocessFailed(f"{' '.join(argv)}: timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise SubprocessFailed(
            f"{' '.join(argv)} exited with {done.returncode}:\n{_tail(done.stderr)}"
        )
    text = done.stdout if whole_stdout else (done.stdout.strip().splitlines() or [""])[-1]
    try:
        result: Result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubprocessFailed(
            f"{' '.join(argv)} printed no JSON:\n{_tail(done.stdout)}\n{_tail(done.stderr)}"
        ) from exc
    return result


def lazy_bench(cfg: Config, *argv: str, timeout: float = 900.0) -> Result:
    return run_python(
        ["-m", "bench.lazyembed_bench", f"--threads={cfg.threads}", *argv], timeout=timeout
    )


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def fmt_spread(stats: Result | None, digits: int = 0) -> str:
    """median (min-max) of a spread() dict."""
    if not stats:
        return "n/a"
    return (
        f"{fmt(stats['median'], digits)} ({fmt(stats['min'], digits)}-{fmt(stats['max'], digits)})"
    )


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Refuse to run next to another benchmark (bench/run.sh takes the same lock)."""
    if os.environ.get(LOCK_HELD_ENV) == "1":
        yield
        return
    with open(LOCK_PATH, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"another benchmark is running (lock {LOCK_PATH}); not starting")
        yield


# ---- the throughput workers ------------------------------------------------------------------


class Worker:
    """One contender's long-lived throughput process, SIGSTOPped while others are timed."""

    def __init__(self, name: str, cfg: Config, corpus_file: Path, log: IO[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.lazyembed_bench",
                f"--threads={cfg.threads}",
                "worker",
                name,
                f"--corpus-file={corpus_file}",
                "--batch-sizes=" + ",".join(str(b) for b in cfg.batch_sizes),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
        )
        hello = self._read()
        self.load_s = float(hello["load_s"])
        self._signal(signal.SIGSTOP)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def _read(self) -> Result:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise SubprocessFailed(f"{self.name} worker exited ({code}); see the worker log")
        reply: Result = json.loads(line)
        if "error" in reply:
            raise SubprocessFailed(f"{self.name} worker: {_tail(str(reply['error']))}")
        return reply

    def request(self, **request: object) -> Result:
        assert self.proc.stdin is not None
        self._signal(signal.SIGCONT)
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return self._read()
        finally:
            self._signal(signal.SIGSTOP)

    def close(self) -> None:
        self._signal(signal.SIGCONT)
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- sections ----------------------------------------------------------------------------------


class Run:
    """Holds the configuration, the raw results and the markdown of every section."""

    def __init__(self, cfg: Config, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.results: Result = {"config": {**asdict(cfg), "out": str(cfg.out)}}
        self.sections: list[tuple[str, str]] = []
        self.errors: dict[str, str] = {}
        self.texts = corpus.sentences(cfg.sentences)
        self.longs = corpus.long_documents(cfg.long_docs)
        self.corpus_file = workdir / "corpus.json"
        self.corpus_file.write_text(
            json.dumps({"sentences": self.texts, "long": self.longs}), encoding="utf-8"
        )
        self.log_path = cfg.out / "bench-workers.log"

    def section(self, key: str, title: str, measure: Callable[[], tuple[Result, str]]) -> None:
        """Run one section; print and keep its markdown; record (not raise) a failure."""
        print(f"\n== {title} ...", flush=True)
        started = time.perf_counter()
        try:
            result, markdown = measure()
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            self.errors[key] = message
            self.results[key] = {"error": message, "traceback": traceback.format_exc()}
            markdown = f"**FAILED**: `{_tail(message, 8)}`"
        else:
            self.results[key] = result
        seconds = time.perf_counter() - started
        self.results.setdefault("section_seconds", {})[key] = seconds
        print(f"\n## {title}  ({seconds:.0f} s)\n\n{markdown}\n", flush=True)
        self.sections.append((title, markdown))
        self.save_json()

    def save_json(self) -> None:
        self.results["errors"] = self.errors
        path = self.cfg.out / "benchmarks.json"
        path.write_text(json.dumps(self.results, indent=1, default=str), encoding="utf-8")

    # ---- throughput and fidelity --------------------------------------------------------

    def throughput(self) -> tuple[Result, str]:
        cfg = self.cfg
        # "sentences-sorted": the same corpus ordered by length, so the batch-32 comparison
        # is also made with every contender's batches as even as lazyembed's sorting makes
        # its own (fastembed does not sort).
        plan = [("sentences", b) for b in cfg.batch_sizes]
        plan += [("sentences-sorted", 32), ("long", 32)]
        rates: dict[str, dict[str, list[float]]] = {}
        workers: list[Worker] = []
        failed: dict[str, str] = {}
        with open(self.log_path, "a", encoding="utf-8") as log:
            try:
                for name in CONTENDERS:
                    try:
                        worker = Worker(name, cfg, self.corpus_file, log)
                        try:
                            worker.request(op="warmup")
                        except SubprocessFailed:
                            worker.close()
                            raise
                    except SubprocessFailed as exc:
                        failed[name] = str(exc)
                        print(f"  {name}: FAILED to start: {_tail(str(exc), 3)}", flush=True)
                        continue
                    print(f"  {name}: loaded in {worker.load_s:.1f} s", flush=True)
                    workers.append(worker)
                    rates[name] = {f"{s}@{b}": [] for s, b in plan}
                for repeat in range(cfg.repeats):
                    for set_name, batch in plan:
                        line = []
                        for worker in list(workers):
                            save = None
                            if repeat == 0 and batch == 32 and set_name != "sentences-sorted":
                                save = str(self.workdir / f"{worker.name}-{set_name}.npy")
                            try:
                                reply = worker.request(
                                    op="run", set=set_name, batch=batch, save=save
                                )
                            except SubprocessFailed as exc:
                                failed[worker.name] = str(exc)
                                workers.remove(worker)
                                worker.close()
                                continue
                            rate = reply["n"] / reply["seconds"]
                            rates[worker.name][f"{set_name}@{batch}"].append(rate)
                            line.append(f"{worker.name} {rate:,.0f}/s")
                        print(
                            f"  repeat {repeat + 1}/{cfg.repeats} {set_name} batch {batch}: "
                            + ", ".join(line),
                            flush=True,
                        )
            finally:
                for worker in workers:
                    worker.close()
        table: Result = {
            name: {key: spread(values) for key, values in by_key.items() if values}
            for name, by_key in rates.items()
        }
        fidelity = self._fidelity()
        result: Result = {
            "threads": cfg.threads,
            "sentences": len(self.texts),
            "long_documents": len(self.longs),
            "repeats": cfg.repeats,
            "sentences_per_s": table,
            "runs": rates,
            "fidelity": fidelity,
            "failed": failed,
        }
        with contextlib.suppress(Exception):
            plot_throughput(table, cfg.batch_sizes, cfg.out / "throughput.png")
            result["plot"] = "throughput.png"
        return result, self._throughput_markdown(result)

    def _fidelity(self) -> Result:
        out: Result = {}
        for set_name in ("sentences", "long"):
            reference_path = self.workdir / f"{REFERENCE}-{set_name}.npy"
            if not reference_path.exists():
                continue
            reference = np.load(reference_path)
            for name in CONTENDERS:
                path = self.workdir / f"{name}-{set_name}.npy"
                if path.exists():
                    out.setdefault(name, {})[set_name] = peers.cosine_stats(
                        np.load(path), reference
                    )
        return out

    def _throughput_markdown(self, result: Result) -> str:
        table: Result = result["sentences_per_s"]
        fidelity: Result = result["fidelity"]
        batch_cols = [f"sentences@{b}" for b in self.cfg.batch_sizes]
        headers = [
            "contender",
            *[f"batch {b}" for b in self.cfg.batch_sizes],
            "batch 32, corpus pre-sorted",
            "long docs @32",
            "min cos",
            "mean cos",
            "min cos (long)",
        ]
        rows = []
        for name in CONTENDERS:
            if name not in table:
                rows.append([name, *["FAILED"] * (len(headers) - 1)])
                continue
            fid = fidelity.get(name, {})
            sent, long_ = fid.get("sentences"), fid.get("long")
            rows.append(
                [
                    f"**{name}**" if name.startswith("lazyembed") else name,
                    *[fmt_spread(table[name].get(col)) for col in batch_cols],
                    fmt_spread(table[name].get("sentences-sorted@32")),
                    fmt_spread(table[name].get("long@32"), 1),
                    fmt(sent["min"], 7) if sent else "n/a",
                    fmt(sent["mean"], 7) if sent else "n/a",
                    fmt(long_["min"], 7) if long_ else "n/a",
                ]
            )
        ratios = []
        for peer in ("sentence-transformers", "fastembed"):
            ratio = throughput_ratio(table, "lazyembed-fp32", peer)
            if ratio is not None:
                ratios.append(f"lazyembed-fp32 / {peer} at batch 32: **{ratio:.2f}x**")
            ratio = throughput_ratio(table, "lazyembed-fp32", peer, "sentences-sorted@32")
            if ratio is not None:
                ratios.append(f"corpus pre-sorted by length: **{ratio:.2f}x**")
        notes = (
            f"Sentences/s, median (min-max) of {result['repeats']} interleaved repeats over "
            f"{result['sentences']} corpus sentences and {result['long_documents']} long "
            f"documents (> 256 word pieces, truncated to 256), {result['threads']} threads "
            "each. Each contender batches through its own call on the whole list "
            "(lazyembed and sentence-transformers sort by length; fastembed does not, so "
            "the batch-32 ratio to fastembed includes the padding our sorting saves). "
            "'Corpus pre-sorted': the same sentences ordered by length before the call, so "
            "every contender's batches are even; that ratio is the one of the encoders alone. "
            "Fidelity: cosine against sentence-transformers' batch-32 vectors "
            "(its own row is the reference)."
        )
        return "\n\n".join([md_table(headers, rows), "; ".join(ratios), notes]).strip()

    def ratio(self, name: str, peer: str, key: str = "sentences@32") -> float | None:
        table = self.results.get("throughput", {}).get("sentences_per_s", {})
        return throughput_ratio(table, name, peer, key)

    # ---- latency, memory, bookkeeping ---------------------------------------------------

    def reload(self) -> tuple[Result, str]:
        cfg = self.cfg
        n = f"--repeats={cfg.reload_repeats}"
        result: Result = {}
        for variant in ("fp32", "int8"):
            result[f"lazyembed-{variant}"] = lazy_bench(cfg, "reload", f"--variant={variant}", n)
        result["lazyembed-fp32-prepacked"] = lazy_bench(cfg, "reload", "--prepack", n)
        result[REFERENCE] = lazy_bench(cfg, "peer-reload", n)
        rows = []
        for name, row in result.items():
            load = row.get("lifecycle_load_ms")
            rows.append([name, fmt_spread(row["ms"], 1), fmt_spread(load, 1) if load else "—"])
        markdown = md_table(["contender", "unloaded → first vector, ms", "of which load"], rows)
        markdown += (
            f"\n\nMedian (min-max) of {cfg.reload_repeats}, warm process (imports done, files "
            "in the page cache). lazyembed: `unload_model()` then `embed()` of a new text "
            "(cache disabled), with the weights not pre-packed (what `prepack_weights = 'auto'` "
            "gives a model with an idle timeout, the one that reloads); -prepacked: "
            "`prepack_weights = true` (what a never-idle model gets: slower to load, faster "
            "calls). sentence-transformers: a fresh `SentenceTransformer(path)` + "
            "encode of one sentence. lazyembed's load column is the lifecycle's own load event "
            "(the session; the Embedder keeps its tokenizer across unloads, no warm-up run)."
        )
        return result, markdown

    def footprint(self) -> tuple[Result, str]:
        cfg = self.cfg
        result: Result = {}
        for variant in ("fp32", "int8"):
            result[f"lazyembed-{variant}"] = lazy_bench(cfg, "footprint", f"--variant={variant}")
        for peer in peers.PEERS:
            short = peers.footprint(peer, threads=cfg.threads, batch_size=32, kind="sentences")
            long_ = peers.footprint(peer, threads=cfg.threads, batch_size=64, kind="long")
            result[peer] = {
                "contender": peer,
                "imports_mb": short["imports_mb"],
                "loaded_mb": short["loaded_mb"],
                "after_batch32_mb": short["after_batch_mb"],
                "after_batch64_long_mb": long_["after_batch_mb"],
                "after_unload_mb": None,
                "raw": {"batch32": short, "batch64_long": long_},
            }
        rows = [
            [
                name,
                fmt(row["imports_mb"], 1),
                fmt(row["loaded_mb"], 1),
                fmt(row["after_batch32_mb"], 1),
                fmt(row["after_batch64_long_mb"], 1),
                fmt(row.get("after_unload_mb"), 1),
            ]
            for name, row in result.items()
        ]
        headers = [
            "contender",
            "imports",
            "loaded",
            "after batch 32",
            "after 64 long docs",
            "after unload",
        ]
        markdown = md_table(headers, rows) + (
            "\n\nMB of RSS above the pre-load point (libraries imported; lazyembed also "
            "`prepare()`d: resolved, converted, fingerprinted — no model memory), each "
            "contender in a fresh subprocess; `imports` is what importing cost over a bare "
            "interpreter. Peers have no unload call (n/a)."
        )
        return result, markdown

    def bookkeeping(self) -> tuple[Result, str]:
        cfg = self.cfg
        result = lazy_bench(
            cfg,
            "bookkeeping",
            f"--iterations={cfg.bookkeeping_iterations}",
            f"--timer-iterations={cfg.timer_iterations}",
        )
        rows = [
            ["`with lifecycle.acquire():` (loaded)", fmt_spread(result["lifecycle_us"], 3)],
            [
                "`with lifecycle.acquire(keep_alive=60):`",
                fmt_spread(result["lifecycle_keep_alive_us"], 3),
            ],
            ["new `threading.Timer` per call (seed)", fmt_spread(result["timer_per_call_us"], 1)],
            ["empty Python call (floor)", fmt_spread(result["empty_call_us"], 3)],
        ]
        markdown = md_table(["per call", "µs, median (min-max) of 5"], rows) + (
            f"\n\ntimeit, {result['iterations']:,} calls per run ({result['timer_iterations']:,} "
            "for the Timer, which starts a thread per call); a trivial fake loaded object. "
            f"Watcher wake-ups during all those calls: {result['watcher_wakeups']}."
        )
        return result, markdown

    def one_text(self) -> tuple[Result, str]:
        from bench import one_text

        rounds = 3 if self.cfg.quick else 9
        contenders = list(one_text.DEFAULT_CONTENDERS)
        env = bench_env(self.workdir)
        result = one_text.compare(contenders, rounds, self.cfg.threads, seconds=1.0, env=env)
        return result, one_text.markdown(result)

    def long_texts(self) -> tuple[Result, str]:
        from bench import long_texts

        repeats = 1 if self.cfg.quick else 3
        scenarios = list(long_texts.SCENARIOS)
        env = bench_env(self.workdir)
        result = long_texts.compare(["."], scenarios, repeats, self.cfg.threads, env=env)
        return result, long_texts.markdown(result)

    def openvino(self) -> tuple[Result, str]:
        """ONNX Runtime against OpenVINO in lazyembed's own encode path (where installed)."""
        try:
            from bench import openvino_bench
        except ImportError as exc:  # openvino not in this venv: say so, measure nothing
            return {"skipped": str(exc)}, f"Skipped: {exc} (install lazyembed[openvino])."
        result = openvino_bench.compare(2 if self.cfg.quick else 5, self.cfg.threads)
        return result, openvino_bench.markdown(result)

    def idle_cpu(self) -> tuple[Result, str]:
        cfg = self.cfg
        seconds = f"--seconds={cfg.idle_seconds}"
        result: Result = {
            kind: lazy_bench(cfg, "idle-cpu", f"--kind={kind}", seconds)
            for kind in ("lazyembed", "ort-default")
        }
        rows = [
            [
                "lazyembed fp32 (loaded, idle)",
                fmt(result["lazyembed"]["cpu_seconds"], 3),
                fmt(result["lazyembed"]["core_pct"], 2),
            ],
            [
                "raw ORT session, default options (contrast)",
                fmt(result["ort-default"]["cpu_seconds"], 3),
                fmt(result["ort-default"]["core_pct"], 2),
            ],
        ]
        markdown = md_table(["loaded model, idle", "CPU seconds", "% of one core"], rows)
        markdown += (
            f"\n\nProcess CPU time (psutil, user + system) over {cfg.idle_seconds:.0f} s of "
            "idling after one batch of 32. lazyembed watcher wake-ups meanwhile: "
            f"{result['lazyembed'].get('watcher_wakeups')}."
        )
        return result, markdown

    def cycles(self) -> tuple[Result, str]:
        cfg = self.cfg
        result = lazy_bench(cfg, "cycles", "--variant=fp32", f"-n={cfg.cycles}", timeout=3600)
        points = result["after_mb_by_cycle"]
        shown = [k for k in ("1", "10", "100", "500", str(cfg.cycles)) if k in points]
        rows = [[f"after cycle {k}", fmt(points[k], 2)] for k in shown]
        rows.append(
            [
                f"growth, cycle {result['growth_from_cycle']} → {cfg.cycles}",
                fmt(result["growth_mb"], 2),
            ]
        )
        markdown = md_table(["lazyembed fp32", "MB above pre-load"], rows) + (
            f"\n\n{cfg.cycles} cycles of load → embed one sentence → `unload_model()` in one "
            f"fresh process, {result['ms_per_cycle']:.0f} ms per cycle."
        )
        return result, markdown

    def timeline(self) -> tuple[Result, str]:
        result = lazy_bench(self.cfg, "timeline", "--idle-timeout=2", "--interval=0.02")
        plot_timeline(result, self.cfg.out / "memory_timeline.png")
        events = [
            [f"{e['t']:.2f}", e["kind"], e["reason"], fmt(e["ms"], 0), fmt(e["mb"], 1)]
            for e in result["events"]
        ]
        markdown = "![memory timeline](memory_timeline.png)\n\n" + md_table(
            ["t (s)", "event", "reason", "ms", "MB (load: +RSS, unload: returned)"], events
        )
        markdown += (
            "\n\nRSS sampled every 20 ms in a thread of the measured process: imports → "
            'first embed (load) → embeds → idle with `idle_timeout="2s"` → automatic '
            "unload → embed again (transparent reload) → idle → automatic unload."
        )
        return result, markdown

    def architectures(self) -> tuple[Result, str]:
        """MPNet, NomicBert, ModernBERT, Qwen3, Gemma3 built from their published configs
        (bench/arch_bench.py; --quick: scaled-down configs, one repeat)."""
        from bench import arch_bench

        quick = self.cfg.quick
        result = arch_bench.compare(
            list(arch_bench.ARCHS),
            repeats=1 if quick else self.cfg.repeats,
            threads=self.cfg.threads,
            tiny=quick,
            sentences=None,
            one_texts=5 if quick else 20,
            env=bench_env(self.workdir),
        )
        return result, arch_bench.markdown(result)

    # ---- cache, isolation, server --------------------------------------------------------

    def cache(self) -> tuple[Result, str]:
        cfg = self.cfg
        alone = run_python(
            ["bench/cache_bench.py", "--json", f"--seconds={cfg.cache_seconds}"], timeout=600
        )
        through = lazy_bench(
            cfg,
            "cache",
            f"--texts={cfg.cache_texts}",
            f"--miss-calls={cfg.cache_miss_calls}",
            f"--seconds={cfg.cache_seconds}",
        )
        result: Result = {"cache_alone": alone, "through_embed": through}
        rows = [
            [
                "hits/s, memory LRU",
                fmt(through["memory_embed_hits_per_s"]),
                fmt(through["memory_embed_numpy_hits_per_s"]),
                fmt(alone.get("memory_hit_per_s")),
            ],
            [
                "hits/s, SQLite",
                fmt(through["sqlite_embed_hits_per_s"]),
                fmt(through["sqlite_embed_numpy_hits_per_s"]),
                fmt(alone.get("sqlite_hit_per_s")),
            ],
        ]
        markdown = md_table(
            ["single-text calls", "`embed()`", "`embed_numpy()`", "cache alone (cache_bench.py)"],
            rows,
        )
        miss_rows = [
            ["no cache", fmt_spread(through["none_ms"], 2), "—"],
            [
                "memory LRU (miss + put)",
                fmt_spread(through["memory_miss_ms"], 2),
                fmt(through["memory_miss_overhead_pct"], 2) + " %",
            ],
            [
                "SQLite only (miss + put)",
                fmt_spread(through["sqlite_miss_ms"], 2),
                fmt(through["sqlite_miss_overhead_pct"], 2) + " %",
            ],
        ]
        markdown += "\n\n" + md_table(["miss path", "ms per call", "overhead"], miss_rows)
        stayed = through["memory_model_stayed_unloaded"] and through["sqlite_model_stayed_unloaded"]
        markdown += (
            "\n\nHits: the model was unloaded before the hits and "
            + ("stayed unloaded" if stayed else "**was loaded** (a defect)")
            + f"; best of 3 runs of {cfg.cache_seconds} s over {cfg.cache_texts} distinct "
            "texts. Miss overhead: the same new sentence through an Embedder without cache, "
            f"with the memory LRU and with SQLite, rotating order, {cfg.cache_miss_calls} "
            "sentences; the median of per-sentence time ratios minus 1 (noise of a few % on "
            "a shared machine)."
        )
        return result, markdown

    def isolation(self) -> tuple[Result, str]:
        script = ROOT / "bench" / "isolation_bench.py"
        if not script.exists():  # HOOK: bench/isolation_bench.py not written yet
            return {
                "skipped": "bench/isolation_bench.py missing"
            }, "_Not measured: bench/isolation_bench.py is missing._"
        argv = ["bench/isolation_bench.py", "--json", f"--threads={self.cfg.threads}"]
        if self.cfg.quick:
            argv.append("--quick")
        result = run_python(argv, timeout=1200, whole_stdout=True)
        modes, spreads = result["results"], result["spread"]
        labels = (
            ("batch1_ms", "batch 1, ms per call", 2),
            ("batch32_ms", "batch 32, ms per call", 1),
            ("texts_per_s", "throughput, texts/s (batch 32)", 0),
            ("reload_ms", "reload → first vector, ms", 0),
        )
        rows = []
        for key, label, digits in labels:
            inproc, iso = modes["in-process"][key], modes["isolated"][key]
            rows.append(
                [
                    label,
                    fmt_spread(spreads["in-process"][key], digits),
                    fmt_spread(spreads["isolated"][key], digits),
                    f"{iso - inproc:+,.{digits}f}",
                ]
            )
        markdown = md_table(["", "in-process", "isolated", "difference"], rows) + (
            f"\n\nFrom bench/isolation_bench.py: median (min-max) of {result['calls']} calls, "
            f"{result['passes']} throughput passes and {result['reloads']} reloads per mode, "
            "the two modes interleaved (A B, B A, ...); the fork server pre-started."
        )
        return result, markdown

    def daemon(self) -> tuple[Result, str]:
        """The shared daemon against in-process models (bench/daemon_bench.py, issue 20)."""
        argv = ["bench/daemon_bench.py", "--json", f"--threads={self.cfg.threads}"]
        if self.cfg.quick:
            argv.append("--quick")
        result = run_python(argv, timeout=1800)
        sys.path.insert(0, str(ROOT / "bench"))
        from daemon_bench import table

        markdown = table(result) + (
            "\n\nFrom bench/daemon_bench.py: one text per call with the model loaded "
            f"(medians, {result['one_text']['calls_each']} calls each, interleaved rounds); "
            f"{result['clients']} processes embedding one text at a time together; "
            "`lazyembed embed` wall time, warm daemon vs `--share never`; PSS of "
            f"{result['clients']} long-running clients after their one-text calls (the "
            "daemon's own PSS included). Embedding cache off on both sides."
        )
        return result, markdown

    def server(self) -> tuple[Result, str]:
        cfg = self.cfg
        library = (
            self.results.get("throughput", {})
            .get("sentences_per_s", {})
            .get("lazyembed-fp32", {})
            .get("sentences@32")
        )
        texts = (self.texts * (1 + cfg.server_requests // max(1, len(self.texts))))[
            : cfg.server_requests
        ]
        port = _free_port()
        env = dict(os.environ)
        env.update(
            LAZYEMBED_CACHE_MEMORY_MB="0",
            LAZYEMBED_INTRA_OP_THREADS=str(cfg.threads),
            LAZYEMBED_IDLE_TIMEOUT="never",
        )
        command = [
            sys.executable,
            "-m",
            "lazyembed.cli",
            "serve",
            "--host=127.0.0.1",
            f"--port={port}",
            "--log-level=warning",
        ]
        base = f"http://127.0.0.1:{port}"
        texts_file = self.workdir / "server-texts.json"
        texts_file.write_text(json.dumps(texts), encoding="utf-8")
        fed = lazy_bench(
            cfg,
            "library-calls",
            f"--corpus-file={texts_file}",
            f"--call-size={SERVER_CLIENTS}",
            f"--repeats={cfg.server_repeats}",
        )["sentences_per_s"]
        with open(self.log_path, "a", encoding="utf-8") as log:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
            try:
                _wait_healthy(base, proc, timeout=120.0)
                batch_before = _batch_metrics(base)
                rates = []
                # Warm-up: loads the model and meets every batch shape once.
                asyncio.run(_drive(base, texts[:64], SERVER_CLIENTS, timeout=300.0))
                for repeat in range(cfg.server_repeats):
                    seconds = asyncio.run(_drive(base, texts, SERVER_CLIENTS, timeout=600.0))
                    rates.append(len(texts) / seconds)
                    print(
                        f"  server repeat {repeat + 1}/{cfg.server_repeats}: "
                        f"{rates[-1]:,.0f} sentences/s",
                        flush=True,
                    )
                batch_after = _batch_metrics(base)
                # One client, one sentence per request: the call an editor or agent makes.
                lone_texts = texts[:LONE_CLIENT_TEXTS]
                lone = [
                    len(lone_texts) / asyncio.run(_drive(base, lone_texts, 1, timeout=300.0))
                    for _ in range(cfg.server_repeats)
                ]
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        count = batch_after[1] - batch_before[1]
        mean_batch = (batch_after[0] - batch_before[0]) / count if count else None
        stats = spread(rates)
        fraction = stats["median"] / library["median"] if library else None
        fraction_fed = stats["median"] / fed["median"]
        result: Result = {
            "clients": SERVER_CLIENTS,
            "requests": len(texts),
            "repeats": cfg.server_repeats,
            "sentences_per_s": stats,
            "library_batch32_sentences_per_s": library,
            "fraction_of_library": fraction,
            "library_calls_of_clients_sentences_per_s": fed,
            "fraction_of_library_fed_like_server": fraction_fed,
            "mean_model_batch": mean_batch,
            "lone_client_requests_per_s": spread(lone),
            "server_exit_code": proc.returncode,
        }
        rows = [
            [
                f"server, {SERVER_CLIENTS} clients, one sentence per request",
                fmt_spread(stats),
            ],
            ["library, batch 32 (throughput table)", fmt_spread(library)],
            ["server / library", f"{100 * fraction:.0f} %" if fraction else "n/a"],
            [
                f"library fed like the server: calls of {SERVER_CLIENTS} texts in arrival order",
                fmt_spread(fed),
            ],
            ["server / library fed like the server", f"{100 * fraction_fed:.0f} %"],
            ["server, 1 client, one sentence per request (requests/s)", fmt_spread(spread(lone))],
        ]
        markdown = md_table(["lazyembed fp32", "sentences/s"], rows) + (
            f"\n\n`lazyembed serve` on 127.0.0.1 (cache off, {cfg.threads} threads), "
            f"{len(texts)} `POST /v1/embeddings` requests per repeat from {SERVER_CLIENTS} "
            "concurrent keep-alive HTTP/1.1 clients (one asyncio loop in the runner, on the "
            "same cores; base64 vectors, as the openai client asks); "
            f"median (min-max) of {cfg.server_repeats}. Mean model batch formed by the "
            f"server: {fmt(mean_batch, 1)} inputs. The throughput table's batch-32 figure "
            "embeds the whole corpus in one call, sorted by length; a server only ever sees "
            "the texts its clients have sent, so the second comparison feeds the library "
            "the same stream, one call per "
            f"{SERVER_CLIENTS} texts. The lone client sends "
            f"{min(LONE_CLIENT_TEXTS, len(texts))} requests in turn, "
            "each after the last answer."
        )
        return result, markdown


def throughput_ratio(
    table: Result, name: str, peer: str, key: str = "sentences@32"
) -> float | None:
    """name's median sentences/s over peer's, or None when either is missing."""
    try:
        return float(table[name][key]["median"]) / float(table[peer][key]["median"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SubprocessFailed(f"lazyembed serve exited with {proc.returncode}; see the log")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise SubprocessFailed(f"lazyembed serve not healthy after {timeout:.0f} s")


def _batch_metrics(base: str) -> tuple[float, float]:
    """(sum, count) of the server's lazyembed_batch_size histogram."""
    import httpx

    total = count = 0.0
    text = httpx.get(f"{base}/metrics", timeout=10.0).text
    for line in text.splitlines():
        if line.startswith("lazyembed_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("lazyembed_batch_size_count"):
            count = float(line.split()[-1])
    return total, count


async def _drive(base: str, texts: Sequence[str], clients: int, timeout: float) -> float:
    """Seconds for `clients` concurrent clients to send every text, one per request.

    Each client is a bare keep-alive HTTP/1.1 connection with pre-encoded requests: an
    httpx client spends more CPU per request than the server does, and here it shares the
    same two cores, so it would measure the client. Bodies ask for base64 vectors, the
    default of the official openai client.
    """
    import base64

    host, port = base.removeprefix("http://").split(":")
    pending = iter(texts)

    def request(text: str) -> bytes:
        body = json.dumps({"input": text, "encoding_format": "base64"}).encode("utf-8")
        head = (
            f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("ascii") + body

    async def one_client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for text in pending:  # shared iterator: one event loop, no lock needed
                writer.write(request(text))
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b" ", 2)[1]
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                if status != b"200":
                    raise SubprocessFailed(f"server answered {status!r}: {body[:200]!r}")
                vector = base64.b64decode(json.loads(body)["data"][0]["embedding"])
                if len(vector) != 4 * peers.DIM:
                    raise SubprocessFailed("server returned a vector of the wrong size")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one_client() for _ in range(clients))), timeout)
    return time.perf_counter() - started


# ---- plots ----------------------------------------------------------------------------------


def plot_throughput(table: Result, batch_sizes: Sequence[int], path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    names = [name for name in CONTENDERS if name in table]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        medians, low, high = [], [], []
        for b in batch_sizes:
            stats = table[name].get(f"sentences@{b}", {"median": 0, "min": 0, "max": 0})
            medians.append(stats["median"])
            low.append(stats["median"] - stats["min"])
            high.append(stats["max"] - stats["median"])
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(batch_sizes))]
        ax.bar(xs, medians, width, yerr=[low, high], capsize=3, label=name)
    ax.set_xticks(range(len(batch_sizes)), [f"batch {b}" for b in batch_sizes])
    ax.set_ylabel("sentences / s (median, min-max)")
    ax.set_title("Throughput by batch size (same corpus, same threads)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_timeline(result: Result, path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    samples = result["samples"]
    ts = [s[0] for s in samples]
    rss = [s[1] for s in samples]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(ts, rss, lw=1.5, color="tab:blue")
    top = max(rss) * 1.12
    phases = result["phases"]
    for i, (t, label) in enumerate(phases[:-1]):
        end = phases[i + 1][0]
        ax.axvspan(t, end, color="grey" if i % 2 else "white", alpha=0.12)
        ax.text(t + 0.05, top * 0.97, label.strip(), fontsize=7, va="top", rotation=90)
    for event in result["events"]:
        color = "tab:green" if event["kind"] == "load" else "tab:red"
        # An event is stamped when the transition ENDS; shade its duration before that.
        ax.axvspan(event["t"] - event["ms"] / 1000.0, event["t"], color=color, alpha=0.25)
        ax.axvline(event["t"], color=color, ls="--", lw=1)
        sign = "+" if event["kind"] == "load" else "-"
        ax.annotate(
            f"{event['kind']} ({event['reason']})\n"
            f"{event['ms']:.0f} ms, {sign}{event['mb']:.0f} MB",
            (event["t"], min(rss) + 0.5 * (max(rss) - min(rss))),
            fontsize=7,
            color=color,
            xytext=(4, 0),
            textcoords="offset points",
        )
    ax.set_ylim(0, top)
    ax.set_xlabel("seconds")
    ax.set_ylabel("process RSS (MB)")
    ax.set_title(
        f"lazyembed memory timeline (idle_timeout={result['idle_timeout_s']:g} s, "
        f"sampled every {1000 * result['interval_s']:.0f} ms)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- the report -----------------------------------------------------------------------------


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(cfg: Config) -> Result:
    info: Result = dict(peers.machine())
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / (1 << 20), 1)
    info["kernel"] = platform.release()
    info["threads_used"] = cfg.threads
    info["load_average_at_start"] = os.getloadavg()
    return info


def describe_versions() -> Result:
    found: Result = dict(peers.versions())
    for name in ("lazyembed", "matplotlib", "httpx", "fastapi", "uvicorn"):
        found[name] = _version(name)
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    found["git_commit"] = git.stdout.strip() or None
    return found


@dataclass(frozen=True)
class Target:
    """One goal of issues 4-7: `value` must be >= (or <=) `goal`."""

    name: str
    at_least: bool
    goal: float
    unit: str
    value: float | None
    shown: str = ""

    def row(self) -> list[str]:
        goal = f"{'>=' if self.at_least else '<='} {self.goal:,g}{self.unit}"
        if self.value is None:
            return [self.name, goal, "n/a", "not measured", ""]
        passes = self.value >= self.goal if self.at_least else self.value <= self.goal
        number = f"{self.value:,.0f}" if abs(self.value) >= 1000 else f"{self.value:.3g}"
        shown = self.shown or f"{number}{self.unit}"
        margin = f"{self.value / self.goal:.2f}x the goal" if self.goal else ""
        return [self.name, goal, shown, "**PASS**" if passes else "**MISS**", margin]


def targets(run: Run) -> str:
    """The PASS/MISS table; a MISS shows by how much (measured / goal)."""

    def get(*keys: str) -> Any:
        node: Any = run.results
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    st_ms = get("reload", REFERENCE, "ms", "median")
    timer = get("bookkeeping", "timer_per_call_us", "median")
    cycles = get("cycles", "cycles") or run.cfg.cycles
    server = get("server", "fraction_of_library")
    server_fed = get("server", "fraction_of_library_fed_like_server")
    fid = get("throughput", "fidelity", "lazyembed-fp32", "sentences", "min")
    ratios = get("one_text", "ratio_to_fastembed", "lazyembed")
    one_text_ratio = statistics.median(ratios) if ratios else None
    rows = [
        Target(
            "fp32 throughput, batch 32, vs sentence-transformers",
            True,
            1.5,
            "x",
            run.ratio("lazyembed-fp32", "sentence-transformers"),
        ),
        Target(
            "fp32 throughput, batch 32, vs fastembed (lazyembed sorts by length, fastembed not)",
            True,
            2.0,
            "x",
            run.ratio("lazyembed-fp32", "fastembed"),
        ),
        Target(
            "fp32 throughput, batch 32, vs fastembed, corpus pre-sorted by length for both",
            True,
            2.0,
            "x",
            run.ratio("lazyembed-fp32", "fastembed", "sentences-sorted@32"),
        ),
        Target(
            "fp32 fidelity, min cosine vs sentence-transformers",
            True,
            0.99999,
            "",
            fid,
            fmt(fid, 7),
        ),
        Target(
            "one short text per call vs fastembed (calls/s, per-round ratio)",
            True,
            1.2,
            "x",
            one_text_ratio,
        ),
        Target(
            "reload latency fp32, median",
            False,
            25,
            " ms",
            get("reload", "lazyembed-fp32", "ms", "median"),
            f"{fmt(get('reload', 'lazyembed-fp32', 'ms', 'median'), 1)} ms "
            f"(sentence-transformers {fmt(st_ms, 0)} ms)",
        ),
        Target(
            "footprint fp32 after batch 32, above pre-load",
            False,
            120,
            " MB",
            get("footprint", "lazyembed-fp32", "after_batch32_mb"),
        ),
        Target(
            "RSS after unload, above pre-load",
            False,
            20,
            " MB",
            get("footprint", "lazyembed-fp32", "after_unload_mb"),
        ),
        Target(
            f"RSS growth over {cycles} load/unload cycles",
            False,
            5,
            " MB",
            get("cycles", "growth_mb"),
        ),
        Target(
            "lifecycle bookkeeping per call",
            False,
            1,
            " µs",
            get("bookkeeping", "lifecycle_us", "median"),
            f"{fmt(get('bookkeeping', 'lifecycle_us', 'median'), 3)} µs "
            f"(Timer per call: {fmt(timer, 0)} µs)",
        ),
        Target(
            "idle CPU of a loaded model (~0)",
            False,
            1,
            " % of a core",
            get("idle_cpu", "lazyembed", "core_pct"),
        ),
        Target(
            "cache hits via embed(), memory",
            True,
            100_000,
            "/s",
            get("cache", "through_embed", "memory_embed_hits_per_s"),
        ),
        Target(
            "cache hits via embed(), SQLite",
            True,
            20_000,
            "/s",
            get("cache", "through_embed", "sqlite_embed_hits_per_s"),
        ),
        Target(
            "cache miss-path overhead (memory LRU)",
            False,
            2,
            " %",
            get("cache", "through_embed", "memory_miss_overhead_pct"),
        ),
        Target(
            "isolated reload latency",
            False,
            400,
            " ms",
            get("isolation", "results", "isolated", "reload_ms"),
        ),
        Target(
            "daemon: one text per call, extra over in-process (median)",
            False,
            1,
            " ms",
            get("daemon", "one_text", "extra_ms"),
        ),
        Target(
            "daemon: 8 processes one text at a time, vs in-process",
            True,
            1.3,
            "x",
            get("daemon", "throughput", "ratio"),
        ),
        Target(
            "daemon: `lazyembed embed` warm, vs in-process CLI",
            False,
            0.33,
            "x",
            get("daemon", "cli", "ratio"),
        ),
        Target(
            "daemon: PSS of 8 clients + daemon, vs in-process",
            False,
            40,
            " %",
            None
            if get("daemon", "pss", "ratio") is None
            else 100.0 * get("daemon", "pss", "ratio"),
        ),
        Target(
            f"server ({SERVER_CLIENTS} clients) vs library batch 32",
            True,
            90,
            " %",
            None if server is None else 100.0 * server,
        ),
        Target(
            f"server ({SERVER_CLIENTS} clients) vs library fed the same stream",
            True,
            90,
            " %",
            None if server_fed is None else 100.0 * server_fed,
        ),
    ]
    return md_table(
        ["target (issues 4-7, 14, 20)", "goal", "measured", "verdict", "measured / goal"],
        [target.row() for target in rows],
    )


def write_report(run: Run, started: datetime.datetime, seconds: float, argv: Sequence[str]) -> Path:
    cfg = run.cfg
    meta = run.results["meta"]
    machine, versions = meta["machine"], meta["versions"]
    lines = [
        "# lazyembed benchmarks",
        "",
        "Generated by `make bench` (bench/run.py); do not edit by hand."
        + (
            " **QUICK SMOKE RUN: small corpus, few repeats — not representative.**"
            if cfg.quick
            else ""
        ),
        "",
        f"- Command: `{' '.join(argv)}` (from the repository root, in .venv-bench)",
        f"- Date: {started.isoformat(timespec='seconds')}; took {seconds / 60:.1f} min",
        f"- Machine: {machine.get('cpu')}, {machine.get('usable_cores')} usable cores "
        f"({machine.get('cpu_count')} total), {machine.get('memory_gb')} GB RAM, Linux "
        f"{machine.get('kernel')}; load average at start "
        + ", ".join(f"{x:.2f}" for x in machine.get("load_average_at_start", []))
        + f", at end {', '.join(f'{x:.2f}' for x in meta.get('load_average_at_end', []))}",
        f"- Threads for every contender: {cfg.threads}; TOKENIZERS_PARALLELISM=false for all",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None),
        f"- Corpus: {meta['corpus']}: {len(run.texts)} sentences of 5-60 words, "
        f"{len(run.longs)} long documents",
        "",
        "## Targets",
        "",
        targets(run),
        "",
    ]
    if run.errors:
        lines += ["## Failed sections", ""]
        lines += [f"- {key}: `{_tail(message, 3)}`" for key, message in run.errors.items()]
        lines.append("")
    for title, markdown in run.sections:
        lines += [f"## {title}", "", markdown, ""]
    lines += ["Raw figures: `benchmarks.json` next to this file."]
    path = cfg.out / "benchmarks.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- main ------------------------------------------------------------------------------------


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small corpus, few repeats")
    parser.add_argument(
        "--threads", type=int, default=_default_threads(), help="for every contender"
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default docs/, --quick: a temp dir)"
    )
    parser.add_argument("--sentences", type=int, help="corpus size (default 2000, --quick 64)")
    parser.add_argument("--repeats", type=int, help="timing repeats (default 3, --quick 2)")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument(
        "--only",
        help="comma-separated sections to run (default all): " + ",".join(SECTION_KEYS),
    )
    args = parser.parse_args(argv)
    cfg = make_config(args)
    only = set(args.only.split(",")) if args.only else set(SECTION_KEYS)
    unknown = only - set(SECTION_KEYS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    command = ["python", "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]

    with bench_lock(), tempfile.TemporaryDirectory(prefix="lazyembed-bench-") as tmp:
        workdir = Path(tmp)
        os.environ.clear()
        os.environ.update(bench_env(workdir))  # every subprocess inherits it
        started = datetime.datetime.now(datetime.timezone.utc)
        clock = time.perf_counter()
        load = os.getloadavg()[0]
        print(
            f"lazyembed benchmark ({'quick' if cfg.quick else 'full'}), {cfg.threads} threads, "
            f"output in {cfg.out}"
        )
        if load > 0.5 * (os.cpu_count() or 1):
            print(f"WARNING: load average {load:.2f}: the machine is busy; figures will be noisy")
        run = Run(cfg, workdir)
        run.results["meta"] = {
            "machine": machine_info(cfg),
            "versions": describe_versions(),
            "corpus": corpus.source_description(),
            "command": command,
            "date": started.isoformat(),
        }
        print(json.dumps(run.results["meta"], indent=1))
        run.section("setup", "Setup (conversion, peer export)", lambda: _setup(cfg))
        for key, title, measure in sections(run):
            if key in only:
                run.section(key, title, measure)
        seconds = time.perf_counter() - clock
        run.results["meta"]["load_average_at_end"] = os.getloadavg()
        run.results["meta"]["seconds"] = seconds
        run.save_json()
        report = write_report(run, started, seconds, command)
    print(f"\n## Targets\n\n{targets(run)}\n")
    print(f"wrote {report}, {cfg.out / 'benchmarks.json'} in {seconds / 60:.1f} min")
    if run.errors:
        print(f"FAILED sections: {', '.join(run.errors)}", file=sys.stderr)
        return 1
    return 0


def _setup(cfg: Config) -> tuple[Result, str]:
    """Convert both variants and export fastembed's model before anything is timed."""
    result: Result = {
        variant: lazy_bench(cfg, "prepare", f"--variant={variant}") for variant in ("fp32", "int8")
    }
    result["fastembed_model"] = str(peers.ensure_fastembed_model())
    rows = [[v, result[v]["onnx_path"], fmt(result[v]["onnx_mb"], 1)] for v in ("fp32", "int8")]
    return result, md_table(["variant", "converted ONNX", "MB"], rows)


SECTION_KEYS = (
    "bookkeeping",
    "footprint",
    "reload",
    "one_text",
    "long_texts",
    "openvino",
    "idle_cpu",
    "throughput",
    "server",
    "cache",
    "isolation",
    "daemon",
    "cycles",
    "timeline",
    "architectures",
)


def sections(run: Run) -> list[tuple[str, str, Callable[[], tuple[Result, str]]]]:
    return [
        ("bookkeeping", "Lifecycle bookkeeping per call", run.bookkeeping),
        ("footprint", "Loaded footprint (fresh subprocesses)", run.footprint),
        ("reload", "Reload latency", run.reload),
        ("one_text", "One short text per call (issue 14.1)", run.one_text),
        ("long_texts", "Long texts: peak memory and docs/s", run.long_texts),
        ("openvino", "OpenVINO backend against ONNX Runtime (issue 14.2)", run.openvino),
        ("idle_cpu", "Idle CPU of a loaded model", run.idle_cpu),
        ("throughput", "Throughput and fidelity", run.throughput),
        ("server", "Server throughput (issue 5)", run.server),
        ("cache", "Embedding cache (issue 6)", run.cache),
        ("isolation", "Isolated worker vs in-process (issue 7)", run.isolation),
        ("daemon", "Shared daemon vs in-process (issue 20)", run.daemon),
        ("cycles", "RSS over load/unload cycles", run.cycles),
        ("timeline", "Memory timeline", run.timeline),
        (
            "architectures",
            "The 2026 architectures at published size, random weights (issues 21, 22)",
            run.architectures,
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
