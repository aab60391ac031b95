"""The daemon process (``lazyembed daemon run``): one per user, hosting the models of all
of that user's processes, and leaving by itself when idle.

It listens on the private Unix socket of `paths.daemon_paths` (or a socket systemd passes
as fd 3), refuses peers of another uid (SO_PEERCRED), and serves each connection in a
thread of its own with the framed protocol of PROTOCOL.md. Models live in
`lazyembed.registry.Models`, one registry per set of per-request vector-affecting
options; `embed` requests for one model go through that model's `_ModelBatcher`, whose
thread merges what is queued into one model call (this is what lets many one-text
clients beat as many in-process models on few cores). Each connection's keep-alive
leases are its own (`ClientLeases`) and leave with it. docs/ARCHITECTURE.md ("The shared
daemon") has the threads, the locks and the start race.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import select
import signal
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
from filelock import FileLock

from lazyembed._version import __version__
from lazyembed.config import (
    KeepAlive,
    Settings,
    effective_threads,
    load_settings,
    parse_duration,
    parse_keep_alive,
)
from lazyembed.daemon.client import daemon_level_settings
from lazyembed.daemon.leases import ClientLeases, IdleExit
from lazyembed.daemon.paths import DaemonPaths
from lazyembed.daemon.protocol import (
    PROTOCOL_VERSION,
    REQUEST_OPTIONS,
    ConnectionClosed,
    Meta,
    PeerRefusedError,
    ProtocolError,
    VersionMismatchError,
    error_meta,
    recv_frame,
    send_frame,
)
from lazyembed.embedder import Embedder, FloatArray
from lazyembed.errors import (
    ClientDisconnectedError,
    ClosedError,
    ConfigError,
    InputTypeError,
    LazyEmbedError,
)
from lazyembed.inputs import normalize_inputs
from lazyembed.memory import to_mb
from lazyembed.registry import Models
from lazyembed.report import State

log = logging.getLogger("lazyembed.daemon")

IDLE_EXIT_ENV = "LAZYEMBED_DAEMON_IDLE_EXIT"
DEFAULT_IDLE_EXIT = KeepAlive.after(300.0)
#: Before a model call, how long the batcher may wait for the next requests of the
#: clients the previous call served (never longer than half that call): see `_gather_locked`.
LINGER_S = 0.003
MAX_BATCH_TEXTS = 256  # texts in one model call (a bigger request goes in chunks)
# Text length (characters, a proxy for tokens) in one model call, each text counted up to
# about what the model's 256-token context holds: bounds how long a call can keep a short
# request of another client waiting.
MAX_BATCH_COST = 32_768
_MAX_TEXT_COST = 1_500
STOP_GRACE_S = 60.0  # how long a stop waits for calls in flight
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_PIN = KeepAlive.FOREVER
_DEFAULT = KeepAlive.DEFAULT
_UNCOUNTED = frozenset({"hello", "status"})  # a look, not work: a stop does not wait for them


class DaemonRunningError(LazyEmbedError, RuntimeError):
    """Another daemon already answers on the socket: this one does not start."""


class _ClientGone(Exception):
    """The client hung up while its request waited: nothing is sent."""


def idle_exit_setting(settings: Settings) -> KeepAlive:
    """``daemon_idle_exit`` from the settings (env LAZYEMBED_DAEMON_IDLE_EXIT), default 5m."""
    value = getattr(settings, "daemon_idle_exit", None)
    if value is None:
        raw = os.environ.get(IDLE_EXIT_ENV, "")
        if not raw:
            return DEFAULT_IDLE_EXIT
        value = raw
    return parse_duration(value, key="daemon_idle_exit", source=f"env {IDLE_EXIT_ENV}")


# ---- one connection ------------------------------------------------------------------------


class _Client:
    """One connection: its socket and who is on the other end. Its own thread only
    writes ``greeted``/``mismatch``/``pid``; ``closed`` is set once, under Daemon._lock."""

    __slots__ = ("batchers", "closed", "greeted", "id", "mismatch", "pid", "sock", "uid")

    def __init__(self, client_id: int, sock: socket.socket) -> None:
        self.id = client_id
        self.sock = sock
        self.pid: int | None = None
        self.uid: int | None = None
        self.greeted = False
        self.mismatch: str | None = None
        self.closed = False
        self.batchers: set[_ModelBatcher] = set()  # guarded by Daemon._lock


class _Job:
    """One `embed` request waiting for its batcher."""

    __slots__ = (
        "cancelled",
        "client",
        "done",
        "error",
        "items",
        "keep_alive",
        "parts",
        "prefix",
        "prompt",
        "prompt_name",
        "result",
        "solo",
        "taken",
    )

    def __init__(
        self,
        client: _Client,
        items: list[str],
        *,
        prefix: str,
        solo: bool,
        keep_alive: KeepAlive,
        prompt_name: str | None,
        prompt: str | None,
    ) -> None:
        self.client = client
        self.items = items
        self.prefix = prefix
        self.solo = solo  # a prompt left out of the pooling: its own model call
        self.keep_alive = keep_alive
        self.prompt_name = prompt_name
        self.prompt = prompt
        self.done = threading.Event()
        self.result: FloatArray | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.taken = 0  # items handed to the model so far (a big request goes in chunks)
        self.parts: list[FloatArray] = []  # their vectors, in order


# ---- batching across clients ---------------------------------------------------------------


#: One chunk of a request in a model call: (job, first item, past the last item).
_Chunk = tuple[_Job, int, int]


class _ModelBatcher:
    """One model (of one options set): a thread that merges queued requests into calls.

    Locks: ``_cond`` guards the queue and counters (never held during a model call);
    ``_lease_lock`` guards ``leases`` and is held while their union is handed to the
    lifecycle (`reset_leases` may unload: it is the one slow thing under it). Order:
    ``_lease_lock`` before the lifecycle's own lock, never the reverse.
    """

    def __init__(
        self,
        embedder: Embedder,
        options_key: str,
        max_texts: int,
        clock: Callable[[], float],
        max_cost: int = MAX_BATCH_COST,
    ) -> None:
        self.embedder = embedder
        self._clock = clock  # the registry's (so the lifecycle's) clock
        self.options_key = options_key
        self._max_texts = max_texts
        self._max_cost = max_cost
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._closed = False
        self.leases = ClientLeases()
        self._lease_lock = threading.Lock()
        self.batches = 0
        self.texts = 0
        self.dropped = 0
        self._last_clients = 0  # distinct clients of the last call (batcher thread only)
        self._last_call_s = 0.0  # how long it took
        self._thread = threading.Thread(
            target=self._run, name=f"lazyembed-batcher-{embedder.model_name}", daemon=True
        )
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                raise ClosedError("the daemon is stopping")
            self._queue.append(job)
            self._cond.notify()

    def close(self, timeout: float) -> None:
        """Serve what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                self._gather_locked()
                jobs = self._take_locked()
            if jobs:
                started = time.perf_counter()
                self._execute(jobs)
                self._last_call_s = time.perf_counter() - started
                self._last_clients = len({job.client for job, _, _ in jobs})

    def _gather_locked(self) -> None:
        """Under ``_cond``, before a call: if the last call served several clients and
        fewer of them have a request queued now, wait a little for the rest.

        Each of those clients sends its next request as soon as it has its answer, but
        on a machine with few cores it gets the CPU only after the model call that just
        ended gave the cores back, so without this wait the next call would start with
        one or two requests and the others would each wait a whole call: many small
        calls instead of one merged call. The wait ends as soon as every one of them is
        queued, after `LINGER_S`, or after half the last call's time, whichever is first;
        a lone client (the last call served one) never waits.
        """
        expected = self._last_clients
        if expected < 2:
            return
        deadline = time.perf_counter() + min(LINGER_S, self._last_call_s / 2)
        while not self._closed and len({job.client for job in self._queue}) < expected:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take_locked(self) -> list[_Chunk]:
        """The next model call: chunks of the queued requests, in order, up to the bounds
        (texts, and text length as a proxy for tokens). A request that does not fit
        entirely gives a chunk, and after the call goes to the back of the line with the
        rest, so a short request sent meanwhile rides in the very next call. A request
        whose prompt is left out of the pooling ("solo") is never merged. Jobs of clients
        that left (or that already failed) are dropped here: the rest never reaches the
        model."""
        chunks: list[_Chunk] = []
        count = cost = 0
        while self._queue:
            job = self._queue[0]
            if job.cancelled or job.client.closed or job.done.is_set():
                self._queue.popleft()
                if not job.done.is_set():
                    self.dropped += 1
                    job.error = ClientDisconnectedError("the client went away")
                    job.done.set()
                continue
            if chunks and (job.solo or chunks[0][0].solo):
                break
            start = stop = job.taken
            while stop < len(job.items) and count < self._max_texts:
                text_cost = min(len(job.items[stop]), _MAX_TEXT_COST)
                if count and cost + text_cost > self._max_cost:
                    break
                count += 1
                cost += text_cost
                stop += 1
            if stop == start:  # no room left in this call
                break
            self._queue.popleft()
            job.taken = stop
            chunks.append((job, start, stop))
            if stop < len(job.items):
                break  # the rest goes to the back of the line after this call
            if job.solo:
                break
        return chunks

    def _execute(self, chunks: list[_Chunk]) -> None:
        embedder = self.embedder
        lifecycle = embedder.lifecycle
        used_before = lifecycle.last_used
        jobs = [job for job, _, _ in chunks]
        vectors: FloatArray | None = None
        error: BaseException | None = None
        # The common case, only default leases: the call leaves the default lease itself,
        # and the lifecycle's explicit/pin state already is the table's (every reset sets
        # it), so no reset is needed. Otherwise the call runs under a pin, and the leases
        # the clients asked for are set right after from the table (a zero lease then
        # unloads before the answer).
        default_only = all(job.keep_alive.is_default for job in jobs)
        keep = _DEFAULT if default_only else _PIN
        if lifecycle.state is State.UNLOADED:
            # An unload ended every lease (a budget eviction even a pin): so does the table.
            with self._lease_lock:
                self.leases.clear()
        try:
            if jobs[0].solo:
                job, start, stop = chunks[0]
                vectors = embedder.embed_numpy(
                    job.items[start:stop],
                    prompt_name=job.prompt_name,
                    prompt=job.prompt,
                    keep_alive=keep,
                )
            else:
                texts = [
                    job.prefix + text if job.prefix else text
                    for job, start, stop in chunks
                    for text in job.items[start:stop]
                ]
                vectors = embedder.embed_numpy(texts, prompt="", keep_alive=keep)
        except Exception as exc:
            error = exc
        finally:
            if lifecycle.last_used != used_before:  # a model call ran (not all cache hits)
                self._settle_leases(jobs, reset=not default_only)
        row = 0
        with self._cond:
            self.batches += 1
            for job, start, stop in chunks:
                self.texts += stop - start
                if error is not None:
                    job.error = error  # its other chunks are dropped (done is set)
                    job.done.set()
                    continue
                assert vectors is not None
                job.parts.append(vectors[row : row + stop - start])
                row += stop - start
                if stop < len(job.items):
                    self._queue.append(job)  # behind whatever arrived during this call
                    continue
                job.result = job.parts[0] if len(job.parts) == 1 else np.concatenate(job.parts)
                job.parts = []
                job.done.set()

    def _settle_leases(self, jobs: list[_Job], *, reset: bool) -> None:
        now = self._clock()
        with self._lease_lock:
            for job in jobs:
                # A client that left while its call ran has been dropped from the table
                # already (`disconnect`, under this lock, after `closed` was set): its
                # lease must not come back and outlive it.
                if not job.client.closed:
                    self.leases.record(job.client.id, job.keep_alive, now)
            if reset:
                self.embedder.lifecycle.reset_leases(**self.leases.aggregate().as_kwargs())

    def warmup(self, client: _Client, keep_alive: KeepAlive) -> None:
        """Load now (never through the cache) and leave the client's lease, as
        `Embedder.warmup` does; on the connection's thread (a load is single-flight)."""
        lifecycle = self.embedder.lifecycle
        if lifecycle.state is State.UNLOADED:
            with self._lease_lock:
                self.leases.clear()
        default_only = keep_alive.is_default
        with lifecycle.acquire(_DEFAULT if default_only else _PIN):
            pass
        job = _Job(
            client, [], prefix="", solo=False, keep_alive=keep_alive, prompt_name=None, prompt=None
        )
        self._settle_leases([job], reset=not default_only)

    def disconnect(self, client: _Client) -> None:
        """The client left: drop its queued work and its leases."""
        with self._cond:
            kept = deque(job for job in self._queue if job.client is not client)
            self.dropped += len(self._queue) - len(kept)
            for job in self._queue:
                if job.client is client:
                    job.cancelled = True
                    job.done.set()
            self._queue = kept
        lifecycle = self.embedder.lifecycle
        with self._lease_lock:
            union = self.leases.disconnect(client.id, self._clock())
            if union is not None:
                lifecycle.reset_leases(**union.as_kwargs())

    def release(self, client: _Client) -> bool:
        """The client's unload_model(): its leases go; True if the model unloaded."""
        lifecycle = self.embedder.lifecycle
        with self._lease_lock:
            union = self.leases.release(client.id, self._clock())
            return lifecycle.reset_leases(**union.as_kwargs()) is not None

    def holders(self) -> list[dict[str, Any]]:
        with self._lease_lock:
            return self.leases.holders(self._clock())


