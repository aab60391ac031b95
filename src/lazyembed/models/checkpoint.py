"""Reading ``model.safetensors`` checkpoints one tensor at a time, bf16 and fp16 included.

Why not ``safetensors.numpy``: numpy has no bfloat16, so it cannot open the bf16 files
Qwen3 and Gemma ship, and ``load_file`` reads every tensor at once. The format is an
8-byte little-endian header length, a JSON header of ``{name: {dtype, shape,
data_offsets}}`` and the raw bytes; the file is memory-mapped and each tensor is copied
out as float32 only when the converter asks for it, so the converter's peak memory is
about one tensor plus what it has already written, not the whole checkpoint.

Sharded checkpoints (``model.safetensors.index.json`` with its ``weight_map``) read the
same way.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lazyembed.errors import ModelConversionError

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: An upper bound on the JSON header (the format's own limit is 100 MB).
_MAX_HEADER = 100_000_000

FloatArray = npt.NDArray[np.float32]

#: safetensors dtype -> numpy dtype of the stored bytes (BF16 is read as uint16).
_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    try:
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ModelConversionError(f"{path} is not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", raw_len)
            if length > _MAX_HEADER:
                raise ModelConversionError(f"{path} is not a safetensors file (header size)")
            header = json.loads(f.read(length))
    except FileNotFoundError as exc:
        raise ModelConversionError(f"{path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"{path} is not a readable safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelConversionError(f"{path} is not a safetensors file (header is not an object)")
    header.pop("__metadata__", None)
    return header, 8 + length


def _entries(path: Path) -> Iterator[tuple[str, _Entry]]:
    header, base = _read_header(path)
    size = path.stat().st_size
    for name, info in header.items():
        try:
            begin, end = (int(v) for v in info["data_offsets"])
            entry = _Entry(path, str(info["dtype"]), tuple(int(d) for d in info["shape"]),
                           base + begin, base + end)  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelConversionError(f"{path}: bad header entry for {name!r}") from exc
        if not entry.begin <= entry.end <= size:
            raise ModelConversionError(f"{path}: tensor {name!r} lies outside the file")
        yield name, entry


def _files(model_dir: Path) -> list[Path]:
    single = model_dir / WEIGHTS_FILE
    index = model_dir / INDEX_FILE
    if single.is_file() or not index.is_file():
        return [single]
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted({str(v) for v in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelConversionError(f"{index} is not a readable safetensors index: {exc}") from exc
    if any("/" in n or n.startswith(".") for n in names):
        raise ModelConversionError(f"{index} names a shard outside {model_dir}")
    return [model_dir / n for n in names]


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors file(s) of a model folder (one, or the shards an index names)."""
    return _files(Path(model_dir))


class Checkpoint:
    """The tensors of a model folder, by name, with an optional prefix stripped.

    ``prefixes``: tried in order on each stored name; the first that matches is removed
    (``"bert."`` on a ``BertModel`` saved inside a task head). An un-prefixed name wins
    over a prefixed one. Use as a context manager: the maps are closed on exit.
    """

    def __init__(self, model_dir: Path, prefixes: Iterable[str] = ("",)) -> None:
        self.model_dir = Path(model_dir)
        self._entries: dict[str, _Entry] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        order = [*(p for p in prefixes if p), ""]
        found: dict[str, tuple[int, _Entry]] = {}
        for file in _files(self.model_dir):
            for name, entry in _entries(file):
                rank, short = next(
                    (k, name[len(p) :]) for k, p in enumerate(order) if name.startswith(p)
                )
                rank = 0 if short == name else rank + 1
                if short not in found or rank < found[short][0]:
                    found[short] = (rank, entry)
        self._entries = {name: entry for name, (_, entry) in found.items()}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def has(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelConversionError(
                f"tensor {name!r} is missing from the checkpoint in {self.model_dir}"
            )
        return entry

    def _map(self, file: Path) -> mmap.mmap:
        if file not in self._maps:
            try:
                with file.open("rb") as f:
                    self._maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise ModelConversionError(f"cannot map {file}: {exc}") from exc
        return self._maps[file]

    def get(self, name: str, shape: tuple[int | None, ...] | None = None) -> FloatArray:
        """The tensor as a new contiguous float32 array; ``shape`` is checked when given
        (``None`` in it matches any size)."""
        entry = self._entry(name)
        if shape is not None and (
            len(entry.shape) != len(shape)
            or any(w is not None and g != w for g, w in zip(entry.shape, shape, strict=True))
        ):
            raise ModelConversionError(
                f"tensor {name!r} in {entry.file} has shape {entry.shape}, "
                f"config.json implies {tuple(shape)}"
            )
        stored = _DTYPES.get(entry.dtype)
        if stored is None:
            raise ModelConversionError(
                f"tensor {name!r} in {entry.file} has dtype {entry.dtype}; "
                f"lazyembed reads {', '.join(_DTYPES)}"
            )
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * stored.itemsize != entry.end - entry.begin:
            raise ModelConversionError(f"tensor {name!r} in {entry.file}: size does not match")
        mapped = self._map(entry.file)
        raw = np.frombuffer(mapped, stored, count, entry.begin)
        if entry.dtype == "BF16":  # bfloat16 is the top half of a float32
            bits = raw.astype(np.uint32)
            bits <<= 16  # in place: one float32-sized copy, not two
            out = bits.view(np.float32)
        else:
            out = raw.astype(np.float32)
        del raw
        # The copy is all the caller needs: drop the mapped pages from this process, so
        # its resident memory stays about one tensor, not the whole checkpoint read so far.
        start = entry.begin - entry.begin % mmap.PAGESIZE
        if entry.end > start:
            mapped.madvise(mmap.MADV_DONTNEED, start, entry.end - start)
        return out.reshape(entry.shape)
