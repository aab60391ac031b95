"""The native Gemma3 text converter (gemma3_graph.py, EmbeddingGemma).

Two references: a numpy re-statement of transformers 5's ``Gemma3TextModel`` on tiny
random checkpoints (the options the fixture does not cover: causal attention, an odd
sliding window, attention biases, one key/value head, the older config keys) and, when
the ``gemma3-mean-dense`` fixture is present, sentence-transformers' own vectors through
the real `Embedder`. Texts are longer than the sliding window, so its rule is tested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from safetensors.numpy import save_file

from lazyembed import Embedder
from lazyembed.errors import UnsupportedModelError
from lazyembed.models import gemma3_graph
from lazyembed.models.convert import ensure_onnx
from lazyembed.models.encoder_config import read_config
from test_model_fixtures import check_close

FIXTURE = Path(__file__).parent / "fixtures" / "models" / "gemma3-mean-dense"
F64 = npt.NDArray[np.float64]
MIN_COSINE = 0.99999
SLIDING, FULL = "sliding_attention", "full_attention"

BASE: dict[str, Any] = {
    "model_type": "gemma3_text",
    "vocab_size": 90,
    "hidden_size": 24,
    "intermediate_size": 40,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "query_pre_attn_scalar": 12,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "use_bidirectional_attention": True,
    "sliding_window": 8,
    "layer_types": [SLIDING, FULL, SLIDING],
    "rope_parameters": {
        FULL: {"rope_type": "default", "rope_theta": 1000000.0},
        SLIDING: {"rope_type": "default", "rope_theta": 100.0},
    },
}
#: Variants the fixture lacks; the second in the older config form (no layer_types, flat
#: rope keys), from which transformers derives every second layer full.
VARIANTS: dict[str, dict[str, Any]] = {
    "bidirectional-odd-window-bias": {
        "sliding_window": 7,
        "attention_bias": True,
        "num_key_value_heads": 1,
    },
    "causal-pattern": {
        "use_bidirectional_attention": False,
        "layer_types": None,
        "sliding_window_pattern": 2,
        "rope_parameters": None,
        "rope_theta": 5000.0,
        "rope_local_base_freq": 50.0,
    },
}


def _config(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**BASE, **overrides}.items() if v is not None}


def _weights(cfg: dict[str, Any], seed: int) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    h, i, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    qh, kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (cfg["vocab_size"], h)}
    shapes["norm.weight"] = (h,)
    for n in range(cfg["num_hidden_layers"]):
        p = f"layers.{n}."
        for norm in ("input", "post_attention", "pre_feedforward", "post_feedforward"):
            shapes[f"{p}{norm}_layernorm.weight"] = (h,)
        for name, out in (("q", qh * hd), ("k", kvh * hd), ("v", kvh * hd)):
            shapes[f"{p}self_attn.{name}_proj.weight"] = (out, h)
            if cfg.get("attention_bias"):
                shapes[f"{p}self_attn.{name}_proj.bias"] = (out,)
        shapes[f"{p}self_attn.o_proj.weight"] = (h, qh * hd)
        if cfg.get("attention_bias"):
            shapes[f"{p}self_attn.o_proj.bias"] = (h,)
        shapes[f"{p}self_attn.q_norm.weight"] = (hd,)
        shapes[f"{p}self_attn.k_norm.weight"] = (hd,)
        shapes[f"{p}mlp.gate_proj.weight"] = (i, h)
        shapes[f"{p}mlp.up_proj.weight"] = (i, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, i)
    scale = {"embed": 1.0, "norm": 0.3}
    return {
        name: rng.normal(0, next((s for k, s in scale.items() if k in name), 0.15), shape).astype(
            np.float32
        )
        for name, shape in shapes.items()
    }


def _rms(x: F64, w: F64, eps: float) -> F64:
    return np.asarray(x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w))


def _rope(x: F64, theta: float) -> F64:
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    freqs = np.arange(x.shape[-2])[:, None] * inv
    emb = np.concatenate([freqs, freqs], -1)
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return np.asarray(x * np.cos(emb) + rotated * np.sin(emb))


def _reference(cfg: dict[str, Any], w: dict[str, Any], ids: Any, mask: Any) -> F64:
    """``Gemma3TextModel.last_hidden_state`` in float64, read off transformers 5.24."""
    wt = {k: v.astype(np.float64) for k, v in w.items()}
    hidden, hd, eps = cfg["hidden_size"], cfg["head_dim"], cfg["rms_norm_eps"]
    qh, kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    pattern = cfg.get("sliding_window_pattern", 6)
    types = cfg.get("layer_types") or [
        SLIDING if (n + 1) % pattern else FULL for n in range(cfg["num_hidden_layers"])
    ]
    rope = cfg.get("rope_parameters") or {
        FULL: {"rope_theta": cfg["rope_theta"]},
        SLIDING: {"rope_theta": cfg["rope_local_base_freq"]},
    }
    sw, seq = cfg["sliding_window"], ids.shape[1]
    qi, ki = np.arange(seq)[:, None], np.arange(seq)[None, :]
    if cfg["use_bidirectional_attention"]:  # config: sliding_window // 2 + 1, exclusive
        allowed = {FULL: np.ones((seq, seq), bool), SLIDING: abs(qi - ki) < sw // 2 + 1}
    else:
        allowed = {FULL: ki <= qi, SLIDING: (ki <= qi) & (ki > qi - sw)}
    keys = mask.astype(bool)[:, None, None, :]

    def lin(x: F64, name: str) -> F64:
        y = x @ wt[f"{name}.weight"].T
        return np.asarray(y + wt[f"{name}.bias"] if f"{name}.bias" in wt else y)

    def heads(x: F64, n: int) -> F64:
        return x.reshape(*x.shape[:2], n, hd).transpose(0, 2, 1, 3)

    x = wt["embed_tokens.weight"][ids] * np.float32(hidden**0.5)
    for n, kind in enumerate(types):
        p = f"layers.{n}."
        h = _rms(x, wt[p + "input_layernorm.weight"], eps)
        theta = rope[kind]["rope_theta"]
        q = _rope(
            _rms(heads(lin(h, p + "self_attn.q_proj"), qh), wt[p + "self_attn.q_norm.weight"], eps),
            theta,
        )
        k = _rope(
            _rms(
                heads(lin(h, p + "self_attn.k_proj"), kvh), wt[p + "self_attn.k_norm.weight"], eps
            ),
            theta,
        )
        v = heads(lin(h, p + "self_attn.v_proj"), kvh)
        k, v = np.repeat(k, qh // kvh, axis=1), np.repeat(v, qh // kvh, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) * cfg["query_pre_attn_scalar"] ** -0.5
        scores = np.where(allowed[kind][None, None] & keys, scores, -1e30)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (probs / probs.sum(-1, keepdims=True)) @ v
        a = lin(ctx.transpose(0, 2, 1, 3).reshape(*x.shape[:2], qh * hd), p + "self_attn.o_proj")
        x = x + _rms(a, wt[p + "post_attention_layernorm.weight"], eps)
        h = _rms(x, wt[p + "pre_feedforward_layernorm.weight"], eps)
        g = lin(h, p + "mlp.gate_proj")
        g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        m = lin(g * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        x = x + _rms(m, wt[p + "post_feedforward_layernorm.weight"], eps)
    return _rms(x, wt["norm.weight"], eps)


def _model_dir(tmp_path: Path, cfg: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    weights = _weights(cfg, seed)
    save_file(weights, str(tmp_path / "model.safetensors"))
    return weights


def _run(model_dir: Path, ids: Any, mask: Any) -> F64:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    proto = gemma3_graph.build(model_dir, None).SerializeToString()
    sess = ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"])
    out = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    return np.asarray(out, np.float64)


def _batch(lengths: list[int], side: str, seed: int = 1) -> tuple[Any, Any]:
    """Random texts of these lengths (the same for a seed), padded with id 0 on ``side``."""
    rng = np.random.default_rng(seed)
    texts = [rng.integers(3, BASE["vocab_size"], n) for n in lengths]
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for row, text in enumerate(texts):
        cols = slice(0, len(text)) if side == "right" else slice(width - len(text), width)
        ids[row, cols], mask[row, cols] = text, 1
    return ids, mask


def _assert_tokens_close(got: F64, want: F64, mask: Any) -> None:
    real = mask.astype(bool)
    a, b = got[real], want[real]
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() >= MIN_COSINE, f"worst token cosine {cosine.min():.7f}"


LENGTHS = [1, 5, 23, 9, 17]  # beyond the 7- and 8-token windows


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("side", ["right", "left"])
def test_gemma3_graph_matches_reference(tmp_path: Path, variant: str, side: str) -> None:
    cfg = _config(VARIANTS[variant])
    weights = _model_dir(tmp_path, cfg)
    ids, mask = _batch(LENGTHS, side)
    _assert_tokens_close(_run(tmp_path, ids, mask), _reference(cfg, weights, ids, mask), mask)


def test_gemma3_rows_do_not_depend_on_batch_or_padding_side(tmp_path: Path) -> None:
    """A text alone, right-padded among longer ones and left-padded: the same tokens."""
    _model_dir(tmp_path, _config({}))
    ids, mask = _batch(LENGTHS, "right")
    batch = _run(tmp_path, ids, mask)
    left_ids, left_mask = _batch(LENGTHS, "left")
    left = _run(tmp_path, left_ids, left_mask)
    width = ids.shape[1]
    for row, n in enumerate(LENGTHS):
        alone = _run(tmp_path, ids[row : row + 1, :n], mask[row : row + 1, :n])[0]
        np.testing.assert_allclose(batch[row, :n], alone, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(left[row, width - n :], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"hidden_activation": "relu"}, "hidden_activation='relu'"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "rope_type='linear'"),
        (
            {"rope_parameters": {**BASE["rope_parameters"], SLIDING: {"rope_type": "yarn"}}},
            "rope_type='yarn' for sliding_attention",
        ),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 10.0}}, "rope_parameters"),
        ({"layer_types": [SLIDING, "chunked_attention", FULL]}, "chunked_attention"),
        ({"use_bidirectional_attention": "yes"}, "use_bidirectional_attention='yes'"),
    ],
)
def test_gemma3_refuses_what_it_does_not_emit(
    tmp_path: Path, overrides: dict[str, Any], named: str
) -> None:
    """Refused from config.json alone (no weights are there to read)."""
    (tmp_path / "config.json").write_text(json.dumps(_config(overrides)))
    with pytest.raises(UnsupportedModelError, match=named.replace("(", r"\(").replace("[", r"\[")):
        read_config(tmp_path)


def test_gemma3_config_sizes(tmp_path: Path) -> None:
    """read_config (encoder_config) reads the sizes lazyembed reports for Gemma3."""
    (tmp_path / "config.json").write_text(
        json.dumps({**_config({}), "max_position_embeddings": 64})
    )
    cfg = read_config(tmp_path)
    assert (cfg.model_type, cfg.hidden, cfg.layers, cfg.max_tokens) == ("gemma3_text", 24, 3, 64)


# ---- the gemma3-mean-dense fixture (bf16 weights, two Dense, prompts) ------------------


@pytest.fixture(scope="module")
def gemma() -> Iterator[tuple[Embedder, dict[str, Any]]]:
    ref = json.loads((FIXTURE / "reference.json").read_text())
    embedder = Embedder(str(FIXTURE), cache_memory_mb=0, idle_timeout="never")
    yield embedder, ref
    embedder.close()


def test_gemma3_fixture_matches_sentence_transformers(gemma: tuple[Embedder, Any]) -> None:
    """Every text (past the 8-token window, empty, whitespace), plain and with each prompt
    by name, from bf16 model.safetensors through the real Embedder."""
    embedder, ref = gemma
    assert json.loads((FIXTURE / "config.json").read_text())["dtype"] == "bfloat16"
    assert ref["texts_longer_than_window"] > 0
    check_close(embedder.embed_numpy(ref["texts"]), np.asarray(ref["vectors"]), "plain")
    assert set(ref["prompt_vectors"]) == {"query", "document"}
    for name, vectors in ref["prompt_vectors"].items():
        got = embedder.embed_numpy(ref["texts"], prompt_name=name)
        check_close(got, np.asarray(vectors), name)


def test_gemma3_fixture_text_alone_equals_text_in_a_batch(gemma: tuple[Embedder, Any]) -> None:
    embedder, ref = gemma
    texts = ref["texts"]
    batch = embedder.embed_numpy(texts)
    lengths = [len(ids) for ids in ref["input_ids"]]
    for i in {int(np.argmin(lengths)), int(np.argmax(lengths)), len(texts) // 2}:
        alone = embedder.embed_numpy([texts[i]])[0]
        np.testing.assert_allclose(alone, batch[i], rtol=1e-5, atol=2e-6)


def test_gemma3_fixture_graph_ignores_the_padding_side(tmp_path: Path) -> None:
    """The converted graph gives each real token the same state padded left or right."""
    ref = json.loads((FIXTURE / "reference.json").read_text())
    converted = ensure_onnx(FIXTURE, cache_dir=tmp_path)
    sess = ort.InferenceSession(str(converted.path), providers=["CPUExecutionProvider"])
    rows = ref["input_ids"]
    width = max(len(r) for r in rows)
    states = {}
    for side in ("right", "left"):
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows):
            cols = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            ids[i, cols], mask[i, cols] = row, 1
        out = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
        states[side] = out[mask.astype(bool)]
    np.testing.assert_allclose(states["left"], states["right"], rtol=1e-4, atol=1e-5)
