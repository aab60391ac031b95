"""The shared daemon against in-process models (issue 20): latency, throughput, CLI, PSS.

Not run in CI (timings need a quiet machine); ``make bench`` runs it as the "daemon"
section, or by hand:

    python bench/daemon_bench.py [--quick] [--json] [--threads N] [--clients 8]

Every daemon lives in a private XDG_RUNTIME_DIR (a temporary folder) and is stopped at
the end. The embedding cache is off everywhere (``LAZYEMBED_CACHE_MEMORY_MB=0``), so
every call computes; every text is new. Rows:

* one text per call, model loaded: median latency in-process vs through the daemon, the
  two interleaved in rounds (a round = ``--calls`` calls of each);
* ``--clients`` processes each embedding one text at a time, all together, for
  ``--seconds``: total calls/s with one in-process model each vs one daemon;
* ``lazyembed embed "text"`` from a shell: wall time with a warm daemon (the CLI's
  default) vs ``--share never``, interleaved, median of ``--cli-runs``;
* memory: ``--clients`` long-running processes, each after ``--pss-calls`` one-text calls:
  the sum of their PSS (plus the daemon's) vs in-process.

The worker mode (``--worker``) is what each client process runs; it imports nothing but
lazyembed, so a daemon client stays as thin as a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "one_text_extra_ms": 1.0,  # daemon minus in-process, median
    "throughput_ratio": 1.3,  # daemon / in-process, N clients together
    "cli_ratio": 1 / 3,  # warm-daemon CLI / in-process CLI, wall time
    "pss_ratio": 0.40,  # daemon (+ clients) / in-process clients, PSS
}


def text(who: int, i: int) -> str:
    """A new sentence every call (the cache is off anyway)."""
    return f"Client {who} asks question {i}: which process holds the embedding model now?"


# ---- the client process ---------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """One client: warm up, say "ready", then run what the parent's stdin says."""
    import lazyembed

    embedder = lazyembed.Embedder(share=args.share)  # threads: LAZYEMBED_INTRA_OP_THREADS
    for i in range(args.pss_calls):
        embedder.embed(text(args.who, -1 - i))
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":  # one text at a time for --seconds
            calls, deadline = 0, time.perf_counter() + args.seconds
            while time.perf_counter() < deadline:
                embedder.embed(text(args.who, calls))
                calls += 1
            print(json.dumps({"calls": calls}), flush=True)
        elif command == "exit":
            break
    shared = bool(getattr(embedder, "shared", False))
    embedder.close()
    heavy = [m for m in ("onnxruntime", "tokenizers", "numpy") if m in sys.modules]
    print(json.dumps({"shared": shared, "heavy_modules": heavy}), flush=True)
    return 0


class Client:
    """A worker process driven through its stdin/stdout."""

    def __init__(self, who: int, share: str, cfg: argparse.Namespace, env: dict[str, str]):
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            f"--who={who}",
            f"--share={share}",
            f"--seconds={cfg.seconds}",
            f"--pss-calls={cfg.pss_calls}",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.proc.pid} exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        self.send("exit")
        result = self.read()
        self.proc.wait(timeout=60)
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def clients(
    n: int, share: str, cfg: argparse.Namespace, env: dict[str, str]
) -> Iterator[list[Client]]:
    started = [Client(i, share, cfg, env) for i in range(n)]
    try:
        for client in started:
            client.read()  # ready
        yield started
    finally:
        for client in started:
            client.kill()


# ---- measurements ---------------------------------------------------------------------


def one_text(cfg: argparse.Namespace) -> dict[str, Any]:
    """Median ms of one text per call, in-process vs the daemon, interleaved rounds."""
    import lazyembed

    local = lazyembed.Embedder(share="never")
    shared = lazyembed.Embedder(share="always")
    if not getattr(shared, "shared", False):
        raise RuntimeError("share='always' did not reach a daemon")
    times: dict[str, list[float]] = {"in-process": [], "daemon": []}
    counter = 0
    for embedder in (local, shared):  # loaded, and past the pre-packing switch
        for _ in range(40):
            counter += 1
            embedder.embed(text(0, counter))
    for _ in range(cfg.rounds):
        for name, embedder in (("in-process", local), ("daemon", shared)):
            for _ in range(cfg.calls):
                counter += 1
                started = time.perf_counter()
                embedder.embed(text(0, counter))
                times[name].append((time.perf_counter() - started) * 1000)
    local.close()
    shared.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "ms": medians,
        "extra_ms": medians["daemon"] - medians["in-process"],
        "calls_each": len(times["daemon"]),
    }


