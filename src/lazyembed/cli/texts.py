"""Reading the texts to embed from a file or stdin: one text per line, UTF-8.

A file that is not UTF-8 text (binary, UTF-16, Latin-1) is one clear error naming the
file and where it goes wrong, not a `UnicodeDecodeError`. A UTF-8 byte-order mark is
accepted and dropped.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from lazyembed.cli.common import stdin
from lazyembed.errors import CLIError

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_lines(path: str) -> list[str]:
    """One text per line (``-`` = stdin); line ends stripped, empty lines kept as ""."""
    if path == "-":
        stream = stdin()
        buffer = getattr(stream, "buffer", None)
        if buffer is None:  # a text-only stream (replaced sys.stdin): already decoded
            return stream.read().splitlines()
        return decode_text(buffer.read(), "stdin").splitlines()
    return decode_text(Path(path).read_bytes(), path).splitlines()


def decode_text(data: bytes, name: str) -> str:
    """``data`` as UTF-8 text (a leading BOM dropped), or a CLIError naming the spot."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        what = f"byte 0x{data[exc.start]:02x} is not UTF-8"
        if data.startswith(_UTF16_BOMS):
            what += " (the file starts like UTF-16)"
        raise CLIError(_where(name, data, exc.start, what)) from None
    nul = text.find("\0")
    if nul >= 0:
        offset = len(text[:nul].encode("utf-8")) + (3 if data.startswith(codecs.BOM_UTF8) else 0)
        what = "a NUL byte (a binary or UTF-16 file?)"
        raise CLIError(_where(name, data, offset, what))
    return text


def _where(name: str, data: bytes, offset: int, what: str) -> str:
    line = data.count(b"\n", 0, offset) + 1
    return (
        f"cannot read {name}: {what} at line {line} (byte offset {offset}); "
        "expected UTF-8 text, one text per line"
    )
