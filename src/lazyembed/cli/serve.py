"""``lazyembed serve``: the HTTP server under uvicorn, on a socket bound here.

Host, port, key, batching, the models served and their memory budget come from the
settings; flags override them. One `Models` registry holds every model served (``model``
first, then ``serve_models``; with ``serve_any_model`` any model present here, on
demand). SIGTERM drains in-flight requests for the graceful timeout, then exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

from lazyembed.cli.common import say
from lazyembed.config import ServerSettings, Settings, load_settings
from lazyembed.errors import CLIError
from lazyembed.models.catalogue import canonical_name

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - the extra's check; used in _uvicorn_server

        from lazyembed.server import create_app
    except ImportError as exc:
        raise CLIError(
            f"the server needs the 'server' extra ({exc.name} is missing): "
            "pip install 'lazyembed[server]'"
        ) from None
    from lazyembed.registry import Models

    settings = serve_settings(args)
    server = settings.server
    if not is_loopback(server.host) and not server.api_key:
        say(
            f"lazyembed: warning: serving on {server.host} without an API key: anyone who can "
            "reach this port can use it (set LAZYEMBED_API_KEY or --api-key)"
        )
    models = Models(settings=dataclasses.replace(settings, share="never"))  # it is a server
    served = served_names(settings)
    for name in served:  # resolve and convert now, so a missing model fails here, not later
        models.get(name).prepare()
    app = create_app(models, close_embedder=True)  # its settings are `settings.server`
    uvicorn_server = _uvicorn_server(app, server, args)
    listener = _listen(server.host, server.port)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would end the
    # process "killed by signal". With our own (no-op) handlers restored, it returns and
    # we exit 0: a drained, clean stop.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    shown_host = f"[{server.host}]" if ":" in server.host else server.host
    # uvicorn logs no start line for a socket it did not bind; say where we listen.
    logging.getLogger("uvicorn.error").info(
        "lazyembed serving %s%s on http://%s:%d (press CTRL+C to quit)",
        ", ".join(served),
        " (and any model present here, on demand)" if server.any_model else "",
        shown_host,
        listener.getsockname()[1],
    )
    try:
        uvicorn_server.run(sockets=[listener])
    finally:
        listener.close()
    status = 0 if uvicorn_server.started else 1
    if getattr(app.state, "abandoned_work", False):
        # The graceful timeout ended with a model call running; its worker thread would
        # hold the interpreter's exit until the call finishes. Exit without joining it.
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        os._exit(status)
    return status


def serve_settings(args: argparse.Namespace) -> Settings:
    """The settings with the flags on top. ``--model`` (repeatable) names every model
    served: the first becomes ``model``, the others ``serve_models``."""
    named: list[str] = args.model or []
    onnx_file, onnx_files = _onnx_flags(getattr(args, "onnx_file", None) or [])
    return load_settings(
        model=named[0] if named else None,
        serve_models=named[1:] if named else None,
        onnx_file=onnx_file,
        onnx_files=onnx_files,
        serve_any_model=args.any_model,
        memory_budget_mb=args.memory_budget_mb,
        max_loaded_models=args.max_loaded_models,
        load_timeout=args.load_timeout,
        host=args.host,
        port=args.port,
        idle_timeout=args.idle_timeout,
        api_key=args.api_key,
        server_batch_wait_ms=args.batch_wait_ms,
        server_batch_max_inputs=args.batch_max_inputs,
        graceful_timeout=args.graceful_timeout,
        server_body_timeout=args.body_timeout,
    )


def _onnx_flags(values: list[str]) -> tuple[str | None, list[tuple[str, str]] | None]:
    """``--onnx-file`` values: ``MODEL=FILE`` per model, a bare ``FILE`` for the rest."""
    default: str | None = None
    per_model: list[tuple[str, str]] = []
    for value in values:
        model, sep, file = value.rpartition("=")
        if not sep:
            default = value
        elif not model.strip() or not file.strip():
            raise CLIError(f"--onnx-file {value!r}: expected MODEL=FILE or FILE")
        else:
            per_model.append((model, file))
    return default, per_model or None


def served_names(settings: Settings) -> list[str]:
    """The models served from the start: ``model`` first, then ``serve_models``."""
    names = [settings.model, *settings.server.models]
    return list(dict.fromkeys(canonical_name(name) for name in names))


def _uvicorn_server(
    app: FastAPI, server: ServerSettings, args: argparse.Namespace
) -> uvicorn.Server:
    """uvicorn configured from the settings, telling the app when its graceful timeout
    starts to run."""
    import uvicorn

    from lazyembed.server import HalfCloseProtocol, begin_shutdown

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            begin_shutdown(app)
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_level="debug" if args.debug else args.log_level,
        access_log=args.access_log,
        http=HalfCloseProtocol,
        # uvicorn takes whole seconds; rounding up never cuts the app's own timeout short.
        timeout_graceful_shutdown=math.ceil(server.graceful_timeout),
        lifespan="on",
    )
    return DrainingServer(config)


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
