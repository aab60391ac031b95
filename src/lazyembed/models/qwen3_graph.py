"""The ONNX graph of a Qwen3 decoder used as an embedder (Qwen3-Embedding), node by node.

It matches transformers' ``Qwen3Model`` (``models/qwen3/modeling_qwen3.py``): token
embeddings, then per layer a pre-norm (RMSNorm) causal self-attention with grouped
key/value heads, RMSNorm on each query and key head before rotary embeddings, and a
pre-norm SwiGLU MLP; a final RMSNorm. No position table: positions enter only through
rotary embeddings. ``lm_head`` and ``tie_word_embeddings`` do not matter for embedding.

Positions are counted from the attention mask (``cumsum(mask) - 1``), not 0..seq-1 as
transformers does when no ``position_ids`` are passed. Rotary attention scores depend
only on the distance between positions, so both give the same vectors; numbering from
the first real token makes a text's vector what transformers gives for it alone,
whatever padding a batch adds on its left.

Sliding-window attention and scaled rotary variants (``rope_type`` other than
``default``) are refused by name: Qwen3-Embedding uses neither. Like transformers'
default Qwen3 rotary embedding, the rotation spans the whole ``head_dim``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyembed.errors import ModelConversionError, UnsupportedModelError
from lazyembed.models.checkpoint import Checkpoint
from lazyembed.models.encoder_config import CONFIG_FILE
from lazyembed.models.graph_ops import GraphBuilder

if TYPE_CHECKING:  # importing onnx is slow; the cache-hit path must not pay it
    import onnx

#: Bump whenever the emitted graph changes, so stale cached models are not reused.
CONVERTER_VERSION = "1"

#: Qwen3Config's defaults (transformers 5.24) for fields a config.json may omit.
_DEFAULTS: dict[str, Any] = {
    "head_dim": 128,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
}
_DEFAULT_THETA = 10_000.0
_LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class Qwen3Config:
    """The config.json fields that shape the graph."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    intermediate: int
    vocab: int
    eps: float
    theta: float
    attention_bias: bool


def _get(raw: dict[str, Any], name: str) -> Any:
    value = raw.get(name)
    return _DEFAULTS.get(name) if value is None else value


