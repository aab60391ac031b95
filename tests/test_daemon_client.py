"""The thin client against real daemon processes: same vectors, typed errors, leases,
per-request options, and the faults (daemon killed or stopped mid-call, a fork, an
unsafe runtime folder, another version). Every daemon runs in the test's own
XDG_RUNTIME_DIR (the ``daemon_env`` fixture of daemon_helpers.py), which stops or kills
it at teardown and asserts it is gone.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lazyembed
from daemon_helpers import DaemonEnv, private_daemon_env
from helpers import wait_until
from lazyembed.config import Settings, load_settings, resolve_share
from lazyembed.daemon import client as client_module
from lazyembed.daemon import spawn
from lazyembed.daemon.client import DaemonFallbackWarning, client_for
from lazyembed.daemon.paths import DaemonPaths, daemon_paths
from lazyembed.daemon.protocol import pack_float32, recv_frame, send_frame
from lazyembed.daemon.shared import SharedEmbedder, SharedModels
from lazyembed.errors import (
    InvalidInputError,
    ModelNotFoundError,
    PromptNotFoundError,
)

Daemon = DaemonEnv


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonEnv]:
    """A private runtime folder; every daemon started in it is gone after the test."""
    try:
        yield from private_daemon_env(monkeypatch)
    finally:
        client_module.close_all()


def daemon_status(daemon: DaemonEnv) -> dict[str, Any]:
    return spawn.call(daemon.paths.socket, "status")


def daemon_pid(daemon: DaemonEnv) -> int | None:
    pids = daemon.daemon_pids()
    assert len(pids) <= 1, pids
    return pids[0] if pids else None


TEXT = "The shared daemon answers every process of the user."
TEXTS = [TEXT, "Another sentence, a little longer than the first one was.", "short"]


@pytest.fixture(scope="module")
def local() -> Any:
    """An in-process Embedder with the options the shared ones use below."""
    embedder = lazyembed.Embedder(share="never", cache_memory_mb=0, prepack_weights=False)
    yield embedder
    embedder.close()


def shared(**settings: Any) -> SharedEmbedder:
    settings.setdefault("share", "always")
    settings.setdefault("prepack_weights", False)
    embedder = lazyembed.Embedder(**settings)
    assert isinstance(embedder, SharedEmbedder), type(embedder)
    return embedder


def close_listener(listener: socket.socket, paths: DaemonPaths) -> None:
    """Close a fake daemon's socket and remove its file: under a tmp_path runtime folder
    the path is too long for sun_path, so it lives in the shared /tmp fallback folder,
    which no test folder's removal reaches."""
    listener.close()
    paths.socket.unlink(missing_ok=True)


def test_settings_share_and_daemon_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAZYEMBED_SHARE", raising=False)  # conftest says "never"
    assert load_settings().share is None  # not given: the library uses "auto"
    assert resolve_share(load_settings()) == "auto"
    assert resolve_share(load_settings(), "always") == "always"  # the CLI's default
    monkeypatch.setenv("LAZYEMBED_SHARE", "Always")
    monkeypatch.setenv("LAZYEMBED_DAEMON_IDLE_EXIT", "10m")
    settings = load_settings(daemon_call_timeout="2s")
    assert settings.share == "always"
    assert settings.daemon_idle_exit.seconds == 600
    assert settings.daemon_call_timeout == 2.0
    with pytest.raises(lazyembed.ConfigError, match="share"):
        load_settings(share="sometimes")
    with pytest.raises(lazyembed.ConfigError, match="daemon_call_timeout"):
        load_settings(daemon_call_timeout=0)


def test_auto_without_a_daemon_is_in_process(daemon: Daemon) -> None:
    embedder = lazyembed.Embedder(share="auto")
    assert type(embedder) is lazyembed.Embedder
    assert not daemon.paths.socket.exists()  # "auto" never starts one
    models = lazyembed.Models(share="auto")
    assert type(models) is lazyembed.Models


