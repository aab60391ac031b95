"""What the commands share: settings from flags, duration flags, the standard streams.

Every default comes from the settings (`load_settings`: file ← env ← flags); a flag
left out is None, so the settings decide. Durations are parsed by `lazyembed.config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, TextIO

from lazyembed.config import ServerSettings, Settings, load_settings
from lazyembed.errors import CLIError, ConfigError

if TYPE_CHECKING:
    from lazyembed.embedder import Embedder

#: The built-in defaults, for help texts only (the settings may say otherwise).
SERVER_DEFAULTS = ServerSettings()


class Terminated(BaseException):
    """SIGTERM arrived while a command cleans up after itself (see ``embed``): unwinds
    like Ctrl-C, so ``finally`` blocks run; ``main`` exits 143 (128 + SIGTERM)."""


def settings_for(args: argparse.Namespace, **flags: Any) -> Settings:
    """The settings with the given flags on top (None = flag not given)."""
    return load_settings(model=getattr(args, "model", None), **flags)


def make_embedder(settings: Settings) -> Embedder:
    """An in-process Embedder (`models`, `cache` look at this process's files and cache;
    `embed` goes through cli/sharing.py instead)."""
    from lazyembed.embedder import Embedder

    return Embedder(settings=dataclasses.replace(settings, share="never"))


def duration_flag(parse: Callable[..., Any], flag: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for a duration flag, parsed by the one duration parser."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text, key=flag, source="the command line")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse_flag


def stdin() -> TextIO:
    if sys.stdin is None:
        raise CLIError("stdin is closed: nothing to read for --file -")
    return sys.stdin


def stdout(*, binary: bool = False, hint: str = "") -> IO[Any]:
    """stdout (text or its binary buffer), or a CLIError when the process has none."""
    if sys.stdout is None:
        raise CLIError(f"stdout is closed: nowhere to write the result{hint}")
    return sys.stdout.buffer if binary else sys.stdout


def say(message: str) -> None:
    """One line on stderr, when there is a stderr (never on stdout instead)."""
    if sys.stderr is not None:
        print(message, file=sys.stderr)
