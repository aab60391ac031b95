"""The ``lazyembed`` argument parser: every command, its flags and their help.

Flags that mirror a setting default to None (the settings decide); help texts quote
the built-in defaults of `ServerSettings`. Duration flags go through the one parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from lazyembed import __version__
from lazyembed.cli.common import SERVER_DEFAULTS, duration_flag
from lazyembed.cli.daemon import cmd_daemon
from lazyembed.cli.embed import cmd_embed
from lazyembed.cli.local import cmd_cache, cmd_models
from lazyembed.cli.remote import cmd_status, cmd_unload
from lazyembed.cli.serve import cmd_serve
from lazyembed.config import KEYS, Settings, parse_duration, parse_positive_seconds
from lazyembed.config.settings import DEFAULT_IDLE_TIMEOUT
from lazyembed.errors import ConfigError

_HTTP_TIMEOUT_S = 30.0  # how long client commands wait for the server's answer


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help="server address (default: the url setting, env LAZYEMBED_URL; else "
        f"http://HOST:PORT of the settings, {SERVER_DEFAULTS.client_url})",
    )
    parser.add_argument(
        "--api-key", help="bearer key the server expects (default: env LAZYEMBED_API_KEY)"
    )
    parser.add_argument(
        "--timeout",
        type=duration_flag(parse_positive_seconds, "--timeout"),
        default=_HTTP_TIMEOUT_S,
        help=f"how long to wait for the answer ('90s', '2m'; default {_HTTP_TIMEOUT_S:g} s)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="model name, alias or local folder (default: settings, all-MiniLM-L6-v2)"
    )


def _add_embed(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    embed = sub.add_parser(
        "embed",
        help="embed texts and print the vectors",
        description="Embed TEXT arguments and/or the lines of --file (one text per line, UTF-8).",
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
        "--batch-size",
        type=_setting_value("encode_batch_size", "--batch-size"),
        default=256,
        help="texts per model call, 1 to 4096 (default 256)",
    )
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.add_argument(
        "--share",
        choices=("never", "auto", "always"),
        help="use the user's shared daemon: always (start it if needed; the default unless "
        "the share setting / LAZYEMBED_SHARE says otherwise), auto (only if it runs), never",
    )
    _model_option(embed)
    embed.set_defaults(func=cmd_embed, prints=False)  # it checks stdout itself (-o FILE)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = SERVER_DEFAULTS
    serve = sub.add_parser(
        "serve",
        help="run the HTTP server (OpenAI and Ollama embedding APIs)",
        description="Serve /v1/embeddings (OpenAI), /api/embed (Ollama), /api/ps, /metrics, "
        f"... Binds {d.host} unless --host or the settings say otherwise. Options default "
        "to the settings (config file, LAZYEMBED_* environment).",
    )
    serve.add_argument("--host", help=f"address to bind (setting host; default {d.host})")
    serve.add_argument("--port", type=int, help=f"port (setting port; default {d.port})")
    serve.add_argument(
        "--idle-timeout",
        type=duration_flag(parse_duration, "--idle-timeout"),
        help="unload the model after this idle time ('5m', 300, 'never'; setting "
        f"idle_timeout, default {DEFAULT_IDLE_TIMEOUT})",
    )
    serve.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' (default: env LAZYEMBED_API_KEY)"
    )
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        help=f"max wait to fill a batch, ms (default {d.batch_wait_ms:g})",
    )
    serve.add_argument(
        "--batch-max-inputs",
        "--batch-max-size",
        dest="batch_max_inputs",
        type=int,
        help=f"max inputs per model batch (default {d.batch_max_inputs})",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn log level (default info)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--graceful-timeout",
        type=duration_flag(parse_positive_seconds, "--graceful-timeout"),
        help="time in-flight requests get to finish on SIGTERM ('30s', 90; setting "
        f"graceful_timeout, default {d.graceful_timeout:g} s)",
    )
    serve.add_argument(
        "--body-timeout",
        type=duration_flag(parse_positive_seconds, "--body-timeout"),
        help="time a request's body may take to arrive, else 408 and the connection is "
        f"closed ('5s'; setting server_body_timeout, default {d.body_timeout:g} s)",
    )
    _serve_models_options(serve)
    serve.set_defaults(func=cmd_serve, prints=False)


def _setting_flag(key: str, flag: str) -> Callable[[str], str]:
    """An argparse ``type=`` checking the text as the setting ``key`` would (the text
    itself goes on to the settings, so "unlimited" overrides a number from a file)."""

    def check(text: str) -> str:
        try:
            KEYS[key].parse(text, flag, "the command line")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


def _setting_value(key: str, flag: str) -> Callable[[str], object]:
    """An argparse ``type=`` parsing the text by the setting ``key``'s own parser (one
    validation for the flag and the setting), giving the parsed value."""

    def parse(text: str) -> object:
        try:
            return KEYS[key].parse(text, flag, "the command line")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _serve_models_options(serve: argparse.ArgumentParser) -> None:
    """What ``serve`` serves: models (the first is the default), any model, the budget."""
    defaults = Settings()
    serve.add_argument(
        "--model",
        action="append",
        metavar="MODEL",
        help="model name, alias or local folder to serve; repeat to serve several (the "
        "first answers requests that name no model). Default: the settings' model and "
        "serve_models (all-MiniLM-L6-v2)",
    )
    serve.add_argument(
        "--onnx-file",
        action="append",
        metavar="[MODEL=]FILE",
        help="run this ONNX export of a model folder instead of converting it: MODEL=FILE "
        "for one model (repeatable; setting onnx_files), FILE for every other model "
        "(setting onnx_file)",
    )
    serve.add_argument(
        "--any-model",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let a request name any catalogue model or model folder present on this "
        "machine, loaded on demand under the budget (setting serve_any_model; default off)",
    )
    serve.add_argument(
        "--memory-budget-mb",
        type=_setting_flag("memory_budget_mb", "--memory-budget-mb"),
        help="measured MB the loaded models may hold together, or 'unlimited' (setting "
        "memory_budget_mb; default unlimited)",
    )
    serve.add_argument(
        "--max-loaded-models",
        type=_setting_flag("max_loaded_models", "--max-loaded-models"),
        help="models in memory at once; the least recently used idle one is unloaded to "
        f"make room (setting max_loaded_models; default {defaults.max_loaded_models})",
    )
    serve.add_argument(
        "--load-timeout",
        type=duration_flag(parse_positive_seconds, "--load-timeout"),
        help="how long a load waits for room before answering 503 ('30s'; setting "
        f"load_timeout, default {defaults.load_timeout:g} s)",
    )


def _add_others(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="ask a running server: state, memory, idle countdown, events",
        description="Show what a running server reports at /api/ps.",
    )
    _client_options(status)
    status.add_argument("--events", type=int, default=5, help="last N events (default 5)")
    status.set_defaults(func=cmd_status, prints=True)

    unload = sub.add_parser(
        "unload",
        help="ask a running server to unload its model now",
        description="POST /api/unload on a running server.",
    )
    _client_options(unload)
    unload.set_defaults(func=cmd_unload, prints=True)

    models = sub.add_parser(
        "models",
        help="the models lazyembed knows and which are here; or describe one model",
        description="List the catalogue and mark what is present locally (installed "
        "package, hub cache). With --model or --describe: resolve (and if needed convert) "
        "that model and describe its source, converted ONNX file, size and hash.",
    )
    _model_option(models)
    models.add_argument(
        "--describe",
        nargs="?",
        const=True,
        default=False,
        metavar="MODEL",
        help="describe MODEL (name, alias or folder; without it: --model, else the "
        "settings' model)",
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=cmd_models, prints=True)

    cache = sub.add_parser(
        "cache",
        help="embedding cache: stats or clear",
        description="Show statistics of, or clear, the embedding cache the settings describe.",
    )
    cache.add_argument("action", choices=("stats", "clear"), help="what to do")
    _model_option(cache)
    cache.set_defaults(func=cmd_cache, prints=True)


def _add_daemon(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    daemon = sub.add_parser(
        "daemon",
        help="the shared per-user daemon: start, stop, status, run",
        description="start: make sure the daemon runs (detached); stop: ask it to exit; "
        "status: pid, uptime, socket, models and memory, clients, settings (exit code 3 when "
        "none runs); run: serve in the foreground (systemd/launchd; accepts a socket passed "
        "by systemd).",
    )
    daemon.add_argument("action", choices=("start", "stop", "status", "run"), help="what to do")
    daemon.add_argument("--json", action="store_true", help="print the raw JSON status")
    daemon.add_argument(
        "--timeout",
        type=duration_flag(parse_positive_seconds, "--timeout"),
        default=_HTTP_TIMEOUT_S,
        help=f"how long to wait for the daemon ('10s'; default {_HTTP_TIMEOUT_S:g} s)",
    )
    daemon.set_defaults(func=cmd_daemon, prints=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyembed",
        description="Local sentence embeddings (all-MiniLM-L6-v2 on ONNX Runtime) that hold "
        "the model in RAM only while it is used.",
    )
    parser.add_argument("--version", action="version", version=f"lazyembed {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_embed(sub)
    _add_serve(sub)
    _add_others(sub)
    _add_daemon(sub)
    return parser