def test_shared_vectors_equal_in_process_ones(daemon: Daemon, local: Any) -> None:
    embedder = shared(cache_memory_mb=0)
    assert isinstance(embedder, lazyembed.Embedder)
    one = embedder.embed(TEXT)
    many = embedder.embed(TEXTS)
    array = embedder.embed_numpy(TEXTS)
    expected = local.embed_numpy(TEXTS)
    assert isinstance(one, list) and isinstance(one[0], float)
    # Same runtime settings (weights not pre-packed on either side): bit-identical.
    assert np.array_equal(np.asarray(one, dtype=np.float32), expected[0])
    assert np.array_equal(np.asarray(many, dtype=np.float32), expected)
    assert array.dtype == np.float32 and array.flags.writeable
    assert np.array_equal(array, expected)
    assert np.array_equal(embedder.encode(TEXT), local.encode(TEXT))
    assert embedder.get_embedding_dimension() == local.get_embedding_dimension()
    assert embedder.get_max_tokens() == local.get_max_tokens()
    assert embedder.count_tokens(TEXTS) == local.count_tokens(TEXTS)
    assert embedder.count_tokens(["a " * 400], truncate=False) == local.count_tokens(
        ["a " * 400], truncate=False
    )
    query = embedder.embed_query([TEXT])
    assert np.array_equal(np.asarray(query, dtype=np.float32), local.embed_numpy([TEXT]))
    prompted = embedder.embed(TEXT, prompt="query: ")
    assert np.array_equal(
        np.asarray(prompted, dtype=np.float32), local.embed_numpy([TEXT], prompt="query: ")[0]
    )
    assert daemon_pid(daemon) is not None
    embedder.close()


def test_per_request_options_never_share_vectors(daemon: Daemon) -> None:
    """Weights pre-packed or not round the last bits differently: each client gets the
    vectors of its own settings, never the other's (the daemon's cache is shared)."""
    texts = [f"sentence number {i} about pre-packed weights and rounding" for i in range(24)]
    packed_local = lazyembed.Embedder(share="never", prepack_weights=True, cache_memory_mb=0)
    plain_local = lazyembed.Embedder(share="never", prepack_weights=False, cache_memory_mb=0)
    packed_expected = packed_local.embed_numpy(texts)
    plain_expected = plain_local.embed_numpy(texts)
    packed_local.close()
    plain_local.close()
    assert not np.array_equal(packed_expected, plain_expected)  # else the test proves nothing
    plain = shared(prepack_weights=False)
    packed = shared(prepack_weights=True)
    # The plain client fills the daemon's cache first; the packed one must not read it.
    assert np.array_equal(plain.embed_numpy(texts), plain_expected)
    assert np.array_equal(packed.embed_numpy(texts), packed_expected)
    assert np.array_equal(plain.embed_numpy(texts), plain_expected)
    options = {tuple(sorted(m["options"].items())) for m in daemon_status(daemon)["models"]}
    assert len(options) == 2


def test_errors_come_back_as_the_same_types(daemon: Daemon, tmp_path: Path) -> None:
    embedder = shared()
    with pytest.raises(PromptNotFoundError, match="no prompt named"):
        embedder.embed(TEXT, prompt_name="no-such-prompt")
    with pytest.raises(InvalidInputError):
        embedder.embed([])
    missing = shared(model=str(tmp_path / "no-model-here"))
    with pytest.raises(ModelNotFoundError):
        missing.embed(TEXT)
    assert embedder.embed(TEXT)  # the connection is still fine


def test_memory_usage_says_shared(daemon: Daemon) -> None:
    embedder = shared()
    embedder.embed(TEXT)
    usage = embedder.get_memory_usage()
    assert usage["shared"] is True
    assert usage["daemon"]["pid"] == daemon_pid(daemon) != os.getpid()
    assert usage["process_rss_mb"] > 0  # this process's own RSS
    assert "model_mb" in usage and "state" in usage
    assert lazyembed.get_memory_usage is not None


