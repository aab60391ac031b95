"""MPNet converted natively from model.safetensors (models/mpnet_graph.py).

The fixture ``mpnet-mean-norm`` (tools/make_model_fixtures.py) is a tiny random-weight
MPNet sentence-transformers model with sentence-transformers' vectors; its tokenizer pads
with id 0 and its ``[UNK]`` is id 1, MPNet's fixed padding index, so texts with unknown
characters check that such tokens are skipped when numbering positions, as transformers
does. Here: the vectors through the real `Embedder`, independence from batch and padding
side, the relative-position buckets, the config options refused, bf16 weights.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazyembed import Embedder
from lazyembed.errors import UnsupportedModelError
from lazyembed.models.checkpoint import Checkpoint
from lazyembed.models.convert import build_onnx_model, ensure_onnx
from lazyembed.models.encoder_config import read_config
from lazyembed.models.mpnet_graph import bucket_thresholds
from test_model_fixtures import check_close, reference

FIXTURES = Path(__file__).parent / "fixtures" / "models"
NAME = "mpnet-mean-norm"
MPNET = FIXTURES / NAME


def embedder(folder: Path, cache: Path) -> Embedder:
    return Embedder(
        str(folder), model_cache_dir=str(cache), cache_memory_mb=0, share="never",
        idle_timeout="never",
    )  # fmt: skip


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    with embedder(MPNET, tmp_path_factory.mktemp("cache")) as e:
        yield e


def test_vectors_and_prompts_match_sentence_transformers(mpnet: Embedder) -> None:
    ref = reference(NAME)
    assert mpnet.model_report()["transformer"] == "converted from model.safetensors"
    check_close(mpnet.embed_numpy(ref["texts"]), np.asarray(ref["vectors"], np.float32), NAME)
    for name, vectors in ref["prompt_vectors"].items():
        got = mpnet.embed_numpy(ref["texts"], prompt_name=name)
        check_close(got, np.asarray(vectors, np.float32), f"{NAME} {name}")


def test_max_tokens_counts_the_fixed_padding_index_not_pad_token_id(mpnet: Embedder) -> None:
    """transformers numbers MPNet positions from 2 whatever pad_token_id (0 here) says."""
    cfg = read_config(MPNET)
    assert (cfg.pad_token_id, cfg.max_positions, cfg.max_tokens) == (0, 130, 128)
    assert mpnet.get_max_tokens() == 128


def test_vectors_do_not_depend_on_the_batch(mpnet: Embedder) -> None:
    texts = reference(NAME)["texts"]
    together = mpnet.embed_numpy(texts)
    alone = np.stack([mpnet.embed_numpy([text])[0] for text in texts])
    reversed_ = mpnet.embed_numpy(texts[::-1])[::-1]
    check_close(alone, together, "alone")
    check_close(reversed_, together, "reversed")


@pytest.mark.parametrize("side", ["left", "right"])
def test_vectors_do_not_depend_on_the_padding_side(mpnet: Embedder, side: str) -> None:
    from lazyembed.runtime import load_runtime

    ref = reference(NAME)
    runtime = load_runtime(dataclasses.replace(mpnet.prepare().spec, padding_side=side))
    try:
        got = runtime.encode(ref["texts"]).vectors
    finally:
        runtime.close()
    check_close(got, np.asarray(ref["vectors"], np.float32), side)


def test_padding_id_does_not_matter() -> None:
    """Padding rows with id 1 (MPNet's padding index) or 0 leave the real tokens' rows alone."""
    import onnxruntime as ort

    rows = reference(NAME)["input_ids"][:6]
    width = max(len(r) for r in rows)
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], np.int64)
    sess = ort.InferenceSession(
        build_onnx_model(MPNET).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    outs = []
    for pad in (0, 1):
        ids = np.array([r + [pad] * (width - len(r)) for r in rows], np.int64)
        outs.append(sess.run(None, {"input_ids": ids, "attention_mask": mask})[0][mask == 1])
    assert float(np.abs(outs[0] - outs[1]).max()) < 1e-5


def test_bucket_thresholds_are_transformers() -> None:
    """|key - query| at which ``relative_position_bucket`` (32 buckets, max distance 128)
    moves to buckets 9..15, as torch computes it."""
    assert bucket_thresholds().tolist() == [12, 16, 23, 32, 46, 64, 91]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hidden_act", "relu"),
        ("relative_attention_num_buckets", 16),
        ("num_attention_heads", 5),
    ],
)
def test_unimplemented_options_are_refused_before_any_work(
    tmp_path: Path, field: str, value: Any
) -> None:
    folder = shutil.copytree(MPNET, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    (folder / "model.safetensors").write_bytes(b"never read")
    with pytest.raises(UnsupportedModelError, match=f"{field}={value!r}"):
        ensure_onnx(folder, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "hash-index.json").exists()


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """The safetensors layout by hand (numpy has no bfloat16): ``BF16`` stores the top
    half of each float32, rounded to nearest even."""
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name, array in tensors.items():
        bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
        if dtype == "BF16":
            rounded = bits + 0x7FFF + ((bits >> 16) & 1)
            blob = (rounded >> 16).astype("<u2").tobytes()
        else:
            blob = bits.astype("<u4").tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}  # fmt: skip
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_bf16_weights_give_the_vectors_of_their_float32_values(tmp_path: Path) -> None:
    with Checkpoint(MPNET) as ckpt:
        tensors = {name: ckpt.get(name) for name in ckpt.names()}
    bf16 = shutil.copytree(MPNET, tmp_path / "bf16")
    _write_safetensors(bf16 / "model.safetensors", tensors, "BF16")
    with Checkpoint(bf16) as ckpt:  # the same values, exactly, written as float32
        rounded = {name: ckpt.get(name) for name in ckpt.names()}
    fp32 = shutil.copytree(MPNET, tmp_path / "fp32")
    _write_safetensors(fp32 / "model.safetensors", rounded, "F32")
    texts = reference(NAME)["texts"]
    with embedder(bf16, tmp_path / "c1") as a, embedder(fp32, tmp_path / "c2") as b:
        got, want = a.embed_numpy(texts), b.embed_numpy(texts)
    assert float(np.abs(got - want).max()) < 1e-6
    fp32_vectors = np.asarray(reference(NAME)["vectors"], np.float32)
    assert float(np.min((got * fp32_vectors).sum(axis=1))) > 0.999  # bf16 rounding only
