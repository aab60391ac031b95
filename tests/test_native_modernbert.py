"""ModernBERT converted natively (models/modernbert_graph.py) against sentence-transformers.

The ``modernbert-cls`` fixture (tools/make_model_fixtures.py: 3 layers, global - local -
global, an 8-token local window, texts past the window) runs through the real `Embedder`.
Options the fixture does not exercise (biases, the tanh GELU, an odd window, the
pre-``rope_parameters`` config keys) are checked against a small numpy forward pass,
which is itself checked against the fixture's sentence-transformers vectors first.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file, save_file

from lazyembed import Embedder
from lazyembed.errors import UnsupportedModelError
from lazyembed.models.convert import build_onnx_model, ensure_onnx
from lazyembed.models.encoder_config import read_config
from test_model_fixtures import FIXTURES, check_close, reference

NAME = "modernbert-cls"
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def _session(folder: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    model = build_onnx_model(folder).SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _batch(rows: list[list[int]], left: bool = False, pad: int = 0) -> tuple[I64, I64]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols], mask[i, cols] = row, 1
    return ids, mask


def _real_rows(hidden: Any, mask: I64) -> list[F64]:
    """Each row's real-token states, whichever side the padding is on."""
    return [np.asarray(h, np.float64)[m.astype(bool)] for h, m in zip(hidden, mask, strict=True)]


# ---- the fixture through the real Embedder ------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> Any:
    embedder = Embedder(str(FIXTURES / NAME), cache_memory_mb=0, idle_timeout="never")
    yield embedder
    embedder.close()


def test_fixture_vectors_match_sentence_transformers(embedder: Embedder) -> None:
    ref = reference(NAME)
    want = np.asarray(ref["vectors"], np.float32)
    check_close(embedder.embed_numpy(ref["texts"]), want, NAME)
    for prompt in ("query", "document"):  # sentence-transformers saved both as ""
        check_close(embedder.embed_numpy(ref["texts"], prompt_name=prompt), want, prompt)
    assert max(len(ids) for ids in ref["input_ids"]) > 2 * 8  # past the local window


def test_fixture_vectors_do_not_depend_on_the_batch(embedder: Embedder) -> None:
    ref = reference(NAME)
    texts = ref["texts"]
    batch = embedder.embed_numpy(texts)
    for i in (0, int(np.argmax([len(r) for r in ref["input_ids"]])), len(texts) - 1):
        alone = embedder.embed_numpy([texts[i]])[0]
        assert float(np.abs(alone - batch[i]).max()) < 1e-5, texts[i]


def test_hidden_states_do_not_depend_on_batch_or_padding_side() -> None:
    """Each row alone, right-padded among longer and shorter rows, and left-padded: the
    same states on its real tokens (rotary and the window see only distances)."""
    sess = _session(FIXTURES / NAME)
    rows = sorted(reference(NAME)["input_ids"], key=len)
    rows = [rows[0], rows[len(rows) // 2], rows[-1]]  # short, middle, longest (past 8)

    def run(batch: list[list[int]], left: bool) -> list[F64]:
        ids, mask = _batch(batch, left=left, pad=7)  # any pad id
        return _real_rows(sess.run(None, {"input_ids": ids, "attention_mask": mask})[0], mask)

    right, left = run(rows, False), run(rows, True)
    for i, row in enumerate(rows):
        (alone,) = run([row], False)
        assert float(np.abs(right[i] - alone).max()) < 1e-5
        assert float(np.abs(left[i] - alone).max()) < 1e-5


def test_config_fields_read_as_modernbert_names_them(tmp_path: Path) -> None:
    """norm_eps and hidden_activation, not BERT's layer_norm_eps/hidden_act (which
    answerdotai/ModernBERT-base's config.json also carries, stale: 1e-12)."""
    cfg = read_config(FIXTURES / NAME)
    assert (cfg.model_type, cfg.hidden, cfg.heads, cfg.layers) == ("modernbert", 32, 2, 3)
    assert (cfg.eps, cfg.hidden_act) == (1e-5, "gelu")
    assert (cfg.max_tokens, cfg.pad_token_id) == (256, 0)
    config = json.loads((FIXTURES / NAME / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-12}))
    assert read_config(tmp_path).eps == 1e-5


# ---- refused options ----------------------------------------------------------------------

_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"hidden_activation": "relu"}, "hidden_activation"),
    ({"hidden_activation": ["gelu"]}, "hidden_activation"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    (
        {"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e4}}},
        "rope_parameters.full_attention",
    ),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, "rope_parameters"),
    ({"layer_types": ["full_attention", "chunked_attention", "full_attention"]}, "layer_types"),
    ({"layer_types": ["full_attention"]}, "layer_types"),
    ({"layer_types": None, "global_attn_every_n_layers": 0}, "global_attn_every_n_layers"),
    ({"head_dim": 8}, "head_dim"),
    ({"norm_bias": "yes"}, "norm_bias"),
    ({"local_attention": -2}, "local_attention"),
]


