"""NomicBert converted natively (models/nomic_graph.py), both on-disk forms.

The fixtures nomic-tf5-mean-norm (transformers 5's config and q_proj/up_proj names) and
nomic-hub-mean-norm (nomic-embed-text-v1.5's config keys and Wqkv/fc11 names) go through
the real Embedder in test_model_fixtures.py (every text, every prompt). Here: vectors
that do not depend on batch composition or padding side, the other combinations of
config and weight names (transformers 5's default save, a ``bert.`` prefix, bf16), the
hub options the fixture does not vary (partial rotary, GeGLU/GLU, epsilon) against a
numpy forward anchored on sentence-transformers' vectors, and every option the builder
does not implement refused by name before any weight is read.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file, save_file

from lazyembed import Embedder
from lazyembed.errors import UnsupportedModelError
from lazyembed.models.convert import build_onnx_model
from lazyembed.models.encoder_config import read_config
from test_model_fixtures import FIXTURES, check_close, reference

TF5, HUB = "nomic-tf5-mean-norm", "nomic-hub-mean-norm"
F32 = npt.NDArray[np.float32]


def _session(folder: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    model = build_onnx_model(folder).SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _batch(rows: list[list[int]], left: bool = False) -> tuple[Any, Any]:
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


def _tokens(sess: ort.InferenceSession, rows: list[list[int]], left: bool = False) -> list[F32]:
    """Each row's real-token hidden states, from one padded batch."""
    ids, mask = _batch(rows, left)
    hidden = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
    return [h[m.astype(bool)] for h, m in zip(hidden, mask, strict=True)]


def _same_tokens(got: list[F32], want: list[F32], atol: float = 1e-5) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == b.shape and np.allclose(a, b, atol=atol), f"row {i}"


@pytest.fixture(scope="module", params=[TF5, HUB])
def nomic_fixture(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)


