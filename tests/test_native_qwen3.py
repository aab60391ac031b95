"""Qwen3 (Qwen3-Embedding layout) converted from bf16 safetensors, without torch.

The fixture qwen3-lasttoken-left (tools/make_model_fixtures.py) is a tiny random-weight
Qwen3 with grouped key/value heads, an explicit head_dim and bf16 weights; its vectors
against sentence-transformers (texts and prompts) are checked by the manifest-driven
tests/test_model_fixtures.py. Here: what a decoder adds (the vector of a text must not
depend on the padding a batch gives it, on either side) and the config options the
converter refuses by name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from lazyembed import Embedder
from lazyembed.errors import UnsupportedModelError
from lazyembed.models.checkpoint import Checkpoint
from lazyembed.models.convert import build_onnx_model, ensure_onnx
from lazyembed.models.encoder_config import read_config
from lazyembed.models.qwen3_graph import qwen3_config

FIXTURES = Path(__file__).parent / "fixtures" / "models"
NAME = "qwen3-lasttoken-left"
FOLDER = FIXTURES / NAME
F64 = npt.NDArray[np.float64]


def _reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FOLDER / "reference.json").read_text())
    return data


def _cosines(got: F64, want: F64) -> F64:
    norms = np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1)
    return np.asarray((got * want).sum(-1) / norms, np.float64)


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    model = build_onnx_model(FOLDER)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _last_token(sess: ort.InferenceSession, rows: list[list[int]], side: str) -> F64:
    """Each row's last real token's hidden state, from one batch padded on ``side``."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    hidden = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    last = [width - 1 if side == "left" else len(row) - 1 for row in rows]
    return np.asarray(hidden[np.arange(len(rows)), last], np.float64)


def test_the_qwen3_fixture_is_run_natively_from_bf16_weights() -> None:
    """The manifest-driven tests run this fixture (not "pending"), and its weights are bf16."""
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    entry = next(f for f in manifest["fixtures"] if f["path"] == NAME)
    assert "native" not in entry and "onnx_export" not in entry
    assert not (FOLDER / "onnx").exists()
    header_len = int.from_bytes((FOLDER / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((FOLDER / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    with Checkpoint(FOLDER) as ck:
        assert ck.has("layers.0.self_attn.q_norm.weight")


@pytest.mark.parametrize("side", ["left", "right"])
def test_qwen3_vectors_do_not_depend_on_padding_side_or_batch(
    session: ort.InferenceSession, side: str
) -> None:
    """One batch of every reference text padded on either side, and each text alone, give
    sentence-transformers' vectors (which it computed from a left-padded batch)."""
    ref = _reference()
    rows: list[list[int]] = ref["input_ids"]
    want = np.asarray(ref["vectors"], np.float64)
    batch = _last_token(session, rows, side)
    alone = np.concatenate([_last_token(session, [row], side) for row in rows])
    assert _cosines(batch, want).min() >= 0.99999
    assert _cosines(alone, want).min() >= 0.99999
    assert float(np.abs(batch - alone).max()) < 1e-4  # unnormalized hidden states


def test_qwen3_embedder_vector_of_a_text_is_the_same_alone_and_in_a_batch() -> None:
    ref = _reference()
    texts = [ref["texts"][0], max(ref["texts"], key=len), "", "a"]
    embedder = Embedder(str(FOLDER), cache_memory_mb=0, idle_timeout="never")
    try:
        together = embedder.embed_numpy(texts, prompt_name="query").astype(np.float64)
        alone = np.concatenate(
            [embedder.embed_numpy([t], prompt_name="query") for t in texts]
        ).astype(np.float64)
    finally:
        embedder.close()
    assert _cosines(together, alone).min() >= 0.999999


# ---- config options the converter refuses, by name, before any work -------------------


def _config() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((FOLDER / "config.json").read_text())
    return raw


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"use_sliding_window": True, "sliding_window": 8}, "use_sliding_window"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding_attention"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2}}, "linear"),
        (
            {"rope_parameters": {"full_attention": {"rope_type": "default"}}},
            "rope_parameters per layer type",
        ),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ],
)
def test_qwen3_unimplemented_options_are_refused_by_name_before_any_work(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**_config(), **change}))
    (folder / "model.safetensors").write_bytes(b"not even read")
    with pytest.raises(UnsupportedModelError, match=named):
        read_config(folder)
    cache = tmp_path / "cache"
    with pytest.raises(UnsupportedModelError, match=named):
        ensure_onnx(folder, cache_dir=cache)
    assert not (cache / "hash-index.json").exists()  # the weights were not even hashed


def test_qwen3_config_reads_the_rope_base_and_defaults_as_transformers_does(
    tmp_path: Path,
) -> None:
    """Qwen3-Embedding-0.6B's hub config: ``rope_theta`` at the top, ``rope_scaling``
    null; transformers 5 writes ``rope_parameters``; missing fields take Qwen3Config's
    defaults (head_dim 128, not hidden/heads)."""
    path = tmp_path / "config.json"
    base = {k: v for k, v in _config().items() if k not in ("rope_parameters", "head_dim")}
    hub = qwen3_config({**base, "rope_theta": 1_000_000, "rope_scaling": None}, path)
    assert hub.theta == 1_000_000.0 and hub.head_dim == 128
    v5 = qwen3_config(
        {**base, "rope_parameters": {"rope_type": "default", "rope_theta": 5.0}}, path
    )
    assert v5.theta == 5.0
    assert qwen3_config(base, path).theta == 10_000.0
    assert (qwen3_config(_config(), path).heads, qwen3_config(_config(), path).kv_heads) == (4, 2)


def test_qwen3_checkpoint_saved_from_the_causal_lm_converts_too(tmp_path: Path) -> None:
    """Weights named ``model.*`` (saved from Qwen3ForCausalLM, with an ``lm_head``) give
    the same graph output as the bare Qwen3Model's."""
    from safetensors.numpy import save_file

    folder = tmp_path / "lm"
    shutil.copytree(FOLDER, folder)
    with Checkpoint(FOLDER) as ck:
        tensors = {f"model.{n}": ck.get(n) for n in ck.names()}
        tensors["lm_head.weight"] = ck.get("embed_tokens.weight")
    (folder / "model.safetensors").unlink()
    save_file(tensors, str(folder / "model.safetensors"))
    ref = _reference()
    rows = ref["input_ids"][:4]
    got = []
    for source in (FOLDER, folder):
        model = build_onnx_model(source)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got.append(_last_token(sess, rows, "left"))
    assert float(np.abs(got[0] - got[1]).max()) < 1e-6


def test_qwen3_conversion_never_loads_the_whole_model_through_onnx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights are streamed to the data file and ONNX Runtime writes the optimized files;
    loading the model as one protobuf (GBs for Qwen3-Embedding-0.6B) is what the
    converter must never do."""
    import onnx

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the converter loaded a whole model with onnx.load")

    for name in ("load", "load_model", "load_from_string"):
        monkeypatch.setattr(onnx, name, refuse)
    converted = ensure_onnx(FOLDER, cache_dir=tmp_path / "cache")
    assert converted.converted and converted.data_path.stat().st_size > 0
    monkeypatch.undo()
    ref = _reference()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(converted.path), so, providers=["CPUExecutionProvider"])
    got = _last_token(sess, ref["input_ids"], "left")
    assert _cosines(got, np.asarray(ref["vectors"], np.float64)).min() >= 0.99999
