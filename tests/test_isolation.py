"""Isolated-process mode with the real converted model and real ONNX Runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from lazyembed import isolation
from lazyembed.errors import ModelLoadError, WorkerDiedError
from lazyembed.isolation import IsolatedRuntime, load_isolated
from lazyembed.models.convert import ensure_onnx
from lazyembed.models.info import read_model_info
from lazyembed.runtime import RuntimeSpec, load_runtime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

CORPUS = Path(__file__).parent / "fixtures" / "reference_corpus.json"


def corpus() -> list[str]:
    data = json.loads(CORPUS.read_text())
    texts = data if isinstance(data, list) else next(iter(data.values()))
    return [t if isinstance(t, str) else str(t["text"]) for t in texts]


@pytest.fixture(scope="module")
def spec(model_dir: Path, session_dir: Path) -> RuntimeSpec:
    converted = ensure_onnx(model_dir, variant="fp32", cache_dir=session_dir / "cache")
    info = read_model_info(model_dir)
    return RuntimeSpec(
        onnx_path=str(converted.path),
        tokenizer_path=str(model_dir / "tokenizer.json"),
        max_seq_length=info.max_seq_length,
        dimension=info.dimension,
        threads=2,
        batch_size=32,
        normalize=info.normalize,
    )


@pytest.fixture
def runtime(spec: RuntimeSpec) -> Iterator[IsolatedRuntime]:
    rt = load_isolated(spec)
    yield rt
    rt.close()


def gone_or_reaped(pid: int) -> bool:
    """True when `pid` no longer exists (a zombie still exists, so it counts as not gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    deadline = time.monotonic() + seconds
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if not gone_or_reaped(p)]
        if left:
            time.sleep(0.05)
    return left


def zombies_among_children() -> list[psutil.Process]:
    return [
        p for p in psutil.Process().children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE
    ]


# ---- vectors ------------------------------------------------------------------------------


def test_vectors_equal_in_process(runtime: IsolatedRuntime, spec: RuntimeSpec) -> None:
    texts = corpus()[:64]  # short and long (truncated) texts; the whole corpus is slow
    isolated = runtime.encode(texts)
    local = load_runtime(spec)
    try:
        expected = local.encode(texts)
    finally:
        local.close()
    assert isolated.vectors.dtype == np.float32
    assert isolated.vectors.shape == (len(texts), spec.dimension)
    assert isolated.vectors.flags.c_contiguous
    # Same graph, same options, same batches: bit-identical is expected; allow float noise.
    np.testing.assert_allclose(isolated.vectors, expected.vectors, rtol=0, atol=1e-6)
    assert isolated.token_counts == expected.token_counts
    single = runtime.encode(["one sentence, alone"])
    assert single.vectors.shape == (1, spec.dimension)
    assert np.linalg.norm(single.vectors[0]) == pytest.approx(1.0, abs=1e-5)


def test_odd_text_round_trips(runtime: IsolatedRuntime, spec: RuntimeSpec) -> None:
    texts = ["", "naïve café — 東京 🚀", "a\x00b", "line\nbreak" * 40]
    local = load_runtime(spec)
    try:
        expected = local.encode(texts)
    finally:
        local.close()
    got = runtime.encode(texts)
    np.testing.assert_allclose(got.vectors, expected.vectors, rtol=0, atol=1e-6)
    assert got.token_counts == expected.token_counts


def test_worker_error_is_raised_in_parent_and_worker_survives(runtime: IsolatedRuntime) -> None:
    pid = runtime.pid
    with pytest.raises(TypeError):
        runtime.encode([b"bytes are not text"])  # type: ignore[list-item]
    assert runtime.pid == pid and runtime.alive
    assert runtime.encode(["still works"]).vectors.shape[0] == 1


def test_concurrent_callers_are_serialised(runtime: IsolatedRuntime) -> None:
    texts = corpus()[:40]
    expected = runtime.encode(texts).vectors
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(runtime.encode(texts).vectors)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 4
    for got in results:
        np.testing.assert_array_equal(got, expected)


# ---- memory -------------------------------------------------------------------------------


def test_memory_info_reports_the_worker(runtime: IsolatedRuntime) -> None:
    info = runtime.memory_info()
    assert info["worker_pid"] == runtime.pid != os.getpid()
    assert info["worker_alive"] is True
    # The worker holds the model. Its weights are a memory-mapped file, whose pages count
    # as shared (not in USS) once another process maps the same file, so check RSS; USS
    # still holds the tokenizer and ONNX Runtime's own state.
    assert info["worker_rss_mb"] > 30
    assert 3 < info["worker_uss_mb"] <= info["worker_rss_mb"]


