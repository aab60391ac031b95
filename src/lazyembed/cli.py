"""The ``lazyembed`` command: embed, serve, status, unload, models, cache.

Every error is one line on stderr and a non-zero exit code (``--debug`` shows the
traceback). Heavy imports (ONNX Runtime, FastAPI, httpx) happen inside the command that
needs them, so ``lazyembed --help`` and ``lazyembed status`` start fast.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lazyembed import __version__
from lazyembed.errors import CLIError, LazyEmbedError

if TYPE_CHECKING:
    import httpx
    import numpy as np
    import numpy.typing as npt

    from lazyembed.embedder import Embedder

DEFAULT_URL = "http://127.0.0.1:11435"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435
_PROGRESS_MIN_TEXTS = 1000  # files with fewer lines get no progress bar


# ---- helpers ----------------------------------------------------------------------------


def _make_embedder(args: argparse.Namespace, **overrides: Any) -> Embedder:
    from lazyembed.embedder import Embedder

    settings = {k: v for k, v in overrides.items() if v is not None}
    return Embedder(getattr(args, "model", None), **settings)


def _client(args: argparse.Namespace) -> httpx.Client:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout)


def _check(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a 2xx response, or a CLIError with the server's message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    message = body.get("error") if isinstance(body, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    raise CLIError(
        f"{response.request.url} answered {response.status_code}: {message or response.text[:200]}"
    )


def _fmt_mb(value: object) -> str:
    return f"{value:.1f} MB" if isinstance(value, (int, float)) else "-"


def _fmt_s(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if value == float("inf"):
        return "never"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read_lines(path: str) -> list[str]:
    """One text per line (``-`` = stdin); line ends stripped, empty lines kept as ""."""
    if path == "-":
        return sys.stdin.read().splitlines()
    return Path(path).read_text(encoding="utf-8").splitlines()


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _dumps(vector: npt.NDArray[np.float32]) -> str:
    return json.dumps(vector.tolist(), separators=(",", ":"))


# ---- commands ---------------------------------------------------------------------------


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    texts: list[str] = list(args.texts)
    if args.file is not None:
        texts.extend(_read_lines(args.file))
    if not texts:
        raise CLIError("nothing to embed: pass TEXT arguments or --file FILE")
    if args.format == "npy" and args.output is None and sys.stdout.isatty():
        raise CLIError("--format npy writes binary: pass -o FILE or redirect stdout")
    batch_size = max(1, args.batch_size)
    embedder = _make_embedder(args)
    try:
        from tqdm import tqdm

        progress = tqdm(
            total=len(texts),
            unit="text",
            file=sys.stderr,
            disable=None if len(texts) >= _PROGRESS_MIN_TEXTS and not args.quiet else True,
        )
        out: IO[Any]
        with progress, _Output(args) as out:
            if args.format == "npy":
                dim = embedder.get_embedding_dimension()
                array = np.empty((len(texts), dim), dtype=np.float32)
                start = 0
                for chunk in _chunks(texts, batch_size):
                    array[start : start + len(chunk)] = embedder.embed_numpy(chunk)
                    start += len(chunk)
                    progress.update(len(chunk))
                np.save(out, array)
                return 0
            first = True
            if args.format == "json":
                out.write("[")
            for chunk in _chunks(texts, batch_size):
                for vector in embedder.embed_numpy(chunk):
                    if args.format == "jsonl":
                        out.write(_dumps(vector) + "\n")
                    else:
                        out.write(("" if first else ",\n") + _dumps(vector))
                    first = False
                progress.update(len(chunk))
            if args.format == "json":
                out.write("]\n")
    finally:
        embedder.close()
    return 0


class _Output:
    """-o FILE (text or binary by format) or stdout; closes only what it opened."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.path: str | None = args.output
        self.binary = args.format == "npy"
        self.handle: IO[Any] | None = None

    def __enter__(self) -> IO[Any]:
        if self.path is None or self.path == "-":
            return sys.stdout.buffer if self.binary else sys.stdout
        self.handle = open(
            self.path, "wb" if self.binary else "w", encoding=None if self.binary else "utf-8"
        )
        return self.handle

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from lazyembed.server import create_app
        from lazyembed.server.app import begin_shutdown
    except ImportError as exc:
        raise CLIError(
            f"the server needs the 'server' extra ({exc.name} is missing): "
            "pip install 'lazyembed[server]'"
        ) from None
    embedder = _make_embedder(
        args,
        host=args.host,
        port=args.port,
        idle_timeout=args.idle_timeout,
        api_key=args.api_key,
        batch_wait_ms=args.batch_wait_ms,
        batch_max_size=args.batch_max_size,
    )
    settings = embedder.settings
    host = str(getattr(settings, "host", None) or args.host or DEFAULT_HOST)
    port = int(getattr(settings, "port", None) or args.port or DEFAULT_PORT)
    api_key = getattr(settings, "api_key", None) or args.api_key
    if not _is_loopback(host) and not api_key:
        print(
            f"lazyembed: warning: serving on {host} without an API key: anyone who can reach "
            "this port can use it (set LAZYEMBED_API_KEY or --api-key)",
            file=sys.stderr,
        )
    embedder.prepare()  # resolve and convert now, so a missing model fails here, not later
    app = create_app(
        embedder,
        close_embedder=True,
        graceful_timeout=args.graceful_timeout,
        **({"api_key": api_key} if api_key else {}),
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="debug" if args.debug else args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.graceful_timeout,
        lifespan="on",
    )

    class DrainingServer(uvicorn.Server):
        """uvicorn telling the app when its graceful timeout starts to run."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            begin_shutdown(app)
            await super().shutdown(sockets)

    server = DrainingServer(config)
    listener = _listen(host, port)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would end the
    # process "killed by signal". With our own (no-op) handlers restored, it returns and
    # we exit 0: a drained, clean stop.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    shown_host = f"[{host}]" if ":" in host else host
    # uvicorn logs no start line for a socket it did not bind; say where we listen.
    logging.getLogger("uvicorn.error").info(
        "lazyembed serving %s on http://%s:%d (press CTRL+C to quit)",
        embedder.model_name,
        shown_host,
        listener.getsockname()[1],
    )
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
    status = 0 if server.started else 1
    if getattr(app.state, "abandoned_work", False):
        # The graceful timeout ended with a model call running; its worker thread would
        # hold the interpreter's exit until the call finishes. Exit without joining it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket ourselves: a taken port is one clear error, not uvicorn's log."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as exc:
        listener.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (is another server running? choose another port with --port)"
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    listener.set_inheritable(True)
    return listener


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _check(client.get("/api/ps"))
    memory: dict[str, Any] = body.get("lazyembed") or {}
    if args.json:
        print(json.dumps(body, indent=2, default=str))
        return 0
    models = body.get("models") or []
    name = models[0].get("name") if models else None
    print(f"server     {args.url}")
    print(f"state      {memory.get('state', '-')}" + (f" ({name})" if name else ""))
    print(f"in flight  {memory.get('in_flight', '-')}")
    print(
        f"memory     model {_fmt_mb(memory.get('model_mb'))}, process RSS "
        f"{_fmt_mb(memory.get('process_rss_mb'))}, USS {_fmt_mb(memory.get('process_uss_mb'))}"
    )
    unload_in = memory.get("unload_in_s")
    countdown = (
        f"unloads in {_fmt_s(unload_in)}" if unload_in is not None else "no unload scheduled"
    )
    print(
        f"idle       {_fmt_s(memory.get('idle_seconds'))} idle, {countdown} "
        f"(idle timeout {_fmt_s(memory.get('idle_timeout_s'))})"
    )
    print(
        f"loads      {memory.get('loads', '-')} (last {memory.get('last_load_ms', '-')} ms), "
        f"unloads {memory.get('unloads', '-')}"
    )
    events = list(memory.get("events") or [])
    shown = events[max(0, len(events) - args.events) :]  # (not [-n:]: [-0:] is all of them)
    if shown:
        print("events")
        for event in shown:
            if isinstance(event, dict):
                print("  " + "  ".join(f"{k}={v}" for k, v in event.items()))
            else:
                print(f"  {event}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _check(client.post("/api/unload"))
    if args.json:
        print(json.dumps(body, indent=2, default=str))
    else:
        memory = body.get("memory") or {}
        what = "unloaded" if body.get("unloaded") else "was not loaded"
        print(f"model {what}; process RSS {_fmt_mb(memory.get('process_rss_mb'))}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    embedder = _make_embedder(args)
    try:
        report = embedder.model_report()
    finally:
        embedder.close()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Stats or clear of the embedding cache the settings describe (hook: Embedder.prepare)."""
    embedder = _make_embedder(args)
    try:
        cache = embedder.prepare().cache
        if cache is None:
            raise CLIError("the embedding cache is disabled in the settings")
        if args.action == "clear":
            cache.clear(all_fingerprints=True)
            print("cache cleared")
            return 0
        stats = cache.stats()
    finally:
        embedder.close()
    print(json.dumps(stats, indent=2, default=str))
    return 0


