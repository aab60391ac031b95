"""Isolated mode across fork (gunicorn, celery prefork): the child gets its own workers.

Each case runs in a fresh interpreter that loads a model isolated, forks, embeds in the
child (with the inherited runtime and with a new one), lets the child exit normally,
then embeds in the parent again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lazyembed.runtime import RuntimeSpec
from test_isolation import spec, wait_gone, zombies_among_children

__all__ = ["spec"]  # the module-scoped fixture, shared with test_isolation.py

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server")

FORK_SCRIPT = textwrap.dedent(
    """
    import atexit, json, multiprocessing, multiprocessing.util, os, sys
    import psutil

    report_fd = None  # set in the child only

    def send(kind, value):
        os.write(report_fd, f"{kind} {json.dumps(value)}\\n".encode())

    def still_running():
        # Runs after lazyembed's exit hook (registered before lazyembed is imported, or
        # with a lower multiprocessing exit priority): what the child left behind.
        if report_fd is not None:
            send("LEFT", [p.pid for p in psutil.Process().children(recursive=True)])

    atexit.register(still_running)

    import numpy as np
    from lazyembed import isolation
    from lazyembed.runtime import RuntimeSpec

    spec = RuntimeSpec(**json.loads(sys.argv[1]))
    how = sys.argv[2]
    texts = ["a model loaded before the fork", "gunicorn and celery fork their workers"]
    rt = isolation.load_isolated(spec)
    expected = rt.encode(texts).vectors.copy()
    parent_worker, parent_server = rt.pid, isolation.fork_server_pid()

    def child(fd):
        global report_fd
        report_fd = fd
        multiprocessing.util.Finalize(None, still_running, exitpriority=0)
        inherited = rt.encode(texts).vectors  # the parent's runtime object, in the child
        fresh = isolation.load_isolated(spec)
        send("REPORT", {
            "inherited_equal": bool(np.array_equal(inherited, expected)),
            "fresh_equal": bool(np.array_equal(fresh.encode(texts).vectors, expected)),
            "inherited_worker": rt.pid,
            "fresh_worker": fresh.pid,
            "server": isolation.fork_server_pid(),
            "restarts": rt.restarts,
        })
        # Neither runtime is closed: the child's exit must stop its workers and server.

    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    if how == "os.fork":
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            child(write_fd)
            sys.exit(0)  # a normal exit (atexit hooks run), as a gunicorn worker's
        os.close(write_fd)
        child_exit = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    else:
        process = multiprocessing.get_context("fork").Process(target=child, args=(write_fd,))
        process.start()
        os.close(write_fd)
        process.join()
        child_exit = process.exitcode
    with os.fdopen(read_fd) as report_in:
        child_lines = dict(line.split(" ", 1) for line in report_in.read().splitlines())
    after = rt.encode(texts).vectors
    result = {
        "child_exit": child_exit,
        "child": json.loads(child_lines["REPORT"]),
        "child_left": json.loads(child_lines.get("LEFT", "null")),
        "parent_equal": bool(np.array_equal(after, expected)),
        "parent_worker_kept": rt.pid == parent_worker,
        "parent_server_kept": isolation.fork_server_pid() == parent_server,
        "parent_restarts": rt.restarts,
        "zombies": [
            p.pid for p in psutil.Process().children(recursive=True)
            if p.status() == psutil.STATUS_ZOMBIE
        ],
        "pids": [parent_worker, parent_server],
    }
    print("RESULT " + json.dumps(result), flush=True)
    rt.close()
    """
)


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing-fork"])
def test_forked_child_embeds_with_its_own_workers(spec: RuntimeSpec, how: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, json.dumps(spec.__dict__), how],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, out.stdout + out.stderr
    result = json.loads(lines[0].removeprefix("RESULT "))
    child = result["child"]
    # The child embeds, with the inherited runtime and with a new one: same vectors.
    assert child["inherited_equal"] and child["fresh_equal"]
    assert result["child_exit"] == 0
    parent_worker, parent_server = result["pids"]
    child_pids = [child["inherited_worker"], child["fresh_worker"], child["server"]]
    assert None not in child_pids
    # The child's workers come from its own fork server, not the parent's.
    assert parent_worker not in child_pids and parent_server not in child_pids
    assert child["restarts"] == 0  # a fork is not a worker death
    # Its normal exit stopped and reaped all of them itself (nothing left at the end of
    # its exit, so nothing for init to reap), whichever way it exits.
    assert result["child_left"] == []
    assert wait_gone(child_pids) == []
    # The parent was untouched: same worker, same fork server, same vectors, no restart.
    assert result["parent_equal"]
    assert result["parent_worker_kept"] and result["parent_server_kept"]
    assert result["parent_restarts"] == 0
    assert result["zombies"] == []
    # A clean exit on both sides: no "Exception ignored ..." or traceback from atexit.
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
    assert wait_gone([parent_worker, parent_server]) == []
    assert zombies_among_children() == []


EMBEDDER_FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from lazyembed import Embedder

    e = Embedder(isolation="process", cache_memory_mb=0, idle_timeout="never")
    text = "a prefork server loaded the model before forking"
    expected = e.embed(text)
    parent_worker = e.get_memory_usage()["worker"]["worker_pid"]
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the reported defect: 3 of 3 calls raised ModelLoadError here
        os.close(read_fd)
        outcomes = []
        for _ in range(3):
            try:
                outcomes.append(e.embed(text) == expected)
            except Exception as exc:
                outcomes.append(repr(exc))
        worker = e.get_memory_usage()["worker"]["worker_pid"]
        with os.fdopen(write_fd, "w") as out:
            out.write(json.dumps({"outcomes": outcomes, "worker": worker}))
        sys.exit(0)
    os.close(write_fd)
    child_exit = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    with os.fdopen(read_fd) as report_in:
        child = json.loads(report_in.read())
    result = {
        "child_exit": child_exit,
        "child": child,
        "parent_equal": e.embed(text) == expected,
        "parent_worker_kept": e.get_memory_usage()["worker"]["worker_pid"] == parent_worker,
        "parent_worker": parent_worker,
    }
    e.close()
    print("RESULT " + json.dumps(result), flush=True)
    """
)