PARENT_RSS_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import psutil
    from lazyembed import isolation
    from lazyembed.runtime import RuntimeSpec

    spec = RuntimeSpec(**json.loads(sys.argv[1]))
    texts = [f"sentence number {i} about memory" for i in range(64)]
    isolation.prestart()
    me = psutil.Process()
    gc.collect()
    before = me.memory_info().rss
    for _ in range(3):
        rt = isolation.load_isolated(spec)
        vectors = rt.encode(texts).vectors
        assert vectors.shape == (64, spec.dimension)
        pid = rt.pid
        rt.close()
        del rt, vectors
    gc.collect()
    after = me.memory_info().rss
    print(json.dumps({"before": before, "after": after, "pid": pid}))
    """
)


def test_parent_rss_unchanged_by_load_embed_unload(spec: RuntimeSpec) -> None:
    """Measured in a fresh interpreter so other tests' allocations do not blur it."""
    spec_json = json.dumps(spec.__dict__)
    out = subprocess.run(
        [sys.executable, "-c", PARENT_RSS_SCRIPT, spec_json],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    delta_mb = (figures["after"] - figures["before"]) / 2**20
    assert abs(delta_mb) < 2.0, f"parent RSS moved by {delta_mb:.2f} MB"
    assert wait_gone([figures["pid"]]) == []


# ---- worker death -------------------------------------------------------------------------


def test_sigkill_mid_call_raises_and_next_call_succeeds(runtime: IsolatedRuntime) -> None:
    texts = corpus() * 30  # several seconds of work: the kill lands mid-call
    first_pid = runtime.pid
    assert first_pid is not None
    worker = psutil.Process(first_pid)
    cpu_before = sum(worker.cpu_times()[:2])
    outcome: list[BaseException | object] = []

    def call() -> None:
        try:
            outcome.append(runtime.encode(texts))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    # Wait until the worker is visibly computing this call, then kill it.
    deadline = time.monotonic() + 60
    while sum(worker.cpu_times()[:2]) < cpu_before + 0.2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(first_pid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, WorkerDiedError), error
    assert "SIGKILL" in str(error)
    assert not runtime.alive  # the lifecycle can see the model is gone
    assert wait_gone([first_pid]) == []

    again = runtime.encode(["the next call starts a fresh worker"])
    assert again.vectors.shape == (1, runtime.spec.dimension)
    assert runtime.alive
    assert runtime.pid not in (None, first_pid)
    assert runtime.restarts == 1


def test_death_while_idle_is_noticed_by_the_next_call(runtime: IsolatedRuntime) -> None:
    pid = runtime.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid]) == []
    assert not runtime.alive
    assert runtime.encode(["after an idle death"]).vectors.shape[0] == 1
    assert runtime.restarts == 1


def test_interrupted_call_drops_the_worker(
    runtime: IsolatedRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply left in the pipe by an interrupted call must never answer the next call."""
    pid = runtime.pid
    assert pid is not None
    worker = runtime._worker
    assert worker is not None

    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(worker.conn, "recv_bytes_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runtime.encode(["two texts", "in the interrupted call"])
    assert not runtime.alive
    assert wait_gone([pid]) == []
    result = runtime.encode(["one text now"])
    assert result.vectors.shape == (1, runtime.spec.dimension)
    assert runtime.pid != pid


def test_load_failure_is_a_model_load_error(spec: RuntimeSpec, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx graph")
    bad = RuntimeSpec(**{**spec.__dict__, "onnx_path": str(broken)})
    with pytest.raises(ModelLoadError, match="could not load"):
        load_isolated(bad)
    assert zombies_among_children() == []


# ---- closing ------------------------------------------------------------------------------


def test_close_leaves_no_process_and_no_zombie(spec: RuntimeSpec) -> None:
    rt = load_isolated(spec)
    pid = rt.pid
    assert pid is not None and psutil.pid_exists(pid)
    rt.encode(["hello"])
    rt.close()
    assert rt.pid is None and not rt.alive
    assert wait_gone([pid]) == []
    assert zombies_among_children() == []
    rt.close()  # idempotent
    with pytest.raises(RuntimeError):
        rt.encode(["after close"])


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, json, sys
    import psutil

    def still_running() -> None:
        # Registered before lazyembed is imported, so it runs after lazyembed's exit hook.
        left = psutil.Process().children(recursive=True)
        print("LEFT " + json.dumps([(p.pid, p.status()) for p in left]), flush=True)

    atexit.register(still_running)

    from lazyembed import isolation
    from lazyembed.runtime import RuntimeSpec

    spec = RuntimeSpec(**json.loads(sys.argv[1]))
    rt = isolation.load_isolated(spec)
    rt.encode(["exit without close"])
    kept = isolation.load_isolated(spec)  # a second one, also never closed
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    print("PIDS " + json.dumps(sorted(set(pids + [rt.pid, kept.pid]))), flush=True)
    if sys.argv[2] == "drop":
        del rt  # the finalizer path
    """
)


