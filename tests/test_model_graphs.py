"""The converter against sentence-transformers itself, on the issue-13 model fixtures.

Each fixture folder (tests/fixtures/models, built by tools/make_model_fixtures.py) holds a
tiny random-weight BERT or XLM-R model, the token ids sentence-transformers fed it and
the vectors it produced. The graph built here must give the same token embeddings: the
test pools them the way sentence-transformers' Pooling module does (pooling in the
runtime is tested elsewhere) and compares the vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from lazyembed.errors import UnsupportedModelError
from lazyembed.models.convert import build_onnx_model, ensure_onnx
from lazyembed.models.encoder_config import read_config

FIXTURES = Path(__file__).parent / "fixtures" / "models"
#: The fixtures whose transformer lazyembed builds itself and whose vector is the pooled
#: token embeddings alone (exports and Dense chains are tested end to end in
#: test_model_fixtures.py and test_onnx_export.py).
NAMES = [
    f["path"]
    for f in json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]
    if f["architecture"] in ("bert", "xlm-roberta")
    and "onnx_export" not in f
    and not f.get("dense")
]
F64 = npt.NDArray[np.float64]


def _pool(hidden: F64, mask: F64, mode: str) -> F64:
    """sentence-transformers' Pooling (one mode) over [batch, seq, hidden]."""
    m = mask[..., None]
    counts = np.maximum(m.sum(1), 1e-9)
    if mode == "cls":
        return np.asarray(hidden[:, 0], np.float64)
    if mode == "mean":
        return np.asarray((hidden * m).sum(1) / counts, np.float64)
    if mode == "mean_sqrt_len_tokens":
        return np.asarray((hidden * m).sum(1) / np.sqrt(counts), np.float64)
    if mode == "max":
        return np.asarray(np.where(m > 0, hidden, -1e9).max(1), np.float64)
    if mode == "weightedmean":
        w = np.arange(1, hidden.shape[1] + 1, dtype=np.float64)[None, :, None] * m
        return np.asarray((hidden * w).sum(1) / np.maximum(w.sum(1), 1e-9), np.float64)
    if mode == "lasttoken":
        last = mask.sum(1).astype(np.int64) - 1
        return np.asarray(hidden[np.arange(len(hidden)), last], np.float64)
    raise AssertionError(mode)


def _vectors(model: Any, ref: dict[str, Any], pad_id: int) -> F64:
    """One padded batch of all reference texts through ``model``, pooled as the fixture says."""
    source = model if isinstance(model, str) else model.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    rows = ref["input_ids"]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    hidden = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    vectors = _pool(np.asarray(hidden, np.float64), mask.astype(np.float64), ref["pooling"])
    if ref["normalize"]:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _assert_same(got: F64, want: F64) -> None:
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) < 1e-4
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert float(cos.min()) > 1 - 1e-6


@pytest.mark.parametrize("graph", ["plain", "fused"])
@pytest.mark.parametrize("name", NAMES)
def test_graph_gives_sentence_transformers_vectors(name: str, graph: Any) -> None:
    folder = FIXTURES / name
    ref = json.loads((folder / "reference.json").read_text())
    cfg = read_config(folder)
    got = _vectors(build_onnx_model(folder, graph=graph), ref, cfg.pad_token_id)
    _assert_same(got, np.asarray(ref["vectors"], np.float64))


@pytest.mark.parametrize("name", ["xlmr-mean-norm", "bert-mean-norm"])
def test_cached_conversion_gives_sentence_transformers_vectors(name: str, tmp_path: Path) -> None:
    folder = FIXTURES / name
    ref = json.loads((folder / "reference.json").read_text())
    converted = ensure_onnx(folder, cache_dir=tmp_path / "cache")
    assert converted.path.name.startswith(read_config(folder).model_type + "-fp32-")
    got = _vectors(str(converted.path), ref, read_config(folder).pad_token_id)
    _assert_same(got, np.asarray(ref["vectors"], np.float64))


def test_xlmr_positions_follow_the_attention_mask_not_the_pad_id() -> None:
    """Padding with any id (here 0, XLM-R's <s>) leaves the real tokens' rows unchanged."""
    folder = FIXTURES / "xlmr-mean-norm"
    ref = json.loads((folder / "reference.json").read_text())
    model = build_onnx_model(folder)
    pair = {**ref, "input_ids": [min(ref["input_ids"], key=len), max(ref["input_ids"], key=len)]}
    with_pad_id, with_zero = _vectors(model, pair, 1), _vectors(model, pair, 0)
    assert float(np.abs(with_pad_id - with_zero).max()) < 1e-5
    _assert_same(
        with_pad_id[:1],
        np.asarray(ref["vectors"], np.float64)[[ref["input_ids"].index(pair["input_ids"][0])]],
    )


def test_an_unsupported_model_type_is_refused_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "hidden_size": 8}))
    (folder / "model.safetensors").write_bytes(b"not even read")
    cache = tmp_path / "cache"
    with pytest.raises(UnsupportedModelError) as caught:
        ensure_onnx(folder, cache_dir=cache)
    message = str(caught.value)
    assert "gpt2" in message and "bert" in message and "xlm-roberta" in message
    assert not (cache / "hash-index.json").exists()  # the weights were not even hashed


def test_the_conversion_child_reports_an_unsupported_model_as_such(tmp_path: Path) -> None:
    from lazyembed.models import convert_child

    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "model.safetensors").write_bytes(b"")
    code = convert_child.main(["--model-dir", str(folder), "--cache-dir", str(tmp_path / "c")])
    assert code == convert_child.UNSUPPORTED_EXIT