def test_forked_child_of_an_isolated_embedder_embeds() -> None:
    out = subprocess.run(
        [sys.executable, "-c", EMBEDDER_FORK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, out.stdout + out.stderr
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["child"]["outcomes"] == [True, True, True]
    assert result["child"]["worker"] not in (None, result["parent_worker"])
    assert result["child_exit"] == 0
    assert result["parent_equal"] and result["parent_worker_kept"]
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr
    assert wait_gone([result["parent_worker"], result["child"]["worker"]]) == []
    assert zombies_among_children() == []


OUTLIVED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from lazyembed import isolation
    from lazyembed.runtime import RuntimeSpec

    rt = isolation.load_isolated(RuntimeSpec(**json.loads(sys.argv[1])))
    rt.encode(["a parent that exits before its forked child"])
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # holds copies of every inherited fd until the test closes our stdin
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        sys.stdin.read()
        os._exit(0)
    print("PIDS " + json.dumps([pid, rt.pid, isolation.fork_server_pid()]), flush=True)
    # A normal exit, with rt never closed, while the child still runs.
    """
)


def test_parent_exit_does_not_wait_for_a_forked_child(spec: RuntimeSpec, tmp_path: Path) -> None:
    """The parent stops its fork server at exit; a forked child must not keep it alive
    (the parent would wait for it forever while the child waits for the parent)."""
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", OUTLIVED_SCRIPT, json.dumps(spec.__dict__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            exited = proc.wait(timeout=120)  # a guard against the hang, not a timing
        except subprocess.TimeoutExpired:
            exited = None
            proc.kill()
            proc.wait()
        finally:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()  # lets the child go
            out = proc.stdout.read()
    assert exited == 0, (tmp_path / "stderr").read_text()
    child, worker, server = json.loads(out.split("PIDS ", 1)[1])
    assert wait_gone([child, worker, server]) == []
