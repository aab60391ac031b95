"""models/checkpoint.py: safetensors read tensor by tensor, bf16 and fp16 upcast to fp32."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from lazyembed.errors import ModelConversionError
from lazyembed.models.checkpoint import Checkpoint, weight_files


def _write(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """A safetensors file from (dtype, shape, raw bytes) per name, written by hand."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blob = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [len(blob), len(blob) + len(raw)],
        }
        blob += raw
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + blob)


def _bf16(values: np.ndarray) -> bytes:
    """Round-to-nearest-even float32 -> bfloat16 bytes (what torch writes)."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def test_reads_fp32_fp16_bf16_as_float32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    _write(
        tmp_path / "model.safetensors",
        {
            "f32": ("F32", (3, 4), a.tobytes()),
            "f16": ("F16", (3, 4), a.astype("<f2").tobytes()),
            "bf16": ("BF16", (3, 4), _bf16(a)),
        },
    )
    with Checkpoint(tmp_path) as ckpt:
        assert ckpt.names() == ["bf16", "f16", "f32"]
        np.testing.assert_array_equal(ckpt.get("f32", (3, 4)), a)
        np.testing.assert_array_equal(ckpt.get("f16"), a.astype(np.float16).astype(np.float32))
        got = ckpt.get("bf16", (None, 4))
        assert got.dtype == np.float32 and got.shape == (3, 4)
        np.testing.assert_allclose(got, a, rtol=2**-8)  # bf16 keeps 8 significant bits
        assert not np.array_equal(got, a)  # it really was rounded, not stored as fp32


def test_prefixes_are_stripped_and_a_bare_name_wins(tmp_path: Path) -> None:
    one, two = np.ones(2, np.float32), np.full(2, 2.0, np.float32)
    _write(
        tmp_path / "model.safetensors",
        {
            "bert.a": ("F32", (2,), one.tobytes()),
            "b": ("F32", (2,), one.tobytes()),
            "bert.b": ("F32", (2,), two.tobytes()),
        },
    )
    with Checkpoint(tmp_path, prefixes=("bert.",)) as ckpt:
        assert ckpt.names() == ["a", "b"]
        np.testing.assert_array_equal(ckpt.get("b"), one)


def test_sharded_checkpoint_through_its_index(tmp_path: Path) -> None:
    _write(tmp_path / "model-00001-of-00002.safetensors", {"a": ("F32", (1,), b"\0\0\x80?")})
    _write(tmp_path / "model-00002-of-00002.safetensors", {"b": ("F32", (1,), b"\0\0\0@")})
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert len(weight_files(tmp_path)) == 2
    with Checkpoint(tmp_path) as ckpt:
        assert ckpt.get("a")[0] == 1.0 and ckpt.get("b")[0] == 2.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01", "too short"),
        (struct.pack("<Q", 10**12), "header size"),
        (struct.pack("<Q", 3) + b"[1]", "not an object"),
        (struct.pack("<Q", 3) + b"{{{", "not a readable safetensors file"),
    ],
)
def test_a_damaged_file_is_a_typed_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelConversionError, match=message):
        Checkpoint(tmp_path)


def test_wrong_shape_dtype_size_and_missing_tensor(tmp_path: Path) -> None:
    _write(
        tmp_path / "model.safetensors",
        {
            "a": ("F32", (2, 2), np.zeros(4, np.float32).tobytes()),
            "ints": ("I32", (2,), np.zeros(2, np.int32).tobytes()),
            "short": ("F32", (3,), np.zeros(2, np.float32).tobytes()),
        },
    )
    with Checkpoint(tmp_path) as ckpt:
        with pytest.raises(
            ModelConversionError, match=r"shape \(2, 2\), config.json implies \(2, 3\)"
        ):
            ckpt.get("a", (2, 3))
        with pytest.raises(ModelConversionError, match="dtype I32"):
            ckpt.get("ints")
        with pytest.raises(ModelConversionError, match="size does not match"):
            ckpt.get("short")
        with pytest.raises(ModelConversionError, match="'nope' is missing"):
            ckpt.get("nope")


def test_a_tensor_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "model.safetensors", {"a": ("F32", (4,), np.zeros(4, np.float32).tobytes())})
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ModelConversionError, match="outside the file"):
        Checkpoint(tmp_path)
