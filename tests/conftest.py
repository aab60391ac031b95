"""Test-wide set-up: one private session folder, no user config, nothing left behind.

Every Embedder in the session (and every subprocess a test starts) converts the model
once into the same cache under the session folder, ignores any config file of the
developer and keeps its runtime and state files (a per-user daemon's socket above all)
in private folders there, never in the developer's own.

The folder is removed when the session ends, also after a failure or Ctrl-C (and, as a
last resort, at interpreter exit). A pytest started inside the session (a subprocess
inheriting the environment, an xdist worker, or pytester in-process) reuses the
session's folder and leaves its removal to the session that made it.

At the end the session checks that it leaves nothing behind and fails the run (exit
status 1) otherwise: a child process of pytest still alive after a short grace (killed,
reaped and named with its command line), or the session folder still there.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

_KEPT = "LAZYEMBED_MODEL_CACHE_DIR"
#: The session folder and the pid of the pytest that made it, for pytests started inside.
_DIR_ENV = "PYTEST_LAZYEMBED_SESSION_DIR"
_OWNER_ENV = "PYTEST_LAZYEMBED_SESSION_OWNER"
#: How long children get to finish exiting once the last test is done (a wait, not a
#: bar); test_session_hygiene.py shortens it for the sessions it runs.
_GRACE_ENV = "PYTEST_LAZYEMBED_CHILD_GRACE_S"

pytest_plugins = ("pytester",)  # test_session_hygiene.py runs sessions of its own


@dataclass
class _Session:
    """This process's session folder, whether it owns it, and what the end check found."""

    dir: Path | None = None
    owned: bool = False
    leftovers: list[str] = field(default_factory=list)
    #: Sockets in the daemon's shared /tmp fallback folder before the session started.
    fallback_sockets: set[Path] = field(default_factory=set)


def _fallback_sockets() -> set[Path]:
    """The daemon sockets in /tmp/lazyembed-<uid>/ (where a socket path too long for
    sun_path goes, outside every private folder a test makes)."""
    folder = Path("/tmp") / f"lazyembed-{os.getuid()}"
    return set(folder.glob("d-*.sock")) if folder.is_dir() else set()


_SESSION = _Session()


def _session_dir() -> Path:
    """The enclosing session's folder when a live session made one (a parent process, or
    this one for a pytest run in-process), else a new one that this session owns."""
    inherited, owner = os.environ.get(_DIR_ENV), os.environ.get(_OWNER_ENV, "")
    if inherited and owner.isdigit() and psutil.pid_exists(int(owner)) and Path(inherited).is_dir():
        return Path(inherited)
    made = Path(tempfile.mkdtemp(prefix="lazyembed-tests-"))
    _SESSION.owned = True
    atexit.register(shutil.rmtree, made, ignore_errors=True)  # if sessionfinish never runs
    os.environ[_DIR_ENV] = str(made)
    os.environ[_OWNER_ENV] = str(os.getpid())
    return made


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported: private cache, config, data, state and
    runtime folders, and no LAZYEMBED_* setting from the developer's environment."""
    session = _SESSION.dir = _session_dir()
    _SESSION.fallback_sockets = _fallback_sockets()
    if config.option.basetemp is None:  # tmp_path's folders go with the session's too
        config.option.basetemp = str(session / f"tmp_path-{os.getpid()}")
    os.environ[_KEPT] = str(session / "cache")
    for variable, name in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_RUNTIME_DIR", "runtime"),  # 0700, as the XDG spec requires of it
    ):
        folder = session / name
        folder.mkdir(mode=0o700, exist_ok=True)
        os.environ[variable] = str(folder)
    os.environ["RAY_TMPDIR"] = str(session)  # Ray's logs and sockets; a short path
    for key in [k for k in os.environ if k.startswith("LAZYEMBED_") and k != _KEPT]:
        del os.environ[key]
    # In-process unless a test asks for the shared daemon (share=, daemon_helpers.py): a
    # CLI `embed` would otherwise start a daemon that outlives the test.
    os.environ["LAZYEMBED_SHARE"] = "never"