@pytest.mark.parametrize(("change", "field"), _REFUSED, ids=[f for _, f in _REFUSED])
def test_unsupported_options_are_refused_by_name_before_any_work(
    change: dict[str, Any], field: str, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((FIXTURES / NAME / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"not even read")
    cache = tmp_path / "cache"
    with pytest.raises(UnsupportedModelError, match=f"{field}=") as caught:
        ensure_onnx(folder, cache_dir=cache)
    assert "ModernBERT" in str(caught.value)
    assert not (cache / "hash-index.json").exists()  # the weights were not even hashed


# ---- options the fixture lacks, against a numpy forward pass ------------------------------


def _layer_norm(x: F64, w: dict[str, F64], name: str, eps: float) -> F64:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[f"{name}.weight"] + w.get(f"{name}.bias", 0.0)


def _linear(x: F64, w: dict[str, F64], name: str) -> F64:
    return x @ w[f"{name}.weight"].T + w.get(f"{name}.bias", 0.0)


def _gelu(x: F64, tanh: bool) -> F64:
    from math import erf, pi, sqrt

    if tanh:
        return 0.5 * x * (1 + np.tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + np.vectorize(erf)(x / sqrt(2)))


def _numpy_forward(folder: Path, row: list[int]) -> F64:
    """ModernBertModel's last_hidden_state for one unpadded row, written from
    transformers 5.24's modeling_modernbert.py (float64)."""
    c = json.loads((folder / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(folder / "model.safetensors").items()}
    heads, eps, n = c["num_attention_heads"], c.get("norm_eps", 1e-5), len(row)
    d = c["hidden_size"] // heads
    every = c.get("global_attn_every_n_layers", 3)
    types = c.get("layer_types") or [
        "sliding_attention" if i % every else "full_attention"
        for i in range(c["num_hidden_layers"])
    ]
    theta = {
        "full_attention": c.get("global_rope_theta", 160000.0),
        "sliding_attention": c.get("local_rope_theta", 10000.0),
    }
    for kind, entry in (c.get("rope_parameters") or {}).items():
        theta[kind] = entry["rope_theta"]
    tanh = c.get("hidden_activation", "gelu") == "gelu_pytorch_tanh"
    pos = np.arange(n)
    near = np.abs(pos[:, None] - pos[None, :]) <= c.get("local_attention", 128) // 2
    x = _layer_norm(w["embeddings.tok_embeddings.weight"][row], w, "embeddings.norm", eps)
    for i, kind in enumerate(types):
        p = f"layers.{i}"
        h = x if i == 0 else _layer_norm(x, w, f"{p}.attn_norm", eps)
        q, k, v = _linear(h, w, f"{p}.attn.Wqkv").reshape(n, 3, heads, d).transpose(1, 2, 0, 3)
        freqs = pos[:, None] / theta[kind] ** (np.arange(0, d, 2) / d)
        cos, sin = np.cos(np.concatenate([freqs] * 2, -1)), np.sin(np.concatenate([freqs] * 2, -1))

        def rope(t: F64, cos: F64 = cos, sin: F64 = sin) -> F64:
            return t * cos + np.concatenate([-t[..., d // 2 :], t[..., : d // 2]], -1) * sin

        scores = rope(q) @ rope(k).transpose(0, 2, 1) / np.sqrt(d)
        if kind == "sliding_attention":
            scores = np.where(near, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (probs / probs.sum(-1, keepdims=True)) @ v
        x = x + _linear(ctx.transpose(1, 0, 2).reshape(n, -1), w, f"{p}.attn.Wo")
        up = _linear(_layer_norm(x, w, f"{p}.mlp_norm", eps), w, f"{p}.mlp.Wi")
        inp, gate = np.split(up, 2, -1)
        x = x + _linear(_gelu(inp, tanh) * gate, w, f"{p}.mlp.Wo")
    return _layer_norm(x, w, "final_norm", eps)


def test_the_numpy_forward_pass_gives_sentence_transformers_vectors() -> None:
    """Anchors the numpy reference the variants below are compared with."""
    ref = reference(NAME)
    rows = [r for r in ref["input_ids"] if len(r) > 1][:6]
    got = np.stack([_numpy_forward(FIXTURES / NAME, r)[0] for r in rows])
    want = np.asarray([ref["vectors"][ref["input_ids"].index(r)] for r in rows])
    check_close(got / np.linalg.norm(got, axis=1, keepdims=True), want, "numpy reference")


def _variant(tmp_path: Path, change: dict[str, Any], drop: tuple[str, ...] = ()) -> Path:
    """The fixture's model with ``change`` in its config and random weights (biases too)."""
    folder = tmp_path / "variant"
    folder.mkdir()
    shutil.copy(FIXTURES / NAME / "config.json", folder / "config.json")
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    for key in drop:
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(5)
    weights = {k: v for k, v in load_file(FIXTURES / NAME / "model.safetensors").items()}
    h, inter = config["hidden_size"], config["intermediate_size"]
    for name in list(weights):
        if name.endswith("norm.weight") and config.get("norm_bias"):
            weights[name.replace(".weight", ".bias")] = rng.normal(0, 0.3, h).astype(np.float32)
        sizes = {"attn.Wqkv": 3 * h, "attn.Wo": h, "mlp.Wi": 2 * inter, "mlp.Wo": h}
        for part, size in sizes.items():
            bias = config.get("attention_bias" if part.startswith("attn") else "mlp_bias")
            if name.endswith(f"{part}.weight") and bias:
                weights[name.replace(".weight", ".bias")] = rng.normal(0, 0.3, size).astype(
                    np.float32
                )
    save_file(weights, str(folder / "model.safetensors"))
    return folder


_VARIANTS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    (
        "biases-tanh-odd-window",
        {
            "norm_bias": True,
            "attention_bias": True,
            "mlp_bias": True,
            "hidden_activation": "gelu_pytorch_tanh",
            "local_attention": 5,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        },
        (),
    ),
    (
        "legacy-config-keys",
        {"global_attn_every_n_layers": 3, "global_rope_theta": 500.0, "local_rope_theta": 20.0},
        ("layer_types", "rope_parameters"),
    ),
]


@pytest.mark.parametrize(
    ("change", "drop"), [v[1:] for v in _VARIANTS], ids=[v[0] for v in _VARIANTS]
)
def test_config_options_match_the_numpy_forward_pass(
    change: dict[str, Any], drop: tuple[str, ...], tmp_path: Path
) -> None:
    folder = _variant(tmp_path, change, drop)
    rows = sorted(reference(NAME)["input_ids"], key=len)[-4:]  # the longest, past the window
    ids, mask = _batch(rows, pad=0)
    hidden = _session(folder).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    for got, row in zip(_real_rows(hidden, mask), rows, strict=True):
        want = _numpy_forward(folder, row)
        cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        assert float(cos.min()) >= 0.99999
        assert float(np.abs(got - want).max()) < 1e-4


def _bf16(value: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bits, rounded to nearest even (as torch rounds)."""
    bits = np.ascontiguousarray(value, np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")


def _save_bf16(weights: dict[str, npt.NDArray[np.float32]], path: Path) -> None:
    """A safetensors file of bfloat16 tensors, written by hand: numpy has no bfloat16 and
    safetensors.numpy cannot write one."""
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name, value in weights.items():
        blob = _bf16(value).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape)}
        header[name]["data_offsets"] = [offset, offset + len(blob)]
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_a_bf16_checkpoint_saved_inside_a_task_head_converts(tmp_path: Path) -> None:
    """``model.``-prefixed bf16 weights beside a head's (as ModernBertForMaskedLM saves
    them) give the numpy forward pass of the same bf16 weights, upcast."""
    weights = load_file(FIXTURES / NAME / "model.safetensors")
    folder, upcast = tmp_path / "mlm", tmp_path / "upcast"
    for where in (folder, upcast):
        where.mkdir()
        shutil.copy(FIXTURES / NAME / "config.json", where / "config.json")
    head = {"head.dense.weight": np.ones((32, 32), np.float32)}
    _save_bf16(
        {**{f"model.{k}": v for k, v in weights.items()}, **head}, folder / "model.safetensors"
    )
    rounded = {k: (_bf16(v).astype(np.uint32) << 16).view(np.float32) for k, v in weights.items()}
    save_file(rounded, str(upcast / "model.safetensors"))  # the bf16 values, as float32
    rows = sorted(reference(NAME)["input_ids"], key=len)[-2:]
    ids, mask = _batch(rows)
    hidden = _session(folder).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    for got, row in zip(_real_rows(hidden, mask), rows, strict=True):
        want = _numpy_forward(upcast, row)
        assert float(np.abs(got - want).max()) < 1e-4
        assert float(np.abs(want - _numpy_forward(FIXTURES / NAME, row)).max()) > 1e-3