def _rope(raw: dict[str, Any], path: Path) -> float:
    """The rotary base, as transformers standardizes it: ``rope_parameters`` (or the old
    ``rope_scaling``) first, then a top-level ``rope_theta``, then 10000."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise UnsupportedModelError(f"unsupported rope_parameters={params!r} in {path}")
    nested = [key for key in params if key in _LAYER_TYPES]
    if nested:
        raise UnsupportedModelError(
            f"unsupported rope_parameters per layer type ({', '.join(nested)}) in {path}"
        )
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedModelError(
            f"unsupported rope_type={rope_type!r} (rope_parameters/rope_scaling) in {path}; "
            "lazyembed implements the 'default' rotary embedding only"
        )
    theta = params.get("rope_theta")
    if theta is None:
        theta = raw.get("rope_theta")
    return float(_DEFAULT_THETA if theta is None else theta)


def qwen3_config(raw: dict[str, Any], path: Path) -> Qwen3Config:
    """Vet ``raw`` (refusing what is not implemented, by name) and read its sizes."""
    if raw.get("use_sliding_window"):
        raise UnsupportedModelError(
            f"unsupported use_sliding_window=true in {path}; "
            "lazyembed converts Qwen3 with full attention only"
        )
    layer_types = raw.get("layer_types") or []
    other = sorted({str(t) for t in layer_types if t != "full_attention"})
    if other:
        raise UnsupportedModelError(
            f"unsupported layer_types {other} in {path}; "
            "lazyembed converts Qwen3 with full_attention layers only"
        )
    act = _get(raw, "hidden_act")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(
            f"unsupported hidden_act={act!r} in {path}; the Qwen3 converter emits 'silu' only"
        )
    theta = _rope(raw, path)
    try:
        heads = int(raw["num_attention_heads"])
        kv_raw = raw.get("num_key_value_heads", _DEFAULTS["num_key_value_heads"])
        cfg = Qwen3Config(
            hidden=int(raw["hidden_size"]),
            heads=heads,
            kv_heads=heads if kv_raw is None else int(kv_raw),
            head_dim=int(_get(raw, "head_dim")),
            layers=int(raw["num_hidden_layers"]),
            intermediate=int(raw["intermediate_size"]),
            vocab=int(raw["vocab_size"]),
            eps=float(_get(raw, "rms_norm_eps")),
            theta=theta,
            attention_bias=bool(_get(raw, "attention_bias")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelConversionError(f"{path} lacks a usable qwen3 field: {exc!r}") from exc
    if cfg.kv_heads < 1 or cfg.heads % cfg.kv_heads:
        raise ModelConversionError(
            f"{path}: num_attention_heads {cfg.heads} is not a multiple of "
            f"num_key_value_heads {cfg.kv_heads}"
        )
    if cfg.head_dim < 2 or cfg.head_dim % 2:
        raise ModelConversionError(f"{path}: head_dim {cfg.head_dim} must be even")
    return cfg


def check_config(raw: dict[str, Any], path: Path) -> None:
    """Refuse the Qwen3 options this builder does not emit (see ``architectures.py``)."""
    qwen3_config(raw, path)


@dataclass(frozen=True)
class _Shared:
    """Names shared by every layer: rotary tables [batch, 1, seq, head_dim] and the
    additive attention bias [batch, 1, seq, seq] (causal and key padding)."""

    cos: str
    sin: str
    bias: str


def _layer(
    g: GraphBuilder, ck: Checkpoint, cfg: Qwen3Config, n: int, x: str, shared: _Shared
) -> str:
    """One decoder layer; each weight is read from the checkpoint as it is emitted."""
    p = f"layers.{n}."
    hd, h = cfg.head_dim, cfg.hidden

    def proj(inp: str, name: str, out: int, into: int) -> str:
        w = ck.get(f"{p}{name}.weight", (out, into))
        b = ck.get(f"{p}{name}.bias", (out,)) if cfg.attention_bias else None
        return g.linear(inp, w, b, f"{p}{name}")

    def heads(t: str, count: int, norm: str) -> str:
        """[b, s, count*hd] -> RMSNorm over each head -> rotary -> [b, count, s, hd]."""
        r = g.op("Reshape", [t, g.ints(0, 0, count, hd)])
        r = g.rms_norm(r, ck.get(f"{p}self_attn.{norm}.weight", (hd,)), cfg.eps, f"{p}{norm}")
        r = g.op("Transpose", [r], perm=[0, 2, 1, 3])
        return g.rotate(r, shared.cos, shared.sin, hd, hd)

    y = g.rms_norm(x, ck.get(f"{p}input_layernorm.weight", (h,)), cfg.eps, f"{p}ln1")
    q = heads(proj(y, "self_attn.q_proj", cfg.heads * hd, h), cfg.heads, "q_norm")
    k = heads(proj(y, "self_attn.k_proj", cfg.kv_heads * hd, h), cfg.kv_heads, "k_norm")
    v = g.split_heads(proj(y, "self_attn.v_proj", cfg.kv_heads * hd, h), cfg.kv_heads, hd)
    ctx = g.attention(q, k, v, shared.bias, hd**-0.5, cfg.heads // cfg.kv_heads)
    attn = proj(g.merge_heads(ctx, cfg.heads, hd), "self_attn.o_proj", h, cfg.heads * hd)
    x = g.op("Add", [x, attn])

    y = g.rms_norm(x, ck.get(f"{p}post_attention_layernorm.weight", (h,)), cfg.eps, f"{p}ln2")
    m = cfg.intermediate
    gate = g.linear(y, ck.get(f"{p}mlp.gate_proj.weight", (m, h)), None, f"{p}gate")
    up = g.linear(y, ck.get(f"{p}mlp.up_proj.weight", (m, h)), None, f"{p}up")
    act = g.op("Mul", [g.silu(gate), up])
    down = g.linear(act, ck.get(f"{p}mlp.down_proj.weight", (h, m)), None, f"{p}down")
    return g.op("Add", [x, down])


def build(model_dir: Path, data: Path | None) -> onnx.ModelProto:
    """The unoptimized graph of the Qwen3 model in ``model_dir``; ``data``: stream the
    weights into this external data file (see `GraphBuilder`)."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    cfg = qwen3_config(json.loads(path.read_text(encoding="utf-8")), path)
    g = GraphBuilder(data)
    try:
        with Checkpoint(model_dir, prefixes=("model.",)) as ck:
            table = g.const("embed_tokens", ck.get("embed_tokens.weight", (cfg.vocab, cfg.hidden)))
            x = g.op("Gather", [table, "input_ids"])
            cos, sin = g.rotary_tables(g.positions_from_mask(), cfg.head_dim, cfg.theta, "rope")
            axis1 = g.ints(1)
            allowed = g.both(g.causal_allowed(g.distance()), g.key_padding_allowed())
            shared = _Shared(
                g.op("Unsqueeze", [cos, axis1]),
                g.op("Unsqueeze", [sin, axis1]),
                g.bias_from_allowed(allowed),
            )
            for n in range(cfg.layers):
                x = _layer(g, ck, cfg, n, x, shared)
            x = g.rms_norm(x, ck.get("norm.weight", (cfg.hidden,)), cfg.eps, "norm")
        model = g.finish(x, cfg.hidden, "qwen3")
    finally:
        g.close()
    model.producer_version = CONVERTER_VERSION
    return model
