"""The session-end check of conftest.py, on pytest sessions run in a subprocess.

Each inner session gets this suite's conftest.py and a one-test module; what it leaves
behind (processes, its session folder) is looked at from here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import lazyembed

CONFTEST = Path(__file__).with_name("conftest.py")


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, test: str, *, own_folder: bool
) -> pytest.RunResult:
    """Run ``test`` in a session of its own; with ``own_folder`` the inner session makes
    (and must remove) its own folder under a private TMPDIR instead of reusing ours."""
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_inner=test)
    monkeypatch.setenv("PYTEST_LAZYEMBED_CHILD_GRACE_S", "0.5")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the conftest needs none
    monkeypatch.setenv("PYTHONPATH", str(Path(lazyembed.__file__).parents[1]))  # this lazyembed
    if own_folder:
        (pytester.path / "tmp").mkdir()
        monkeypatch.setenv("TMPDIR", str(pytester.path / "tmp"))
        monkeypatch.delenv("PYTEST_LAZYEMBED_SESSION_OWNER")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-s", timeout=120)


def test_a_child_left_running_fails_the_session_and_is_killed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(
        pytester,
        monkeypatch,
        """
        import subprocess, sys

        def test_leaves_a_child():
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            print(f"PID {child.pid}")

        """,
        own_folder=False,
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # though its only test passed
    pid = int(next(line for line in result.outlines if line.startswith("PID "))[4:])
    result.stdout.fnmatch_lines(["*left behind by the session*", f"*pid {pid}: *time.sleep(600)*"])
    assert not psutil.pid_exists(pid)  # killed and reaped by the inner session


def test_the_fork_server_a_module_starts_is_stopped_after_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(
        pytester,
        monkeypatch,
        """
        from lazyembed import isolation

        def test_starts_the_fork_server():
            isolation.prestart()
            print(f"PID {isolation.fork_server_pid()}")

        """,
        own_folder=False,
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    pid = int(next(line for line in result.outlines if line.startswith("PID "))[4:])
    assert not psutil.pid_exists(pid)


def test_a_clean_session_passes_and_removes_its_own_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(
        pytester,
        monkeypatch,
        """
        import json, os, stat, subprocess, sys

        def test_private_folders(session_dir):
            (session_dir / "cache" / "some.file").parent.mkdir(parents=True, exist_ok=True)
            (session_dir / "cache" / "some.file").write_text("x")
            runtime = os.environ["XDG_RUNTIME_DIR"]
            assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
            subprocess.run([sys.executable, "-c", "pass"], check=True)  # waited for: fine
            keys = ["XDG_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                    "RAY_TMPDIR", "LAZYEMBED_MODEL_CACHE_DIR"]
            print(json.dumps({"dir": str(session_dir), **{k: os.environ[k] for k in keys}}))

        """,
        own_folder=True,
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    seen = json.loads(next(line for line in result.outlines if line.startswith("{")))
    folder = Path(seen.pop("dir"))
    assert folder.parent == pytester.path / "tmp"
    assert all(Path(value).is_relative_to(folder) for value in seen.values()), seen
    assert not folder.exists()
    assert list((pytester.path / "tmp").iterdir()) == []


def test_ctrl_c_still_removes_the_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(
        pytester,
        monkeypatch,
        """
        def test_interrupted(session_dir):
            (session_dir / "data").mkdir(exist_ok=True)
            raise KeyboardInterrupt

        """,
        own_folder=True,
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert list((pytester.path / "tmp").iterdir()) == []


def test_an_inner_session_reuses_the_outer_folder_and_leaves_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, session_dir: Path
) -> None:
    result = _run(
        pytester,
        monkeypatch,
        f"""
        def test_same_folder(session_dir):
            assert str(session_dir) == {str(session_dir)!r}

        """,
        own_folder=False,
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert session_dir.is_dir()  # still ours, still there


def test_a_session_run_in_process_shares_the_folder_and_spares_our_children(
    pytester: pytest.Pytester, session_dir: Path
) -> None:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(
        test_inner=f"""
        def test_same_folder(session_dir):
            assert str(session_dir) == {str(session_dir)!r}
        """
    )
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio", "-q")
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()
        assert ours.poll() is None  # not taken for the inner session's leftover
    finally:
        ours.kill()
        ours.wait()
    assert session_dir.is_dir()
    assert os.environ["LAZYEMBED_MODEL_CACHE_DIR"] == str(session_dir / "cache")
