"""The lifecycle on the real model: memory really returns, threads, CPU, fork, stress."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

from lazyembed import Embedder

SEED_SCENARIO = r"""
import json, lazyembed
import onnxruntime  # the library is no model memory: in the baseline, as every peer's is
from lazyembed import memory
from lazyembed.embedder import Embedder

e = Embedder(cache_memory_mb=0, idle_timeout="never")
e.prepare()                      # resolve + convert: files on disk, no model in RAM
before = memory.process_rss_bytes()
first = e.embed("test")
loaded = e.get_memory_usage()
unloaded_ok = e.unload_model()
after = e.get_memory_usage()
rss_after = memory.process_rss_bytes()
again = e.embed("test")
reloaded = e.get_memory_usage()
print(json.dumps({
    "rss_before_mb": before / 2**20, "rss_after_unload_mb": rss_after / 2**20,
    "loaded": loaded, "after": after, "reloaded": reloaded,
    "unloaded_ok": unloaded_ok, "same": first == again,
}, default=str))
"""


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_seed_scenario_memory_returns_and_reload_is_transparent() -> None:
    r = _run(SEED_SCENARIO)
    loaded, after, reloaded = r["loaded"], r["after"], r["reloaded"]
    assert isinstance(loaded, dict) and isinstance(after, dict) and isinstance(reloaded, dict)
    assert loaded["model_loaded"] is True and loaded["state"] == "loaded"
    assert 10.0 < loaded["model_mb"] < 400.0  # tens of MB, measured
    assert r["unloaded_ok"] is True
    assert after["model_loaded"] is False and after["model_mb"] == 0.0
    assert after["last_unload"]["reason"] == "explicit"
    assert after["last_unload"]["returned_mb"] > 10.0
    rss_before, rss_after = r["rss_before_mb"], r["rss_after_unload_mb"]
    assert isinstance(rss_before, float) and isinstance(rss_after, float)
    # What stays: ONNX Runtime's global state (~16 MB) and the tokenizer the Embedder
    # keeps for reloads and token counts (~5 MB; it makes a reload ~30 ms faster).
    assert rss_after - rss_before <= 25.0, f"{rss_after - rss_before:.1f} MB left after unload"
    assert r["same"] is True
    assert reloaded["model_loaded"] is True and reloaded["loads"] == 2
    assert reloaded["model_mb"] > 10.0
    assert reloaded["loads_by_reason"] == {"first_use": 1, "reload": 1}
    assert reloaded["unloads_by_reason"] == {"explicit": 1}
    kinds = [(ev["kind"], ev["reason"]) for ev in reloaded["events"]]
    assert kinds[:3] == [("load", "first_use"), ("unload", "explicit"), ("load", "reload")]


@pytest.fixture
def uncached() -> Iterator[Embedder]:
    e = Embedder(cache_memory_mb=0, idle_timeout="never")
    yield e
    e.close()


def test_single_flight_eight_first_calls_one_load(uncached: Embedder) -> None:
    barrier = threading.Barrier(8)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait()
        try:
            results.append(uncached.embed_numpy(["same text"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    usage = uncached.get_memory_usage()
    assert usage["loads"] == 1
    assert [ev["kind"] for ev in usage["events"]].count("load") == 1
    assert all(np.array_equal(r, results[0]) for r in results)


def test_stress_threads_with_random_unloads(uncached: Embedder) -> None:
    texts = [f"stress sentence {i} about topic {i % 7}" for i in range(16)]
    reference = uncached.embed_numpy(texts)
    stop = threading.Event()
    errors: list[BaseException] = []
    mismatches: list[int] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            i = rng.randrange(len(texts))
            try:
                vector = uncached.embed_numpy([texts[i]])[0]
            except BaseException as exc:
                errors.append(exc)
                return
            if np.abs(vector - reference[i]).max() > 1e-5:
                mismatches.append(i)

    def unloader() -> None:
        rng = random.Random(99)
        while not stop.is_set():
            time.sleep(rng.uniform(0.02, 0.25))
            uncached.unload_model()

    workers = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    chaos = threading.Thread(target=unloader)
    chaos.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    chaos.join()
    assert not errors, errors[:3]
    assert not mismatches
    usage = uncached.get_memory_usage()
    assert usage["unloads"] >= 1 and usage["loads"] == usage["unloads"] + int(usage["model_loaded"])


def test_thread_count_constant_across_calls(uncached: Embedder) -> None:
    uncached.embed("warm")
    process = psutil.Process()
    before = (threading.active_count(), process.num_threads())
    for i in range(1000):
        uncached.embed(f"call {i % 5}")
    assert (threading.active_count(), process.num_threads()) == before


def test_loaded_idle_model_burns_no_cpu(uncached: Embedder) -> None:
    uncached.embed_numpy(["load the model and its thread pools"] * 8)
    process = psutil.Process()
    start = process.cpu_times()
    time.sleep(3.0)
    end = process.cpu_times()
    used = (end.user - start.user) + (end.system - start.system)
    assert used < 0.15, f"idle loaded model used {used:.2f} s CPU in 3 s"


def test_real_one_second_idle_timeout_unloads() -> None:
    e = Embedder(cache_memory_mb=0, idle_timeout="1s")
    try:
        e.embed("soon idle")
        deadline = time.monotonic() + 30
        while e.get_memory_usage()["state"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.1)
        usage = e.get_memory_usage()
        assert usage["model_loaded"] is False
        assert usage["last_unload"]["reason"] == "idle"
        assert len(e.embed("back again")) == 384
    finally:
        e.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_starts_unloaded_and_embeds(uncached: Embedder) -> None:
    parent_vector = uncached.embed_numpy(["fork me"])[0]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, never return into pytest
        code = 1
        try:
            state = uncached.get_memory_usage()["state"]
            vector = uncached.embed_numpy(["fork me"])[0]
            ok = state == "unloaded" and float(np.abs(vector - parent_vector).max()) < 1e-5
            os.write(write_end, json.dumps({"state": state, "ok": ok}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    report = json.loads(os.read(read_end, 4096).decode())
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == {"state": "unloaded", "ok": True}
    assert uncached.get_memory_usage()["model_loaded"] is True  # parent unaffected
    assert np.array_equal(uncached.embed_numpy(["fork me"])[0], parent_vector)


def test_library_never_imports_torch() -> None:
    code = (
        "import sys, lazyembed; lazyembed.embed('x'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'sentence_transformers', 'transformers'}); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_prepares_does_not_hang_the_child() -> None:
    e = Embedder(cache_memory_mb=0, idle_timeout="never")  # not prepared yet
    held, release = threading.Event(), threading.Event()

    def preparing() -> None:  # stands in for a first conversion taking seconds
        with e._prepare_lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=preparing)
    thread.start()
    assert held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # child: the parent's preparing thread does not exist here
            code = 3
            try:
                signal.alarm(60)  # a hang ends as SIGALRM, not a stuck test run
                code = 0 if e.get_embedding_dimension() == 384 else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join(10)
        e.close()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