# ---- argument parsing -------------------------------------------------------------------


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("LAZYEMBED_URL", DEFAULT_URL),
        help=f"server address (env LAZYEMBED_URL; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LAZYEMBED_API_KEY"),
        help="bearer key the server expects (default: env LAZYEMBED_API_KEY)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model name, alias or local folder (default: settings, all-MiniLM-L6-v2)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyembed",
        description="Local sentence embeddings (all-MiniLM-L6-v2 on ONNX Runtime) that hold "
        "the model in RAM only while it is used.",
    )
    parser.add_argument("--version", action="version", version=f"lazyembed {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    embed = sub.add_parser(
        "embed",
        help="embed texts and print the vectors",
        description="Embed TEXT arguments and/or the lines of --file (one text per line).",
    )
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    embed.add_argument("-f", "--file", help="read one text per line from FILE ('-' = stdin)")
    embed.add_argument(
        "--format",
        choices=("json", "jsonl", "npy"),
        default="json",
        help="json: one array of vectors; jsonl: one vector per line; npy: NumPy (needs -o "
        "or redirected stdout)",
    )
    embed.add_argument("-o", "--output", help="write to FILE instead of stdout")
    embed.add_argument(
        "--batch-size", type=int, default=256, help="texts per model call (default 256)"
    )
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _model_option(embed)
    embed.set_defaults(func=cmd_embed)

    serve = sub.add_parser(
        "serve",
        help="run the HTTP server (OpenAI and Ollama embedding APIs)",
        description="Serve /v1/embeddings (OpenAI), /api/embed (Ollama), /api/ps, /metrics, "
        "... Binds 127.0.0.1 unless --host says otherwise. Options default to the "
        "settings (config file, LAZYEMBED_* environment).",
    )
    serve.add_argument("--host", help=f"address to bind (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument(
        "--idle-timeout", help="unload the model after this idle time ('5m', 300, 'never')"
    )
    serve.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: env LAZYEMBED_API_KEY)",
    )
    serve.add_argument("--batch-wait-ms", type=float, help="max wait to fill a batch (ms)")
    serve.add_argument("--batch-max-size", type=int, help="max inputs per model batch")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level (default info)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--graceful-timeout",
        type=int,
        default=30,
        help="seconds to let in-flight requests finish on SIGTERM (default 30)",
    )
    _model_option(serve)
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser(
        "status",
        help="ask a running server: state, memory, idle countdown, events",
        description="Show what a running server reports at /api/ps.",
    )
    _client_options(status)
    status.add_argument("--events", type=int, default=5, help="last N events (default 5)")
    status.set_defaults(func=cmd_status)

    unload = sub.add_parser(
        "unload",
        help="ask a running server to unload its model now",
        description="POST /api/unload on a running server.",
    )
    _client_options(unload)
    unload.set_defaults(func=cmd_unload)

    models = sub.add_parser(
        "models",
        help="where the model comes from, its converted ONNX file, size and hash",
        description="Resolve (and if needed convert) the model and describe it.",
    )
    _model_option(models)
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=cmd_models)

    cache = sub.add_parser(
        "cache",
        help="embedding cache: stats or clear",
        description="Show statistics of, or clear, the embedding cache the settings describe.",
    )
    cache.add_argument("action", choices=("stats", "clear"), help="what to do")
    _model_option(cache)
    cache.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lazyembed`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("lazyembed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lazyembed embed ... | head`: the reader went away. Point stdout at /dev/null so
        # the flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(f"lazyembed: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The error as one line, naming unexpected exception types."""
    try:
        import httpx

        if isinstance(exc, httpx.ConnectError):
            return f"cannot reach the server ({exc}); is `lazyembed serve` running?"
        if isinstance(exc, httpx.HTTPError):
            return f"{type(exc).__name__}: {exc}"
    except ImportError:
        pass
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (LazyEmbedError, OSError)):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
