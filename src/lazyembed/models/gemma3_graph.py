"""The ONNX graph of a Gemma3 text model (``gemma3_text``: EmbeddingGemma), node by node.

Matches transformers 5's ``Gemma3TextModel`` in fp32: token embeddings times
``sqrt(hidden_size)`` (folded into the table: the same fp32 product), then per layer
RMSNorm in Gemma's ``x * (1 + w)`` form around attention and the GeGLU MLP (pre and post
norms both), q/k RMSNorm per head before the rotary embedding, scores scaled by
``query_pre_attn_scalar ** -0.5``, grouped key/value heads, and a final RMSNorm.

Layers are ``sliding_attention`` or ``full_attention`` (``layer_types``, else every
``sliding_window_pattern``-th layer is full), each type with its own rotary theta.
With ``use_bidirectional_attention`` (EmbeddingGemma) full layers see every real token
and sliding layers the tokens with ``|key - query| <= sliding_window // 2`` (transformers
turns the window into ``sliding_window // 2 + 1``, exclusive, on both sides); without it
the masks are causal, sliding layers seeing the last ``sliding_window`` tokens.

Positions are ``0..seq-1`` for every row, as transformers numbers them; rotary scores
depend only on ``key - query``, so the padding side does not change real tokens.
``attn_logit_softcapping`` and ``final_logit_softcapping`` do not reach the hidden states
in transformers 5's Gemma3 (the first is never passed to the attention, the second acts
on language-model logits), so they are accepted and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lazyembed.errors import ModelConversionError, UnsupportedModelError
from lazyembed.models.checkpoint import Checkpoint
from lazyembed.models.graph_ops import GraphBuilder

if TYPE_CHECKING:  # importing onnx is slow; the cache-hit path must not pay it
    import onnx

#: Bump whenever the emitted graph changes, so stale cached models are not reused.
CONVERTER_VERSION = "1"

SLIDING = "sliding_attention"
FULL = "full_attention"
#: ``hidden_activation`` values the MLP emits (tanh GELU is Gemma's; exact GELU and SiLU
#: are what ``ACT2FN`` gives for the other names).
_ACTIVATIONS = frozenset({"gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu", "silu", "swish"})
#: Checkpoint prefixes: a bare Gemma3TextModel, or one inside a causal LM.
_PREFIXES = ("model.", "language_model.model.", "language_model.")


@dataclass(frozen=True)
class _Config:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    activation: str
    eps: float
    bias: bool
    scale: float
    bidirectional: bool
    sliding_window: int  # as config.json states it; 0 when no layer slides
    layer_types: tuple[str, ...]
    thetas: dict[str, float]  # rotary base per layer type


def _refuse(path: Path, what: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"unsupported {what} in {path}: {why}")


def _rope_thetas(raw: dict[str, Any], path: Path) -> dict[str, float]:
    """The rotary base of each layer type, read as ``Gemma3TextConfig`` does (the nested
    ``rope_parameters``, or the older ``rope_theta``/``rope_local_base_freq``/
    ``rope_scaling``); any scaling type other than ``default`` is refused."""
    params = raw.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise _refuse(path, f"rope_parameters={params!r}", "expected an object per layer type")
    nested = dict(params or {})
    if nested and not {SLIDING, FULL} & set(nested):  # one flat dict for every type
        raise _refuse(path, "rope_parameters", "expected one entry per layer type")
    full = dict(nested.get(FULL) or {})
    scaling = raw.get("rope_scaling")
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise _refuse(path, f"rope_scaling={scaling!r}", "expected an object or null")
        full.update(scaling)
    sliding = dict(nested.get(SLIDING) or {})
    full.setdefault("rope_theta", raw.get("rope_theta", 1_000_000.0))
    sliding.setdefault("rope_theta", raw.get("rope_local_base_freq", 10_000.0))
    thetas: dict[str, float] = {}
    for layer_type, entry in ((FULL, full), (SLIDING, sliding)):
        for key in ("rope_type", "type"):
            kind = entry.get(key, "default")
            if kind != "default":
                raise _refuse(
                    path,
                    f"{key}={kind!r} for {layer_type}",
                    "only the default (unscaled) rotary embedding is implemented",
                )
        try:
            thetas[layer_type] = float(entry["rope_theta"] or 0.0)
        except (TypeError, ValueError) as exc:
            raise ModelConversionError(f"{path}: unusable rope_theta for {layer_type}") from exc
        if thetas[layer_type] <= 0.0:
            raise ModelConversionError(f"{path}: rope_theta for {layer_type} must be positive")
    return thetas


def _layer_types(raw: dict[str, Any], layers: int, path: Path) -> tuple[str, ...]:
    types = raw.get("layer_types")
    if types is None:
        pattern = int(raw.get("sliding_window_pattern") or 6)
        return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(layers))
    if not isinstance(types, list) or len(types) != layers:
        raise ModelConversionError(f"{path}: layer_types must list num_hidden_layers={layers}")
    unknown = sorted({str(t) for t in types} - {SLIDING, FULL})
    if unknown:
        raise _refuse(path, f"layer_types {unknown}", f"only {SLIDING} and {FULL}")
    return tuple(str(t) for t in types)


def _parse(raw: dict[str, Any], path: Path) -> _Config:
    """The fields of config.json the graph needs, with ``Gemma3TextConfig``'s defaults."""
    act = raw.get("hidden_activation", "gelu_pytorch_tanh")
    if act not in _ACTIVATIONS:
        raise _refuse(path, f"hidden_activation={act!r}", f"supported: {sorted(_ACTIVATIONS)}")
    bidirectional = raw.get("use_bidirectional_attention")
    if bidirectional not in (None, True, False):
        raise _refuse(path, f"use_bidirectional_attention={bidirectional!r}", "expected a bool")
    thetas = _rope_thetas(raw, path)
    try:
        layers = int(raw.get("num_hidden_layers", 26))
        layer_types = _layer_types(raw, layers, path)
        heads = int(raw.get("num_attention_heads", 8))
        kv_heads = int(raw.get("num_key_value_heads", 4))
        window = raw.get("sliding_window", 4096)
        cfg = _Config(
            hidden=int(raw.get("hidden_size", 2304)),
            intermediate=int(raw.get("intermediate_size", 9216)),
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=int(raw.get("head_dim") or 256),
            vocab=int(raw.get("vocab_size", 262_208)),
            activation=str(act),
            eps=float(raw.get("rms_norm_eps", 1e-6)),
            bias=bool(raw.get("attention_bias", False)),
            scale=float(raw.get("query_pre_attn_scalar", 256)) ** -0.5,
            bidirectional=bool(bidirectional),
            sliding_window=int(window or 0),
            layer_types=layer_types,
            thetas=thetas,
        )
    except UnsupportedModelError:
        raise
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ModelConversionError(f"{path} lacks a usable gemma3_text field: {exc!r}") from exc
    if min(cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.vocab) < 1:
        raise ModelConversionError(f"{path}: sizes must be positive")
    if cfg.heads % cfg.kv_heads or cfg.head_dim % 2:
        raise ModelConversionError(
            f"{path}: num_attention_heads must be a multiple of num_key_value_heads "
            "and head_dim even"
        )
    if SLIDING in cfg.layer_types and cfg.sliding_window < 1:
        raise ModelConversionError(f"{path}: sliding layers need a positive sliding_window")
    return cfg


