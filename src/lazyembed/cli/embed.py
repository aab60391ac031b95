"""``lazyembed embed``: vectors of TEXT arguments and file lines, as JSON, JSONL or .npy.

``-o FILE`` never leaves a broken FILE: the vectors go to a temporary file beside it
(``.FILE.lazyembed-XXXXXXXX.tmp``, same folder so the rename is atomic), which replaces
FILE only once everything is written and flushed. A failure, Ctrl-C or SIGTERM leaves
FILE as it was and removes the temporary file (only a SIGKILL can leave one behind).
FILE that is not a regular file (``/dev/null``, a FIFO, ``/dev/stdout``) is written
directly. On stdout nothing is printed before the first vector is ready.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import stat
import sys
from collections.abc import Iterator
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from lazyembed.cli.common import Terminated, stdout
from lazyembed.cli.sharing import chunk_vectors, embedder_for_embed, progress_bar
from lazyembed.cli.texts import read_lines
from lazyembed.errors import CLIError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from lazyembed.embedder import Embedder

PROGRESS_MIN_TEXTS = 1000  # files with fewer lines get no progress bar
TEMP_SUFFIX = ".tmp"
TEMP_MARK = ".lazyembed-"  # temporary files are named .FILE.lazyembed-XXXXXXXX.tmp


def cmd_embed(args: argparse.Namespace) -> int:
    texts: list[str] = list(args.texts)
    if args.file is not None:
        texts.extend(read_lines(args.file))
    elif not texts:
        raise CLIError("nothing to embed: pass TEXT arguments or --file FILE")
    output = _Output(args)  # before the model: a closed stdout fails now
    if output.path is None and args.format == "npy" and sys.stdout.isatty():
        raise CLIError("--format npy writes binary: pass -o FILE or redirect stdout")
    with _sigterm_unwinds():
        embedder = embedder_for_embed(args)  # the daemon by default (cli/sharing.py)
        try:
            quiet = args.quiet or sys.stderr is None or len(texts) < PROGRESS_MIN_TEXTS
            progress = progress_bar(len(texts), quiet)
            with progress, output:
                chunks = _embedded_chunks(embedder, texts, args.batch_size, progress.update)
                _write(args.format, chunks, output, len(texts), embedder)
        finally:
            embedder.close()
    return 0


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` (so ``finally`` blocks run), if this is
    the main thread; the previous handler is put back after."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _embedded_chunks(
    embedder: Embedder, texts: list[str], size: int, done: Any
) -> Iterator[npt.NDArray[np.float32]]:
    for start in range(0, len(texts), size):
        chunk = texts[start : start + size]
        yield chunk_vectors(embedder, chunk)
        done(len(chunk))


def _write(
    fmt: str,
    chunks: Iterator[npt.NDArray[np.float32]],
    out: _Output,
    count: int,
    embedder: Embedder,
) -> None:
    if fmt == "npy":
        import numpy as np

        array = np.empty((count, embedder.get_embedding_dimension()), dtype=np.float32)
        start = 0
        for vectors in chunks:
            array[start : start + len(vectors)] = vectors
            start += len(vectors)
        np.save(out, array)
        return
    first = True
    for vectors in chunks:
        for vector in vectors:
            if fmt == "jsonl":
                out.write(_dumps(vector) + "\n")
            else:
                out.write(("[" if first else ",\n") + _dumps(vector))
            first = False
    if fmt == "json":
        out.write("[]\n" if first else "]\n")


def _dumps(vector: npt.NDArray[np.float32]) -> str:
    return json.dumps(vector.tolist(), separators=(",", ":"))


class _Output:
    """Where the vectors go: stdout, FILE directly (not a regular file), or a temporary
    file that replaces FILE on success (see the module docstring).

    A context manager; ``write`` takes text (or bytes for npy) and turns a failed write
    (a full disk) into a CLIError that says FILE was left as it was.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.path: str | None = None if args.output in (None, "-") else args.output
        self.binary = args.format == "npy"
        self.stream: IO[Any] | None = None
        if self.path is None:
            self.stream = stdout(binary=self.binary, hint=": pass -o FILE")
        self.handle: IO[Any] | None = None
        self.temp: str | None = None  # the temporary file, while it exists
        self.existed = False  # FILE was there before (and is kept on failure)
        self.target = ""  # FILE through any symlinks: what the temporary file replaces

    def __enter__(self) -> _Output:
        if self.stream is not None:
            self.handle = self.stream
            return self
        assert self.path is not None
        target = os.path.realpath(self.path)  # through a symlink: replace what it points at
        try:
            mode: int | None = os.stat(target).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise self._error(exc) from None
        self.existed = mode is not None
        fd = -1
        try:
            if mode is not None and not stat.S_ISREG(mode):
                self.handle = self._open(os.open(target, os.O_WRONLY | os.O_TRUNC))
                return self
            self.target = target
            fd, temp = self._create_temp(target)
            if mode is not None:  # the old file's permissions, not the umask's
                os.chmod(temp, stat.S_IMODE(mode))
            self.handle = self._open(fd)
        except BaseException as exc:  # (Ctrl-C too: __exit__ will not run)
            if fd >= 0 and self.handle is None:
                os.close(fd)
            error = self._error(exc) if isinstance(exc, OSError) else None
            self._discard()
            if error is None:
                raise
            raise error from None
        return self

    def _create_temp(self, target: str) -> tuple[int, str]:
        """A new file beside ``target``, created with the umask's permissions."""
        folder, name = os.path.split(target)
        while True:
            temp = os.path.join(folder, f".{name}{TEMP_MARK}{secrets.token_hex(4)}{TEMP_SUFFIX}")
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            self.temp = temp
            return fd, temp

    def _open(self, fd: int) -> IO[Any]:
        if self.binary:
            return os.fdopen(fd, "wb")
        return os.fdopen(fd, "w", encoding="utf-8")

    def write(self, data: Any) -> None:
        assert self.handle is not None
        if self.stream is not None:
            self.handle.write(data)  # stdout: a broken pipe is main()'s to handle
            return
        try:
            self.handle.write(data)
        except OSError as exc:
            raise self._error(exc) from None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if self.stream is not None or self.handle is None:
            return
        handle, self.handle = self.handle, None
        try:
            if kind is None:
                handle.flush()
                if self.temp is not None:
                    os.fsync(handle.fileno())  # the data is on disk before the rename
            handle.close()
            if kind is None and self.temp is not None:
                os.replace(self.temp, self.target)
                self.temp = None
        except OSError as exc:
            if kind is None:
                raise self._error(exc) from None
        finally:
            with contextlib.suppress(OSError):
                handle.close()  # (a failed flush leaves it open)
            self._discard()

    def _discard(self) -> None:
        """Remove the temporary file, if there is one."""
        if self.temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.temp)
            self.temp = None

    def _error(self, exc: OSError) -> CLIError:
        """The failure, naming FILE and saying what became of it."""
        fate = ""
        if self.temp is not None:
            fate = f"; {self.path} was left as it was" if self.existed else " (nothing written)"
        return CLIError(f"cannot write {self.path}: {exc.strerror or exc}{fate}")