def throughput(cfg: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Total calls/s of N processes embedding one text at a time, all at once."""
    result: dict[str, Any] = {}
    for name, share in (("in-process", "never"), ("daemon", "always")):
        rates = []
        with clients(cfg.clients, share, cfg, env) as running:
            for _ in range(cfg.repeats):
                for client in running:
                    client.send("run")
                calls = sum(client.read()["calls"] for client in running)
                rates.append(calls / cfg.seconds)
            ends = [client.finish() for client in running]
        result[name] = {"calls_per_s": statistics.median(rates), "runs": rates}
        result[name]["heavy_modules"] = sorted({m for e in ends for m in e["heavy_modules"]})
    result["ratio"] = result["daemon"]["calls_per_s"] / result["in-process"]["calls_per_s"]
    result["ceiling"] = batching_ceiling(cfg)
    result["ceiling_ratio"] = result["ceiling"]["texts_per_s"] / result["in-process"]["calls_per_s"]
    return result


def batching_ceiling(cfg: argparse.Namespace) -> dict[str, Any]:
    """What merging buys at most: one process, no daemon, ``--clients`` texts per call
    (the best batch the daemon can form), texts/s. Divided by the in-process figure it
    bounds the daemon's throughput ratio on this machine and model."""
    import lazyembed

    embedder = lazyembed.Embedder(share="never")  # the worker's settings, from the env
    size, counter, rates = cfg.clients, 0, []
    for _ in range(40):  # loaded and past the pre-packing switch, as the workers are
        counter += 1
        embedder.embed_numpy([text(who, -counter) for who in range(size)])
    for _ in range(cfg.repeats):
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < cfg.seconds:
            counter += 1
            embedder.embed_numpy([text(who, counter) for who in range(size)])
            calls += 1
        rates.append(calls * size / (time.perf_counter() - started))
    embedder.close()
    return {"texts_per_call": size, "texts_per_s": statistics.median(rates), "runs": rates}


def cli(cfg: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Wall time of ``lazyembed embed "text"``: warm daemon vs in-process, interleaved."""
    base = [sys.executable, "-m", "lazyembed", "embed", "--quiet"]
    times: dict[str, list[float]] = {"in-process": [], "daemon": []}
    runs = [("daemon", []), ("in-process", ["--share", "never"])]
    subprocess.run([*base, "warm the daemon up"], env=env, check=True, capture_output=True)
    for i in range(cfg.cli_runs):
        for name, extra in runs:
            started = time.perf_counter()
            subprocess.run(
                [*base, *extra, f"a command-line text, run {i}"],
                env=env,
                check=True,
                capture_output=True,
            )
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    return {"ms": medians, "ratio": medians["daemon"] / medians["in-process"]}


def pss(
    cfg: argparse.Namespace, env: dict[str, str], daemon_pid: Callable[[], int]
) -> dict[str, Any]:
    """PSS of N long-running clients after their calls, daemon (+ its own) vs in-process."""
    import psutil

    def pss_mb(pid: int) -> float:
        return float(psutil.Process(pid).memory_full_info().pss) / 2**20

    result: dict[str, Any] = {}
    for name, share in (("in-process", "never"), ("daemon", "always")):
        with clients(cfg.clients, share, cfg, env) as running:
            time.sleep(1.0)  # let allocator trims and page-outs settle
            each = [pss_mb(client.proc.pid) for client in running]
            entry: dict[str, Any] = {"clients_mb": sum(each), "each_mb": each}
            if share == "always":
                entry["daemon_mb"] = pss_mb(daemon_pid())
            entry["total_mb"] = entry["clients_mb"] + entry.get("daemon_mb", 0.0)
            for client in running:
                client.finish()
        result[name] = entry
    result["ratio"] = result["daemon"]["total_mb"] / result["in-process"]["total_mb"]
    return result


# ---- the run --------------------------------------------------------------------------


def private_env(root: Path, threads: int) -> dict[str, str]:
    """This process's env with a private runtime/state folder and no cache. The thread
    count goes by env too, so that every client (the CLI included) sends the same
    per-request options and the daemon holds one model, not one per option set."""
    run = root / "run"
    run.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "LAZYEMBED_SHARE"}
    env.update(
        XDG_RUNTIME_DIR=str(run),
        XDG_STATE_HOME=str(root / "state"),
        LAZYEMBED_CACHE_MEMORY_MB="0",
        TOKENIZERS_PARALLELISM="false",
    )
    if threads:
        env["LAZYEMBED_INTRA_OP_THREADS"] = str(threads)
    if (ROOT / "src" / "lazyembed").is_dir():  # a source checkout: its code, installed or not
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])]
        )
    return env


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="le-bench-", dir="/tmp"))  # short socket paths
    env = private_env(root, cfg.threads)
    os.environ.clear()
    os.environ.update(env)  # the daemon this process starts inherits it
    from lazyembed.daemon import spawn
    from lazyembed.daemon.paths import daemon_paths

    paths = daemon_paths()

    def daemon_pid() -> int:
        return int(spawn.call(paths.socket, "status")["pid"])

    try:
        result: dict[str, Any] = {"threads": cfg.threads, "clients": cfg.clients}
        result["one_text"] = one_text(cfg)
        result["throughput"] = throughput(cfg, env)
        result["cli"] = cli(cfg, env)
        result["pss"] = pss(cfg, env, daemon_pid)
        result["daemon_status"] = spawn.call(paths.socket, "status")
        result["targets"] = TARGETS
        return result
    finally:
        try:
            pid = daemon_pid()
            spawn.call(paths.socket, "stop")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, 9)
        except OSError:
            pass  # no daemon answers: nothing to stop
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def table(result: dict[str, Any]) -> str:
    one, thr, cli_, mem = result["one_text"], result["throughput"], result["cli"], result["pss"]
    n = result["clients"]
    rows = [
        (
            "one text per call, median ms",
            one["ms"]["in-process"],
            one["ms"]["daemon"],
            f"{one['extra_ms']:+.3f} ms (target <= +1 ms)",
        ),
        (
            f"{n} processes together, calls/s",
            thr["in-process"]["calls_per_s"],
            thr["daemon"]["calls_per_s"],
            f"{thr['ratio']:.2f}x (target >= 1.3x)",
        ),
        (
            f"ceiling: one process, {n} texts per call, texts/s",
            thr["in-process"]["calls_per_s"],
            thr["ceiling"]["texts_per_s"],
            f"{thr['ceiling_ratio']:.2f}x: no merging can beat this",
        ),
        (
            '`lazyembed embed "text"`, wall ms',
            cli_["ms"]["in-process"],
            cli_["ms"]["daemon"],
            f"{cli_['ratio']:.2f} (target <= 0.33)",
        ),
        (
            f"PSS of {n} clients (+ daemon), MB",
            mem["in-process"]["total_mb"],
            mem["daemon"]["total_mb"],
            f"{mem['ratio']:.0%} (target <= 40 %)",
        ),
    ]
    lines = ["| | in-process | daemon | daemon vs in-process |", "|---|---:|---:|---|"]
    for label, inproc, daemon, ratio in rows:
        lines.append(f"| {label} | {inproc:,.2f} | {daemon:,.2f} | {ratio} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=50, help="one-text calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs")
    parser.add_argument("--cli-runs", type=int, default=9)
    parser.add_argument("--pss-calls", type=int, default=40)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--who", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--share", default="never", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.clients, args.calls, args.rounds = min(args.clients, 3), 5, 2
        args.seconds, args.repeats, args.cli_runs, args.pss_calls = 1.0, 1, 2, 5
    result = run(args)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