def check_config(raw: dict[str, Any], path: Path) -> None:
    """Refuse the Gemma3 options this builder does not emit (see ``architectures.py``)."""
    _parse(raw, path)


@contextmanager
def _builder(data: Path | None) -> Iterator[GraphBuilder]:
    g = GraphBuilder(data)
    try:
        yield g
    finally:
        g.close()


def _masks(g: GraphBuilder, cfg: _Config) -> dict[str, str]:
    """The additive attention bias of each layer type used, [batch, 1, seq, seq] or
    [batch, 1, 1, seq]."""
    padding = g.key_padding_allowed()
    used = set(cfg.layer_types)
    dist = g.distance() if SLIDING in used or not cfg.bidirectional else ""
    out: dict[str, str] = {}
    if FULL in used:
        full = padding if cfg.bidirectional else g.both(padding, g.causal_allowed(dist))
        out[FULL] = g.bias_from_allowed(full)
    if SLIDING in used:
        if cfg.bidirectional:  # transformers: |q - k| < sliding_window // 2 + 1
            reach = cfg.sliding_window // 2
            band = g.band_allowed(dist, reach, reach)
        else:  # causal, and key > query - sliding_window
            band = g.band_allowed(dist, cfg.sliding_window - 1, 0)
        out[SLIDING] = g.bias_from_allowed(g.both(padding, band))
    return out