@pytest.fixture(scope="session")
def session_dir() -> Path:
    assert _SESSION.dir is not None
    return _SESSION.dir


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from lazyembed.models.resolve import resolve_model

    return resolve_model(None).directory


@pytest.fixture(scope="session")
def shared_embedder() -> Iterator[object]:
    """One real Embedder (cache off) for tests that only need vectors.

    Never idle (tests must not race its unload), yet with the weights not pre-packed:
    the layout a default Embedder (which has an idle timeout) runs, so its vectors are
    bit-identical to the CLI's, the server's and the integrations' defaults.
    """
    from lazyembed import Embedder

    embedder = Embedder(cache_memory_mb=0, idle_timeout="never", prepack_weights=False)
    yield embedder
    embedder.close()


@pytest.fixture(scope="module", autouse=True)
def _stop_multiprocessing_helpers() -> Iterator[None]:
    """After each module, stop the fork server and resource tracker its tests started.

    lazyembed stops them itself only at interpreter exit (isolation.client's exit hook),
    so one isolation test would otherwise keep a fork server (with ONNX Runtime loaded)
    for the rest of the suite; a spawn-context queue starts the tracker alone. While an
    isolated runtime or a multiprocessing child still runs (a test's leftover), they are
    left for the session-end check to report.
    """
    yield
    if "multiprocessing" not in sys.modules:
        return
    import multiprocessing
    from multiprocessing import forkserver, resource_tracker

    server = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    tracker = getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None)
    if server is None and tracker is None:
        return
    from lazyembed.isolation import _multiprocessing_workarounds as workarounds
    from lazyembed.isolation import client

    if not client._LIVE and not multiprocessing.active_children():
        workarounds.stop_helpers()


def _live_children() -> list[psutil.Process]:
    """This process's descendants still running; exited direct children are reaped on
    the way (a zombie holds no CPU or memory, and pytest's exit would reap it anyway)."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
            elif child.ppid() == os.getpid():
                child.wait(timeout=0)
        except (psutil.Error, ChildProcessError):
            pass  # gone meanwhile, or reaped by its own Popen
    return alive


def _describe(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        command = "(exited meanwhile)"
    return f"pid {process.pid}: {command}"


def leftover_children(grace: float) -> list[str]:
    """Children still running after ``grace`` seconds, killed and reaped; their commands."""
    deadline = time.monotonic() + grace
    children = _live_children()
    while children and time.monotonic() < deadline:
        time.sleep(0.1)
        children = _live_children()
    found = [_describe(child) for child in children]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=5)  # reaps those that are our direct children
    return found


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the session fixtures' teardown: remove the session folder, then fail the run
    if a child process, the folder or a socket in the daemon's /tmp fallback is left."""
    problems: list[str] = []
    if _SESSION.owned or os.environ.get(_OWNER_ENV) != str(os.getpid()):
        # (not for a session run in-process by a test: the children are the outer's)
        grace = float(os.environ.get(_GRACE_ENV, "10"))
        problems += [f"child process left running: {found}" for found in leftover_children(grace)]
    folder = _SESSION.dir
    if _SESSION.owned and folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            problems.append(f"session folder left behind: {folder}")
    if _SESSION.owned:
        new = sorted(_fallback_sockets() - _SESSION.fallback_sockets)
        problems += [f"daemon socket left in the shared /tmp folder: {path}" for path in new]
    _SESSION.leftovers = problems
    if problems and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if problems and not session.config.pluginmanager.has_plugin("terminalreporter"):
        print("\n".join(problems), file=sys.stderr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The session-end check's findings (runs after `pytest_sessionfinish`)."""
    if _SESSION.leftovers:
        terminalreporter.section("left behind by the session", sep="=", red=True, bold=True)
        for line in _SESSION.leftovers:
            terminalreporter.write_line(line, red=True)