def test_nomic_padding_side_and_batch_do_not_change_tokens(nomic_fixture: str) -> None:
    """A left-padded row, or a row alone, gives the token states of the right-padded
    batch (rotary attention sees relative positions only; the mask hides the padding)."""
    rows = reference(nomic_fixture)["input_ids"]
    sess = _session(FIXTURES / nomic_fixture)
    right = _tokens(sess, rows)
    _same_tokens(_tokens(sess, rows, left=True), right)
    for i in (0, len(rows) // 2, int(np.argmax([len(r) for r in rows]))):
        _same_tokens(_tokens(sess, [rows[i]]), [right[i]])


def test_nomic_embedder_vectors_alone_equal_batched(nomic_fixture: str) -> None:
    ref = reference(nomic_fixture)
    texts, want = ref["texts"], np.asarray(ref["vectors"], np.float32)
    embedder = Embedder(str(FIXTURES / nomic_fixture), cache_memory_mb=0, idle_timeout="never")
    try:
        batched = embedder.embed_numpy(texts)
        longest = int(np.argmax([len(r) for r in ref["input_ids"]]))
        for i in sorted({0, 1, longest, len(texts) - 1}):
            alone = embedder.embed_numpy([texts[i]])
            check_close(alone, batched[i : i + 1], f"{nomic_fixture} text {i} alone")
            check_close(alone, want[i : i + 1], f"{nomic_fixture} text {i} reference")
    finally:
        embedder.close()


# ---- other forms of the same weights ------------------------------------------------------


def _write_safetensors(path: Path, tensors: dict[str, F32], bf16: bool) -> None:
    """A safetensors file; ``bf16``: each float32 stored as its top 16 bits (numpy has no
    bfloat16, so the writer is spelled out: 8-byte header length, JSON header, bytes)."""
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name, array in sorted(tensors.items()):
        raw = (array.view(np.uint32) >> 16).astype("<u2") if bf16 else array.astype("<f4")
        data = np.ascontiguousarray(raw).tobytes()
        header[name] = {"dtype": "BF16" if bf16 else "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _hub_names(tensors: dict[str, F32]) -> dict[str, F32]:
    """transformers 5's names -> the hub's (as save_pretrained's default writes them)."""
    out: dict[str, F32] = {}
    renames = {"self_attn.o_proj": "attn.out_proj", "mlp.up_proj": "mlp.fc11",
               "mlp.gate_proj": "mlp.fc12", "mlp.down_proj": "mlp.fc2",
               "post_attention_layernorm": "norm1", "post_mlp_layernorm": "norm2"}  # fmt: skip
    for name, array in tensors.items():
        if name.startswith("embeddings.LayerNorm."):
            out[name.replace("embeddings.LayerNorm", "emb_ln")] = array
        elif name.startswith("layers.") and ".self_attn." in name and "o_proj" not in name:
            if ".q_proj." in name:
                parts = [tensors[name.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
                wqkv = name.replace("self_attn.q_proj", "attn.Wqkv")
                out["encoder." + wqkv] = np.concatenate(parts, axis=0)
        else:
            for theirs, ours in renames.items():
                name = name.replace(theirs, ours)
            out["encoder." + name if name.startswith("layers.") else name] = array
    return out


def _copy(name: str, dest: Path) -> Path:
    shutil.copytree(FIXTURES / name, dest)
    return dest


def test_nomic_transformers5_config_with_hub_weight_names(tmp_path: Path) -> None:
    """transformers 5's default save: its config, the hub's weight names."""
    folder = _copy(TF5, tmp_path / "orig-names")
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(_hub_names(tensors), str(folder / "model.safetensors"))
    rows = reference(TF5)["input_ids"]
    _same_tokens(_tokens(_session(folder), rows), _tokens(_session(FIXTURES / TF5), rows), 1e-6)


def test_nomic_bf16_weights_under_a_prefix(tmp_path: Path) -> None:
    """bf16 weights under ``bert.`` give what the same (rounded) float32 weights give."""
    tensors = load_file(str(FIXTURES / HUB / "model.safetensors"))
    rounded = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in tensors.items()}
    fp32, bf16 = _copy(HUB, tmp_path / "fp32"), _copy(HUB, tmp_path / "bf16")
    save_file(rounded, str(fp32 / "model.safetensors"))
    _write_safetensors(bf16 / "model.safetensors", {f"bert.{k}": v for k, v in rounded.items()},
                       bf16=True)  # fmt: skip
    rows = reference(HUB)["input_ids"]
    _same_tokens(_tokens(_session(bf16), rows), _tokens(_session(fp32), rows), 1e-6)


def test_nomic_projection_biases_are_refused(tmp_path: Path) -> None:
    """A checkpoint with biases the graph would drop is refused, not converted."""
    folder = _copy(HUB, tmp_path / "biased")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["encoder.layers.1.mlp.fc2.bias"] = np.ones(48, np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(UnsupportedModelError, match=r"mlp\.fc2\.bias"):
        build_onnx_model(folder)


# ---- the hub's partial rotary, against numpy -----------------------------------------------


def _layer_norm(x: Any, w: dict[str, Any], name: str, eps: float) -> Any:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


#: nomic's gate activations: F.silu, F.gelu (exact), sigmoid (F.glu).
_ACTS: dict[str, Any] = {
    "swiglu": lambda t: t / (1.0 + np.exp(-t)),
    "geglu": lambda t: 0.5 * t * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0))),
    "glu": lambda t: 1.0 / (1.0 + np.exp(-t)),
}


def _numpy_hub_forward(folder: Path, ids: Any, mask: Any) -> Any:
    """nomic's own NomicBertModel (post-norm, rotary on the first ``rotary_emb_fraction``
    of each head, gated MLP ``fc2(act(fc12 x) * fc11 x)``) in float64, right padding."""
    cfg = json.loads((folder / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
    heads, eps = cfg["n_head"], cfg["layer_norm_epsilon"]
    d = cfg["n_embd"] // heads
    rot = int(d * cfg["rotary_emb_fraction"])
    inv = 1.0 / cfg["rotary_emb_base"] ** (np.arange(0, rot, 2) / rot)
    freqs = np.arange(ids.shape[1])[:, None] * inv
    cos, sin = np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs] * 2, -1))

    def rotary(t: Any) -> Any:
        r, rest = t[..., :rot], t[..., rot:]
        half = np.concatenate([-r[..., rot // 2 :], r[..., : rot // 2]], -1)
        return np.concatenate([r * cos + half * sin, rest], -1)

    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w, "emb_ln", eps)
    bias = (1.0 - mask[:, None, None, :]) * np.finfo(np.float64).min
    for n in range(cfg["n_layer"]):
        p = f"encoder.layers.{n}."
        qkv = (x @ w[p + "attn.Wqkv.weight"].T).reshape(*ids.shape, 3, heads, d)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        scores = rotary(q) @ rotary(k).transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(*ids.shape, heads * d)
        x = _layer_norm(x + ctx @ w[p + "attn.out_proj.weight"].T, w, p + "norm1", eps)
        gate = _ACTS[cfg["activation_function"]](x @ w[p + "mlp.fc12.weight"].T)
        mid = gate * (x @ w[p + "mlp.fc11.weight"].T)
        x = _layer_norm(x + mid @ w[p + "mlp.fc2.weight"].T, w, p + "norm2", eps)
    return x


def _mean_norm(hidden: Any, mask: Any) -> F32:
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return np.asarray(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), np.float32)


def test_nomic_numpy_forward_gives_sentence_transformers_vectors() -> None:
    """The numpy forward below is the hub model: it reproduces the fixture's vectors."""
    ref = reference(HUB)
    ids, mask = _batch(ref["input_ids"])
    got = _mean_norm(_numpy_hub_forward(FIXTURES / HUB, ids, mask), mask)
    check_close(got, np.asarray(ref["vectors"], np.float32), "numpy forward")


@pytest.mark.parametrize(
    "change",
    [
        {"rotary_emb_fraction": 0.5},  # only the first half of each head is rotated
        {"activation_function": "geglu"},
        {"activation_function": "glu"},
        {"layer_norm_epsilon": 0.5},
    ],
    ids=["half-rotary", "geglu", "glu", "epsilon"],
)
def test_nomic_hub_options_match_numpy(tmp_path: Path, change: dict[str, Any]) -> None:
    """Hub options the fixture leaves at one value, each changed: the graph follows the
    numpy forward (which then differs from the fixture's model, so the option counts)."""
    folder = _copy(HUB, tmp_path / "changed")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    rows = reference(HUB)["input_ids"]
    ids, mask = _batch(rows)
    real = mask.astype(bool)
    want = _numpy_hub_forward(folder, ids, mask)
    _same_tokens(_tokens(_session(folder), rows), [h[m] for h, m in zip(want, real, strict=True)])
    unchanged = _numpy_hub_forward(FIXTURES / HUB, ids, mask)
    assert not np.allclose(unchanged[real], want[real], atol=1e-2)


# ---- refused options ------------------------------------------------------------------------


def _config_only(tmp_path: Path, name: str, changes: dict[str, Any], drop: str = "") -> Path:
    """A folder with the fixture's config.json changed and no weights at all, so a
    refusal proves no weight was read."""
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    cfg = {k: v for k, v in {**cfg, **changes}.items() if k != drop}
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        (HUB, "prenorm", True),
        (HUB, "rotary_emb_interleaved", True),
        (HUB, "rotary_scaling_factor", 2.0),
        (HUB, "rotary_emb_scale_base", 512),
        (HUB, "qkv_proj_bias", True),
        (HUB, "mlp_fc1_bias", True),
        (HUB, "mlp_fc2_bias", True),
        (HUB, "rotary_emb_fraction", 0.0),
        (HUB, "activation_function", "gelu"),
        (HUB, "causal", True),
        (HUB, "use_rms_norm", True),
        (HUB, "parallel_block", True),
        (HUB, "num_heads_kv", 2),
        (TF5, "hidden_act", "relu"),
        (TF5, "rope_type", {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}),
        (TF5, "partial_rotary_factor", {"rope_theta": 500.0, "partial_rotary_factor": 0.5}),
    ],
)
def test_nomic_unimplemented_options_are_refused_by_name(
    tmp_path: Path, name: str, key: str, value: Any
) -> None:
    changes = {"rope_parameters": value} if isinstance(value, dict) else {key: value}
    with pytest.raises(UnsupportedModelError, match=key):
        read_config(_config_only(tmp_path, name, changes))


def test_nomic_hub_config_without_bias_keys_means_biases(tmp_path: Path) -> None:
    """nomic's config defaults qkv_proj_bias to true: a config that omits it is refused."""
    with pytest.raises(UnsupportedModelError, match="qkv_proj_bias"):
        read_config(_config_only(tmp_path, HUB, {}, drop="qkv_proj_bias"))


def test_nomic_hub_config_sizes_and_epsilon(tmp_path: Path) -> None:
    """GPT-2 names: n_positions is the token limit, layer_norm_epsilon the epsilon."""
    cfg = read_config(_config_only(tmp_path, HUB, {"layer_norm_epsilon": 1e-5}))
    assert (cfg.hidden, cfg.heads, cfg.layers, cfg.intermediate) == (48, 4, 2, 96)
    assert (cfg.max_tokens, cfg.eps) == (8192, 1e-5)