def _norm(g: GraphBuilder, ckpt: Checkpoint, x: str, name: str, dim: int, eps: float) -> str:
    """Gemma's RMSNorm: ``x / rms(x) * (1 + weight)``."""
    return g.rms_norm(x, 1.0 + ckpt.get(f"{name}.weight", (dim,)), eps, name)


def _linear(
    g: GraphBuilder, ckpt: Checkpoint, x: str, name: str, out: int, inp: int, bias: bool
) -> str:
    b = ckpt.get(f"{name}.bias", (out,)) if bias else None
    return g.linear(x, ckpt.get(f"{name}.weight", (out, inp)), b, name)


def _layer(
    g: GraphBuilder,
    ckpt: Checkpoint,
    cfg: _Config,
    n: int,
    x: str,
    bias: dict[str, str],
    rotary: dict[str, tuple[str, str]],
) -> str:
    p = f"layers.{n}."
    kind = cfg.layer_types[n]
    hd, hidden = cfg.head_dim, cfg.hidden
    cos, sin = rotary[kind]

    h = _norm(g, ckpt, x, p + "input_layernorm", hidden, cfg.eps)

    def project(name: str, heads: int) -> str:
        y = _linear(g, ckpt, h, p + f"self_attn.{name}_proj", heads * hd, hidden, cfg.bias)
        return g.split_heads(y, heads, hd)

    q = _norm(g, ckpt, project("q", cfg.heads), p + "self_attn.q_norm", hd, cfg.eps)
    k = _norm(g, ckpt, project("k", cfg.kv_heads), p + "self_attn.k_norm", hd, cfg.eps)
    v = project("v", cfg.kv_heads)
    q, k = g.rotate(q, cos, sin, hd, hd), g.rotate(k, cos, sin, hd, hd)
    ctx = g.attention(q, k, v, bias[kind], cfg.scale, cfg.heads // cfg.kv_heads)
    ctx = g.merge_heads(ctx, cfg.heads, hd)
    a = _linear(g, ckpt, ctx, p + "self_attn.o_proj", hidden, cfg.heads * hd, cfg.bias)
    x = g.op("Add", [x, _norm(g, ckpt, a, p + "post_attention_layernorm", hidden, cfg.eps)])

    h = _norm(g, ckpt, x, p + "pre_feedforward_layernorm", hidden, cfg.eps)
    inter = cfg.intermediate
    gate = g.activation(
        _linear(g, ckpt, h, p + "mlp.gate_proj", inter, hidden, False), cfg.activation
    )
    up = _linear(g, ckpt, h, p + "mlp.up_proj", inter, hidden, False)
    m = _linear(g, ckpt, g.op("Mul", [gate, up]), p + "mlp.down_proj", hidden, inter, False)
    return g.op("Add", [x, _norm(g, ckpt, m, p + "post_feedforward_layernorm", hidden, cfg.eps)])


def build(model_dir: Path, data: Path | None) -> onnx.ModelProto:
    """The graph of the Gemma3 text model in ``model_dir``; weights stream to ``data``."""
    path = Path(model_dir) / "config.json"
    cfg = _parse(json.loads(path.read_text(encoding="utf-8")), path)
    with Checkpoint(Path(model_dir), _PREFIXES) as ckpt, _builder(data) as g:
        table = ckpt.get("embed_tokens.weight", (cfg.vocab, cfg.hidden))
        table *= np.float32(cfg.hidden**0.5)  # Gemma3TextScaledWordEmbedding, in place
        x = g.op("Gather", [g.const("embed_tokens", table), "input_ids"])
        del table
        bias = _masks(g, cfg)
        positions = g.positions()
        rotary = {
            kind: g.rotary_tables(positions, cfg.head_dim, cfg.thetas[kind], f"rope_{kind}")
            for kind in sorted(set(cfg.layer_types))
        }
        for n in range(cfg.layers):
            x = _layer(g, ckpt, cfg, n, x, bias, rotary)
        x = _norm(g, ckpt, x, "norm", cfg.hidden, cfg.eps)
        model = g.finish(x, cfg.hidden, "gemma3_text")
    model.producer_version = CONVERTER_VERSION
    return model