def test_unload_model_releases_this_clients_leases(daemon: Daemon) -> None:
    embedder = shared()
    embedder.embed(TEXT, keep_alive="never")  # a pin (the daemon's cache is empty)
    assert embedder.is_loaded
    [model] = [m for m in daemon_status(daemon)["models"] if m["state"] == "loaded"]
    assert model["pinned"]
    assert embedder.unload_model() is True
    assert not embedder.is_loaded


def test_a_killed_daemon_is_replaced_and_the_call_retried(daemon: Daemon, local: Any) -> None:
    embedder = shared(cache_memory_mb=0)
    embedder.embed(TEXT)  # connected
    first = daemon_pid(daemon)
    assert first is not None
    texts = [f"{TEXT} {i}" for i in range(400)]
    result: dict[str, Any] = {}

    def call() -> None:
        result["vectors"] = embedder.embed_numpy(texts)

    thread = threading.Thread(target=call)
    thread.start()
    assert wait_until(
        lambda: any(m["in_flight"] for m in daemon_status(daemon)["models"]), limit=120
    )
    os.kill(first, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    np.testing.assert_allclose(result["vectors"], local.embed_numpy(texts), atol=1e-6, rtol=0)
    assert embedder.client.retries >= 1
    assert daemon_pid(daemon) not in (None, first)  # a new daemon answered the retry


def test_a_stopped_daemon_times_out_into_process_with_one_warning(
    daemon: Daemon, local: Any
) -> None:
    shared().embed(TEXT)  # start the daemon and load the model under the default timeout
    embedder = shared(daemon_call_timeout=1.0)
    embedder.embed(TEXT)
    assert embedder.client.usable()  # answered by the daemon, not by the fallback
    pid = daemon_pid(daemon)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.warns(DaemonFallbackWarning, match="did not answer within"):
            vector = embedder.embed(TEXT)
        np.testing.assert_allclose(vector, local.embed_numpy([TEXT])[0], atol=1e-6, rtol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the next calls stay in-process, no new warning
            assert embedder.embed(TEXTS)
        assert not embedder.client.usable()
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_forked_child_opens_its_own_connection(daemon: Daemon, local: Any) -> None:
    embedder = shared()
    before = embedder.embed(TEXT)
    served = daemon_status(daemon)["clients_served"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: embed through its own connection, report, leave at once
        try:
            os.close(read)
            vector = embedder.embed(TEXT)
            ok = vector == before and embedder.client.retries == 0
            os.write(write, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert embedder.embed(TEXT) == before  # the parent's connection is untouched
    assert embedder.client.retries == 0
    assert daemon_status(daemon)["clients_served"] > served  # the child was a new client


def test_an_unsafe_runtime_folder_runs_in_process_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    (runtime / "lazyembed").mkdir(parents=True)
    runtime.chmod(0o700)
    (runtime / "lazyembed").chmod(0o755)  # open to others: refused, never used
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with pytest.warns(DaemonFallbackWarning, match="mode 0755"):
        embedder = lazyembed.Embedder(share="always")
    assert type(embedder) is lazyembed.Embedder
    assert embedder.embed(TEXT)
    embedder.close()
    assert list((runtime / "lazyembed").iterdir()) == []


def test_a_daemon_of_another_version_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    paths = daemon_paths()
    paths.ensure()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(paths.socket))
    listener.listen()
    seen: list[dict[str, Any]] = []

    def fake_daemon() -> None:  # an old daemon: it answers every hello VersionMismatch
        conn, _ = listener.accept()
        with conn:
            meta, _ = recv_frame(conn)
            seen.append(meta)
            error = {"type": "VersionMismatch", "message": "daemon 0.0.1, protocol 0"}
            send_frame(conn, {"ok": False, "id": meta.get("id"), "error": error})

    thread = threading.Thread(target=fake_daemon, daemon=True)
    thread.start()
    try:
        with pytest.warns(DaemonFallbackWarning, match="VersionMismatch"):
            embedder = lazyembed.Embedder(share="auto")
        assert type(embedder) is lazyembed.Embedder  # in-process, no protocol error
        assert embedder.embed(TEXT)
        embedder.close()
        thread.join(timeout=10)
        assert seen and seen[0]["op"] == "hello" and seen[0]["version"] == lazyembed.__version__
        assert not client_for(paths).usable()  # never tried again by this process
    finally:
        close_listener(listener, paths)


def test_a_daemon_that_never_answers_hello_costs_the_hello_timeout_not_the_call_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung daemon (its socket accepts in the kernel's backlog, nothing answers): a new
    client's constructor gives up after the short hello timeout, whatever
    daemon_call_timeout says (here an hour, far past the test's own timeout)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(client_module, "HELLO_TIMEOUT_S", 0.2)
    paths = daemon_paths()
    paths.ensure()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(paths.socket))
    listener.listen()  # never accepted: the connection waits in the backlog, like SIGSTOP
    try:
        with pytest.warns(DaemonFallbackWarning, match="did not answer hello within 0.2s"):
            embedder = lazyembed.Embedder(share="auto", daemon_call_timeout="1h")
        assert type(embedder) is lazyembed.Embedder  # in-process
        embedder.close()
    finally:
        close_listener(listener, paths)


def test_other_daemon_level_settings_are_named_once(daemon: Daemon) -> None:
    shared().embed(TEXT)  # the daemon runs with the defaults
    with pytest.warns(DaemonFallbackWarning, match="memory_budget_mb, max_loaded_models"):
        other = shared(memory_budget_mb=900, max_loaded_models=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shared(memory_budget_mb=900, max_loaded_models=2)  # told once
    assert other.embed(TEXT)


def test_models_and_the_module_functions_go_through_the_daemon(
    daemon: Daemon, local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = lazyembed.Models(share="always", prepack_weights=False)
    assert isinstance(models, SharedModels)
    vectors = models.embed_numpy(TEXTS)
    assert np.array_equal(vectors, local.embed_numpy(TEXTS))
    assert models.get().embed(TEXT) == vectors[0].tolist()
    models.close()
    import lazyembed.api as api

    monkeypatch.setenv("LAZYEMBED_SHARE", "auto")  # a daemon runs: the default registry uses it
    monkeypatch.setattr(api, "_default", None)
    try:
        assert isinstance(api.get_default_models(), SharedModels)
        assert lazyembed.embed(TEXT)
        assert lazyembed.get_memory_usage()["shared"] is True
    finally:
        api.get_default_models().close()
        monkeypatch.setattr(api, "_default", None)


def test_integrations_work_through_the_daemon(daemon: Daemon, local: Any) -> None:
    from lazyembed.integrations._common import document_vectors, make_embedder, query_vectors

    embedder, owned = make_embedder(None, None, None, {"share": "always"})
    assert owned and isinstance(embedder, SharedEmbedder)
    assert np.allclose(query_vectors(embedder, [TEXT], None), local.embed_numpy([TEXT]), atol=1e-6)
    assert np.allclose(document_vectors(embedder, TEXTS, None), local.embed_numpy(TEXTS), atol=1e-6)
    embedder.close()


def test_client_module_stays_light() -> None:
    assert client_module.platform_supported()


def test_close_keeps_the_model_for_the_next_client_unless_it_held_a_lease(
    daemon: Daemon,
) -> None:
    first = shared()
    first.embed(TEXT)  # the default lease: the daemon's idle timeout
    first.close()
    assert [m["state"] for m in daemon_status(daemon)["models"]] == ["loaded"]
    pinned = shared()
    pinned.embed("another text", keep_alive="never")
    pinned.close()  # its pin ends, and nobody else holds a lease: unloaded, as in-process
    assert [m["state"] for m in daemon_status(daemon)["models"]] == ["unloaded"]


def test_auto_joins_a_running_daemon_and_goes_in_process_when_it_exits(
    daemon: Daemon, local: Any
) -> None:
    shared().embed(TEXT)  # "always" started it
    embedder = lazyembed.Embedder(share="auto", prepack_weights=False)
    assert isinstance(embedder, SharedEmbedder)
    pid = daemon_pid(daemon)
    spawn.call(daemon.paths.socket, "stop")
    assert wait_until(lambda: daemon_pid(daemon) is None, limit=60), pid
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" without a daemon is no failure: no warning
        vector = embedder.embed(TEXT)
    assert np.array_equal(np.asarray(vector, dtype=np.float32), local.embed_numpy([TEXT])[0])
    assert daemon_pid(daemon) is None  # "auto" never starts one


def test_always_on_a_platform_without_unix_sockets_warns_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lazyembed.daemon import shared as shared_module

    monkeypatch.setattr(shared_module, "platform_supported", lambda: False)
    monkeypatch.setattr(shared_module, "_windows_warned", False)
    with pytest.warns(DaemonFallbackWarning, match="Windows"):
        first = lazyembed.Embedder(share="always")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = lazyembed.Embedder(share="always")
    assert type(first) is type(second) is lazyembed.Embedder
    monkeypatch.setattr(shared_module, "_windows_warned", False)
    monkeypatch.delenv("LAZYEMBED_SHARE")  # the suite's "never": the CLI default applies
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI's default "always" is not asked for: quiet
        cli = shared_module.shared_embedder_for(load_settings(share=None), "always", _in_process)
    assert type(cli) is lazyembed.Embedder


def test_a_daemon_that_cannot_start_runs_in_process_with_one_warning(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_start(paths: Any, timeout: float = 30.0) -> Any:
        raise spawn.DaemonStartError("no daemon answered (disk full?)")

    monkeypatch.setattr(spawn, "ensure_daemon", cannot_start)
    with pytest.warns(DaemonFallbackWarning, match="cannot start or reach"):
        embedder = lazyembed.Embedder(share="always")
    assert type(embedder) is lazyembed.Embedder
    assert embedder.embed(TEXT)
    embedder.close()
    assert not daemon.daemon_pids()


def fake_daemon(
    path: Path, answers: list[str], seen: list[dict[str, Any]]
) -> tuple[socket.socket, threading.Thread]:
    """A tiny daemon of our version: for each connection, hello then one scripted answer
    per request ("stopping": ClosedError; "vector": one vector of 0.5s), then it closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        for kind in answers:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                recv_frame(conn)  # hello
                settings = {"max_loaded_models": 3}
                send_frame(
                    conn,
                    {
                        "ok": True,
                        "id": 0,
                        "protocol": 1,
                        "version": lazyembed.__version__,
                        "pid": os.getpid(),
                        "started_at": 0,
                        "settings": settings,
                    },
                )
                meta, _ = recv_frame(conn)
                seen.append(meta)
                if kind == "stopping":
                    error = {"type": "ClosedError", "message": "the daemon is stopping"}
                    send_frame(conn, {"ok": False, "id": meta["id"], "error": error})
                else:
                    vector = pack_float32([[0.5] * 4])
                    send_frame(
                        conn,
                        {"ok": True, "id": meta["id"], "shape": [1, 4], "dtype": "<f4"},
                        vector,
                    )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_a_stopping_daemon_is_retried_once_then_the_call_runs_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: Any
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    paths = daemon_paths()
    paths.ensure()
    seen: list[dict[str, Any]] = []
    listener, thread = fake_daemon(paths.socket, ["stopping", "vector"], seen)
    try:
        embedder = lazyembed.Embedder(share="auto")
        assert isinstance(embedder, SharedEmbedder)
        assert embedder.embed(TEXT) == [0.5] * 4  # the retry's answer
        assert embedder.client.retries == 1 and [m["op"] for m in seen] == ["embed", "embed"]
        thread.join(timeout=10)
    finally:
        close_listener(listener, paths)
        client_module.close_all()
    seen.clear()
    listener, thread = fake_daemon(paths.socket, ["stopping", "stopping"], seen)
    try:
        embedder = lazyembed.Embedder(share="auto", prepack_weights=False, cache_memory_mb=0)
        assert isinstance(embedder, SharedEmbedder)
        with pytest.warns(DaemonFallbackWarning, match="stopping"):
            vector = embedder.embed(TEXT)
        assert np.array_equal(np.asarray(vector, dtype=np.float32), local.embed_numpy([TEXT])[0])
        thread.join(timeout=10)
    finally:
        close_listener(listener, paths)
        client_module.close_all()


def test_warmup_loads_in_the_daemon_and_leaves_this_clients_lease(daemon: Daemon) -> None:
    embedder = shared()
    embedder.warmup(keep_alive="never")  # load now, pinned for this client
    [model] = daemon_status(daemon)["models"]
    assert model["state"] == "loaded" and model["pinned"]
    assert embedder.unload_model() is True
    assert [m["state"] for m in daemon_status(daemon)["models"]] == ["unloaded"]


def test_the_clis_default_always_also_rules_its_retry(daemon: Daemon) -> None:
    from lazyembed.daemon.shared import shared_embedder_for

    settings = dataclasses.replace(load_settings(), share=None)  # not given: "always"
    embedder = shared_embedder_for(settings, "always", _in_process)
    assert isinstance(embedder, SharedEmbedder)
    embedder.embed(TEXT)
    first = daemon_pid(daemon)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: daemon_pid(daemon) is None, limit=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh daemon, no fallback
        assert embedder.embed(TEXT)
    assert daemon_pid(daemon) not in (None, first)


def test_threads_share_the_connection_and_each_gets_its_own_vectors(
    daemon: Daemon, local: Any
) -> None:
    embedder = shared(cache_memory_mb=0)
    texts = [f"thread-safe text number {i}" for i in range(32)]
    expected = local.embed_numpy(texts)
    results: dict[int, list[float]] = {}

    def work(offset: int) -> None:
        for i in range(offset, len(texts), 4):
            results[i] = embedder.embed(texts[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    got = np.asarray([results[i] for i in range(len(texts))], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)  # no thread got another's
    assert embedder.client.retries == 0


def _in_process(settings: Settings) -> lazyembed.Embedder:
    return lazyembed.Embedder(settings=settings)


def test_a_model_run_from_its_onnx_export_through_the_daemon(daemon: Daemon) -> None:
    """A decoder export (left padding, last-token pooling) and `onnx_file`, a
    per-request option: the daemon's vectors are sentence-transformers' and the
    in-process ones."""
    import json

    folder = Path(__file__).parent / "fixtures" / "models" / "qwen3-onnx-lasttoken-left"
    reference = json.loads((folder / "reference.json").read_text())
    texts, want = reference["texts"], np.asarray(reference["vectors"], dtype=np.float32)
    remote = shared(model=str(folder), onnx_file="onnx/model.onnx", cache_memory_mb=0)
    got = remote.embed_numpy(texts)
    local = lazyembed.Embedder(str(folder), share="never", onnx_file="onnx/model.onnx")
    assert np.abs(got - local.embed_numpy(texts)).max() <= 1e-6
    local.close()
    cosines = (got * want).sum(axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    )
    assert cosines.min() >= 0.99999
    (model,) = [m for m in daemon_status(daemon)["models"] if m["model"] == str(folder)]
    assert model["options"]["onnx_file"] == "onnx/model.onnx"


def test_threads_left_unset_or_set_to_the_daemons_count_share_one_model(daemon: Daemon) -> None:
    """intra_op_threads unset means the daemon's core count: a client that spells that
    count out gets the same model, not a second copy of it."""
    from lazyembed.config import effective_threads

    cores = effective_threads(load_settings())
    shared(intra_op_threads=None).embed(TEXT)
    shared(intra_op_threads=cores).embed(TEXT)
    assert len(daemon_status(daemon)["models"]) == 1
    shared(intra_op_threads=cores + 1).embed(TEXT)  # another count: its own model
    assert len(daemon_status(daemon)["models"]) == 2