@pytest.mark.parametrize("mode", ["keep", "drop"])
def test_no_leftover_processes_after_interpreter_exit(spec: RuntimeSpec, mode: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, json.dumps(spec.__dict__), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    pids = json.loads(lines["PIDS"])
    assert len(pids) >= 3  # two workers and the fork server at least
    # At the end of Python's exit, before the OS closes its pipes: nothing left running.
    assert json.loads(lines["LEFT"]) == []
    assert wait_gone(pids) == [], "a worker or helper process outlived Python"
    assert zombies_among_children() == []


def test_script_without_main_guard_works(spec: RuntimeSpec, tmp_path: Path) -> None:
    """The worker must not re-run the application's script (multiprocessing's default)."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            from lazyembed import isolation
            from lazyembed.runtime import RuntimeSpec

            print("SCRIPT RAN", flush=True)
            rt = isolation.load_isolated(RuntimeSpec(**json.loads(sys.argv[1])))
            print("SHAPE", rt.encode(["no main guard here"]).vectors.shape, flush=True)
            rt.close()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script), json.dumps(spec.__dict__)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.count("SCRIPT RAN") == 1
    assert f"SHAPE (1, {spec.dimension})" in out.stdout


def test_prestart_starts_the_fork_server_without_a_model() -> None:
    isolation.prestart()
    server = isolation.fork_server_pid()
    assert server is not None
    assert psutil.Process(server).is_running()


def encode_in_thread(
    rt: IsolatedRuntime, texts: list[str]
) -> tuple[threading.Thread, threading.Event, list[BaseException | object]]:
    """Start `rt.encode(texts)` in a thread; the event is set once the thread is calling."""
    entered = threading.Event()
    outcome: list[BaseException | object] = []

    def call() -> None:
        entered.set()
        try:
            outcome.append(rt.encode(texts))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, entered, outcome


def test_close_during_a_call_kills_the_worker_under_it(spec: RuntimeSpec) -> None:
    """close(timeout) while a long call is in flight: the call gets WorkerDiedError,
    close() returns normally, nothing is left running or unreaped. close() and the call
    then both try to stop the same worker, so the scenario is repeated to catch the race."""
    texts = corpus() * 20  # ~4,000 texts: seconds of work, far beyond the close timeout
    for trial in range(4):
        rt = load_isolated(spec)
        pid = rt.pid
        assert pid is not None
        worker = psutil.Process(pid)
        cpu_before = sum(worker.cpu_times()[:2])
        thread, entered, outcome = encode_in_thread(rt, texts)
        assert entered.wait(30)
        # Wait until the worker is visibly computing this call: the call holds the
        # runtime's lock, so close() below gives up waiting for it and kills the worker.
        deadline = time.monotonic() + 60
        while sum(worker.cpu_times()[:2]) < cpu_before + 0.2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread.is_alive(), f"trial {trial}: the call finished before close()"
        rt.close(timeout=0.05)  # must not raise
        thread.join(60)
        assert not thread.is_alive()
        assert len(outcome) == 1
        error = outcome[0]
        assert isinstance(error, WorkerDiedError), f"trial {trial}: {error!r}"
        assert "close()" in str(error)
        assert rt.pid is None and not rt.alive
        assert wait_gone([pid]) == []
        assert zombies_among_children() == []
        rt.close()  # still idempotent
        with pytest.raises(RuntimeError):
            rt.encode(["after close"])


def test_encode_nothing_returns_an_empty_result(
    runtime: IsolatedRuntime, spec: RuntimeSpec
) -> None:
    pid = runtime.pid
    result = runtime.encode([])
    assert result.vectors.shape == (0, spec.dimension)
    assert result.vectors.dtype == np.float32
    assert result.token_counts == []
    local = load_runtime(spec)
    try:
        expected = local.encode([])
    finally:
        local.close()
    assert result.vectors.shape == expected.vectors.shape
    assert result.vectors.dtype == expected.vectors.dtype
    assert result.token_counts == expected.token_counts
    assert runtime.pid == pid and runtime.alive  # the worker is untouched
    assert runtime.encode(["still works"]).vectors.shape == (1, spec.dimension)