# ---- the daemon -----------------------------------------------------------------------------


class Daemon:
    """The daemon: listener, connections, registries, batchers, idle exit (see module doc).

    Locks: ``_lock`` guards the tables (clients, registries, batchers) and the counters;
    it is never held during a model call, a socket operation or a batcher's lease work.
    """

    def __init__(
        self,
        paths: DaemonPaths,
        *,
        settings: Settings | None = None,
        idle_exit: KeepAlive | None = None,
        allowed_uid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_batch_texts: int = MAX_BATCH_TEXTS,
    ) -> None:
        self.paths = paths
        self.settings = _in_process(settings if settings is not None else load_settings())
        self.idle_exit = idle_exit if idle_exit is not None else idle_exit_setting(self.settings)
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self._clock = clock
        self._max_batch_texts = max_batch_texts
        self.started_at = time.time()
        self._started = clock()
        self._lock = threading.Lock()
        self._calls_done = threading.Condition(self._lock)
        self._clients: dict[int, _Client] = {}
        self._next_client = 1
        self.clients_served = 0
        self.calls = 0
        self._in_flight = 0
        self._registries: dict[str, Models] = {}
        self._batchers: dict[tuple[str, str], _ModelBatcher] = {}
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._listener: socket.socket | None = None
        self._socket_inode: tuple[int, int] | None = None  # (dev, ino) of the socket we bound
        self._owns_socket_file = True
        after = None if self.idle_exit.is_forever else self.idle_exit.seconds
        self.idle = IdleExit(after, busy=self._busy, on_exit=self._idle_stop, clock=clock)
        self._ops: dict[str, Callable[[_Client, Meta], tuple[Meta, bytes]]] = {
            "embed": self._op_embed,
            "count_tokens": self._op_count_tokens,
            "info": self._op_info,
            "memory": self._op_memory,
            "release": self._op_release,
            "set_idle_timeout": self._op_set_idle_timeout,
            "warmup": self._op_warmup,
            "status": self._op_status,
            "stop": self._op_stop,
        }

    # ---- binding -------------------------------------------------------------------------

    def bind(self, listen_fd: int | None = None) -> socket.socket:
        """Listen on the private socket (or adopt ``listen_fd`` from systemd).

        Exclusive: under the bind lock, a socket file that accepts a connection belongs to
        a live daemon (`DaemonRunningError`); only one nobody answers is stale and is
        replaced. The socket is created under umask 0o177 and chmod 0600 before listen().
        """
        if listen_fd is not None:
            sock = socket.socket(fileno=listen_fd)
            sock.setblocking(True)
            self._owns_socket_file = False
            self._listener = sock
            self._write_pid()
            return sock
        paths = self.paths
        paths.ensure()
        path = str(paths.socket)
        with FileLock(str(paths.lock) + ".bind"):
            if _answers(path):
                raise DaemonRunningError(f"a daemon already listens on {path}")
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                if not stat.S_ISSOCK(st.st_mode):
                    raise ConfigError(f"{path} exists and is not a socket: remove it by hand")
                os.unlink(path)  # stale: nobody answered
                log.info("removed the stale socket %s", path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(path)
            except BaseException:
                sock.close()
                raise
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            st = os.stat(path)
            self._socket_inode = (st.st_dev, st.st_ino)
            sock.listen(128)
            self._write_pid()
        self._listener = sock
        return sock

    def _write_pid(self) -> None:
        tmp = self.paths.pid.with_name(f"{self.paths.pid.name}.{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, self.paths.pid)

    def _remove_traces(self) -> None:
        """Unlink the socket only if it is still ours (same inode), and our pid file."""
        if self._owns_socket_file and self._socket_inode is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.paths.socket)
                if (st.st_dev, st.st_ino) == self._socket_inode:
                    os.unlink(self.paths.socket)
            self._socket_inode = None
        with contextlib.suppress(OSError, ValueError):
            if int(self.paths.pid.read_text().strip()) == os.getpid():
                os.unlink(self.paths.pid)

    # ---- the main loop -------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept connections until stopped (stop op, signal, idle exit); then clean up."""
        listener = self._listener
        if listener is None:
            raise ClosedError("bind() first")
        listen_fd = listener.fileno()
        tick = 1.0
        if self.idle.after is not None:
            tick = min(tick, max(0.05, self.idle.after / 4))
        log.info(
            "lazyembed daemon %s (pid %d) listening on %s; exits after %s idle",
            __version__,
            os.getpid(),
            self.paths.socket,
            self.idle_exit,
        )
        try:
            while not self._stopping.is_set():
                try:
                    ready, _, _ = select.select([listen_fd, self._wake_r], [], [], tick)
                except InterruptedError:  # pragma: no cover - PEP 475 retries
                    continue
                if self._wake_r in ready:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                if listen_fd in ready and not self._stopping.is_set():
                    self._accept(listener)
                self.idle.poll()
        finally:
            self._shutdown()

    def request_stop(self) -> None:
        """Stop accepting and exit the main loop (safe from signal handlers and threads)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: a clean stop (calls in flight finish, the socket is removed)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.request_stop())

    def _idle_stop(self) -> None:
        log.info("no model loaded for %s: exiting", self.idle_exit)
        self.request_stop()

    def _busy(self) -> bool:
        if self._in_flight:
            return True
        with self._lock:
            registries = list(self._registries.values())
        return any(
            e.lifecycle.state is not State.UNLOADED for m in registries for e in _embedders(m)
        )

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except OSError as exc:  # EMFILE & co: log, keep serving the others
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED):
                log.warning("accept failed: %s", exc)
            return
        sock.setblocking(True)
        with self._lock:
            client = _Client(self._next_client, sock)
            self._next_client += 1
            self._clients[client.id] = client
            self.clients_served += 1
        threading.Thread(
            target=self._serve_client,
            args=(client,),
            name=f"lazyembed-client-{client.id}",
            daemon=True,
        ).start()

    def _shutdown(self) -> None:
        """Remove the socket, let calls in flight finish, close connections and models."""
        if self._listener is not None:
            self._listener.close()
        self._remove_traces()
        deadline = time.monotonic() + STOP_GRACE_S
        with self._lock:
            while self._in_flight and time.monotonic() < deadline:
                self._calls_done.wait(0.5)
            clients = list(self._clients.values())
            batchers = list(self._batchers.values())
            registries = list(self._registries.values())
        for client in clients:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)
        for batcher in batchers:
            batcher.close(timeout=5.0)
        for registry in registries:
            try:
                registry.close()
            except Exception:
                log.exception("closing models failed")
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        log.info("lazyembed daemon (pid %d) stopped", os.getpid())

    # ---- one connection ------------------------------------------------------------------

    def _serve_client(self, client: _Client) -> None:
        sock = client.sock
        try:
            pid, uid, _ = _CRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
            )
            client.pid, client.uid = pid, uid
            if uid != self.allowed_uid:
                log.warning("refused a connection from uid %d (pid %d)", uid, pid)
                refused = PeerRefusedError(
                    f"this lazyembed daemon serves uid {self.allowed_uid} only, not {uid}"
                )
                send_frame(sock, error_meta(None, refused))
                return
            while True:
                try:
                    meta, _payload = recv_frame(sock)
                except ConnectionClosed:
                    return
                except ProtocolError as exc:
                    log.warning("client %d (pid %s): %s", client.id, client.pid, exc)
                    with contextlib.suppress(OSError):
                        send_frame(sock, error_meta(None, exc))
                    return
                # Counted in flight until the answer is sent: a stop waits for that too.
                counted = meta.get("op") not in _UNCOUNTED
                with self._call() if counted else contextlib.nullcontext():
                    try:
                        answer, payload = self._handle(client, meta)
                    except _ClientGone:
                        return
                    send_frame(sock, answer, payload)
        except OSError:
            return
        finally:
            self._drop_client(client)

    def _drop_client(self, client: _Client) -> None:
        with self._lock:
            client.closed = True
            self._clients.pop(client.id, None)
            batchers = list(client.batchers)
        for batcher in batchers:
            try:
                batcher.disconnect(client)
            except Exception:
                log.exception("dropping the leases of client %d failed", client.id)
        with contextlib.suppress(OSError):
            client.sock.close()

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.calls += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if not self._in_flight:
                    self._calls_done.notify_all()

    def _handle(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        request_id = meta.get("id")
        op = meta.get("op")
        try:
            if op == "hello":
                return self._op_hello(client, meta)
            if client.mismatch is not None:
                raise VersionMismatchError(client.mismatch)
            if not client.greeted:
                raise ProtocolError("the first request on a connection must be 'hello'")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ProtocolError(f"unknown op {op!r}")
            if self._stopping.is_set() and op != "status":
                raise ClosedError("the daemon is stopping")
            answer, payload = handler(client, meta)
        except _ClientGone:
            raise
        except Exception as exc:
            if not isinstance(exc, LazyEmbedError):
                log.exception("op %r failed", op)
            return error_meta(request_id, exc), b""
        answer["ok"] = True
        answer["id"] = request_id
        return answer, payload

    # ---- ops -----------------------------------------------------------------------------

    def _op_hello(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        client.pid = meta.get("pid") if isinstance(meta.get("pid"), int) else client.pid
        protocol, version = meta.get("protocol"), meta.get("version")
        if protocol != PROTOCOL_VERSION or version != __version__:
            client.mismatch = (
                f"the daemon runs lazyembed {__version__} (protocol {PROTOCOL_VERSION}); "
                f"the client has {version} (protocol {protocol})"
            )
            return error_meta(meta.get("id"), VersionMismatchError(client.mismatch)), b""
        client.greeted = True
        return {
            "ok": True,
            "id": meta.get("id"),
            "protocol": PROTOCOL_VERSION,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "settings": self.daemon_settings(),
        }, b""

    def daemon_settings(self) -> dict[str, Any]:
        """As the client spells its own (`client.daemon_level_settings`), to compare."""
        values = daemon_level_settings(self.settings)
        values["daemon_idle_exit"] = str(self.idle_exit)
        return values

    def _registry(self, options: object) -> tuple[str, Models]:
        """The Models registry of this set of per-request options (made once)."""
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise InputTypeError(f"options must be an object, not {type(options).__name__}")
        unknown = sorted(set(options) - set(REQUEST_OPTIONS))
        if unknown:
            raise ConfigError(
                f"not per-request settings: {', '.join(unknown)}; "
                f"per request: {', '.join(REQUEST_OPTIONS)}"
            )
        wanted = {k: v for k, v in options.items() if v is not None}
        if self.settings.intra_op_threads is None and wanted.get(
            "intra_op_threads"
        ) == effective_threads(self.settings):
            del wanted["intra_op_threads"]  # what "unset" means here: one model, not two
        key = json.dumps(wanted, sort_keys=True, default=str)
        with self._lock:
            registry = self._registries.get(key)
        if registry is not None:
            return key, registry
        settings = _in_process(load_settings(**wanted)) if wanted else self.settings
        with self._lock:
            registry = self._registries.get(key)
            if registry is None:
                registry = self._registries[key] = Models(settings=settings, clock=self._clock)
        return key, registry

    def _embedder(self, meta: Meta) -> tuple[str, Embedder]:
        key, registry = self._registry(meta.get("options"))
        model = meta.get("model")
        if model is not None and not isinstance(model, str):
            raise InputTypeError(f"model must be a str or null, not {type(model).__name__}")
        return key, registry.get(model)

    def _batcher(self, client: _Client, key: str, embedder: Embedder) -> _ModelBatcher:
        with self._lock:
            batcher = self._batchers.get((key, embedder.model_name))
            if batcher is None or batcher.embedder is not embedder:
                batcher = _ModelBatcher(embedder, key, self._max_batch_texts, self._clock)
                self._batchers[(key, embedder.model_name)] = batcher
            client.batchers.add(batcher)
        return batcher

    def _op_embed(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        key, embedder = self._embedder(meta)
        items, _ = normalize_inputs(meta.get("texts"))
        keep_alive = _keep_alive(meta.get("keep_alive"))
        prompt_name, prompt = meta.get("prompt_name"), meta.get("prompt")
        prepared = embedder.prepare()
        prefix = prepared.prompts.text_for(prompt_name, prompt)  # checks the prompt, too
        job = _Job(
            client,
            items,
            prefix=prefix,
            solo=bool(prefix) and not prepared.info.include_prompt,
            keep_alive=keep_alive,
            prompt_name=prompt_name,
            prompt=prompt,
        )
        self._batcher(client, key, embedder).submit(job)
        _wait(job, client.sock)
        if job.error is not None:
            raise job.error
        vectors = job.result
        assert vectors is not None
        out = np.ascontiguousarray(vectors, dtype="<f4")
        return {"shape": list(out.shape), "dtype": "<f4"}, out.tobytes()

    def _op_warmup(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        key, embedder = self._embedder(meta)
        keep_alive = _keep_alive(meta.get("keep_alive"))
        self._batcher(client, key, embedder).warmup(client, keep_alive)
        return {}, b""

    def _op_count_tokens(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        _, embedder = self._embedder(meta)
        truncate = meta.get("truncate", True)
        if not isinstance(truncate, bool):
            raise InputTypeError("truncate must be true or false")
        items, _ = normalize_inputs(meta.get("texts"))
        return {"counts": embedder.count_tokens(items, truncate=truncate)}, b""

    def _op_info(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        _, embedder = self._embedder(meta)
        info = embedder.prepare().info
        prompts = embedder.prompts
        return {
            "model": embedder.model_name,
            "dimension": info.dimension,
            "max_tokens": info.max_seq_length,
            "prompts": dict(prompts.prompts),
            "default_prompt_name": prompts.default_name,
            "similarity_fn_name": info.similarity_fn_name,
        }, b""

    def _op_memory(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        model = meta.get("model")
        if model is not None:
            _, embedder = self._embedder(meta)
            reports = [{"model": embedder.model_name, **embedder.memory_report().as_dict()}]
        else:
            reports = [
                {"model": e.model_name, **e.memory_report(events=False).as_dict()}
                for registry in self._registry_list()
                for e in _embedders(registry)
            ]
        return {"models": reports, "daemon": self._daemon_figures()}, b""

    def _op_release(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        model = meta.get("model")
        name = None if model is None else self._embedder(meta)[1].model_name
        with self._lock:
            batchers = [b for b in client.batchers if name is None or b.embedder.model_name == name]
        released, unloaded = [], []
        for batcher in batchers:
            released.append(batcher.embedder.model_name)
            if batcher.release(client):
                unloaded.append(batcher.embedder.model_name)
        return {"released": released, "unloaded": unloaded}, b""

    def _op_set_idle_timeout(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        seconds = meta.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float, str)):
            raise InputTypeError("seconds must be a number or 'never'")
        if meta.get("model") is not None:
            self._embedder(meta)[1].set_idle_timeout(seconds)
        else:
            _, registry = self._registry(meta.get("options"))
            registry.set_idle_timeout(seconds)
        return {}, b""

    def _op_status(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        return self.status(), b""

    def _op_stop(self, client: _Client, meta: Meta) -> tuple[Meta, bytes]:
        # The main loop stops accepting now and exits once the calls in flight, this one
        # included, have sent their answers.
        self.request_stop()
        return {}, b""

    # ---- reports -------------------------------------------------------------------------

    def _registry_list(self) -> list[Models]:
        with self._lock:
            return list(self._registries.values())

    def _daemon_figures(self) -> dict[str, Any]:
        rss_mb, pss_mb = _own_memory()
        with self._lock:
            clients = len(self._clients)
            served = self.clients_served
        return {
            "pid": os.getpid(),
            "uptime_s": round(self._clock() - self._started, 3),
            "rss_mb": rss_mb,
            "pss_mb": pss_mb,
            "clients": clients,
            "clients_served": served,
            "models_loaded": [m for r in self._registry_list() for m in r.loaded()],
        }

    def status(self) -> dict[str, Any]:
        """Everything ``lazyembed daemon status`` prints."""
        figures = self._daemon_figures()
        with self._lock:
            batchers = dict(self._batchers)
            registries = dict(self._registries)
            calls, in_flight = self.calls, self._in_flight
        models = []
        for key, registry in registries.items():
            for embedder in _embedders(registry):
                s = embedder.lifecycle.status(events=False)
                batcher = batchers.get((key, embedder.model_name))
                models.append(
                    {
                        "model": embedder.model_name,
                        "options": json.loads(key),
                        "state": s.state.value,
                        "model_mb": s.model_mb,
                        "pinned": s.pinned,
                        "in_flight": s.in_flight,
                        "idle_seconds": s.idle_seconds,
                        "unload_in_s": s.unload_in_s,
                        "idle_timeout": str(s.idle_timeout),
                        "loads": s.loads,
                        "unloads": s.unloads,
                        "leases": batcher.holders() if batcher else [],
                        "queued": batcher.queued if batcher else 0,
                        "batches": batcher.batches if batcher else 0,
                        "texts": batcher.texts if batcher else 0,
                        "dropped": batcher.dropped if batcher else 0,
                    }
                )
        return {
            "pid": figures["pid"],
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "started_at": self.started_at,
            "uptime_s": figures["uptime_s"],
            "socket": str(self.paths.socket),
            "log": str(self.paths.log),
            "rss_mb": figures["rss_mb"],
            "pss_mb": figures["pss_mb"],
            "clients": figures["clients"],
            "clients_served": figures["clients_served"],
            "calls": calls,
            "in_flight": in_flight,
            "settings": self.daemon_settings(),
            "models": models,
            "idle_exit_in_s": self.idle.seconds_left(),
        }


# ---- helpers --------------------------------------------------------------------------------


def _in_process(settings: Settings) -> Settings:
    """The daemon's own models run here, never through a daemon (itself)."""
    if getattr(settings, "share", "never") != "never":
        return dataclasses.replace(settings, share="never")  # type: ignore[call-arg, unused-ignore]
    return settings


def _embedders(registry: Models) -> list[Embedder]:
    return [registry.get(name) for name in registry.names()]


def _keep_alive(value: object) -> KeepAlive:
    """The wire's keep_alive: null (default lease), seconds, "pin", or a duration string."""
    if value == "pin":
        return KeepAlive.FOREVER
    return parse_keep_alive(value)


def _wait(job: _Job, sock: socket.socket) -> None:
    """Wait for the job; if the client hangs up meanwhile, cancel it (`_ClientGone`)."""
    while not job.done.wait(0.05):
        if _hung_up(sock):
            job.cancelled = True
            raise _ClientGone
    if job.cancelled:
        raise _ClientGone


def _hung_up(sock: socket.socket) -> bool:
    """The peer closed its end (a request is pending, so it has nothing else to send)."""
    try:
        ready, _, _ = select.select([sock], [], [], 0)
        if not ready:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _answers(path: str) -> bool:
    """Something accepts connections on ``path`` (a live daemon)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _own_memory() -> tuple[float | None, float | None]:
    """This process's RSS and PSS in MB (PSS: None where the system does not tell)."""
    proc = psutil.Process()
    try:
        full = proc.memory_full_info()
        return to_mb(full.rss), to_mb(getattr(full, "pss", None))
    except (psutil.Error, OSError):
        return to_mb(proc.memory_info().rss), None


def systemd_listen_fd() -> int | None:
    """fd 3 if systemd passed us a socket (LISTEN_PID is us, LISTEN_FDS >= 1)."""
    try:
        if int(os.environ.get("LISTEN_PID", "0")) != os.getpid():
            return None
        if int(os.environ.get("LISTEN_FDS", "0")) < 1:
            return None
    except ValueError:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    return 3


def run_daemon(paths: DaemonPaths, *, settings: Settings | None = None) -> int:
    """``lazyembed daemon run``: bind (or adopt systemd's socket), serve, exit cleanly.

    Exit code 0 also when another daemon already runs (nothing to do)."""
    os.environ["LAZYEMBED_SHARE"] = "never"  # this process and its children run models here
    daemon = Daemon(paths, settings=settings)
    try:
        daemon.bind(systemd_listen_fd())
    except DaemonRunningError as exc:
        log.info("%s", exc)
        return 0
    if threading.current_thread() is threading.main_thread():
        daemon.install_signal_handlers()
    daemon.serve_forever()
    return 0
