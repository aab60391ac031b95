"""The ``lazyembed`` command: embed, serve, status, unload, models, cache.

Every error is one message on stderr (its own line breaks kept, so a list stays a list)
and a non-zero exit code (``--debug`` shows the traceback). Heavy imports (ONNX Runtime,
FastAPI, httpx) happen inside the command that needs them, so ``lazyembed --help`` and
``lazyembed status`` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from lazyembed.cli.common import Terminated, say, stdout
from lazyembed.cli.parser import build_parser
from lazyembed.cli.serve import is_loopback
from lazyembed.errors import LazyEmbedError

__all__ = ["build_parser", "is_loopback", "main"]

_is_loopback = is_loopback  # the name the tests have always used


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lazyembed`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if args.prints:
            stdout()  # a closed stdout is an error before any work, not a lost answer
        return func(args)
    except KeyboardInterrupt:
        say("lazyembed: interrupted")
        return 130
    except Terminated:
        say("lazyembed: terminated")
        return 143
    except BrokenPipeError:
        # `lazyembed embed ... | head`: the reader went away. Point stdout at /dev/null so
        # the flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            raise
        say(f"lazyembed: error: {_message(exc)}")
        return 1


def _message(exc: BaseException) -> str:
    """The error's message with its line breaks kept (trailing blanks and empty lines
    dropped), naming unexpected exception types."""
    try:
        import httpx

        if isinstance(exc, httpx.ConnectError):
            try:
                where = f" at {exc.request.url}"
            except RuntimeError:  # an error raised without its request
                where = ""
            return f"cannot reach the server{where} ({exc}); is `lazyembed serve` running?"
        if isinstance(exc, httpx.HTTPError):
            return f"{type(exc).__name__}: {exc}"
    except ImportError:
        pass
    lines = (line.rstrip() for line in str(exc).strip().splitlines())
    text = "\n".join(line for line in lines if line) or type(exc).__name__
    if isinstance(exc, (LazyEmbedError, OSError)):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"
