"""The ONNX graph of a ModernBERT encoder (``model_type`` ``modernbert``), node by node.

Matches transformers 5's ``ModernBertModel``: token embeddings and a LayerNorm (bias per
``norm_bias``); pre-norm layers (layer 0 has no attention norm) with a packed ``Wqkv``,
rotary embeddings whose base differs between global (``full_attention``) and local
(``sliding_attention``) layers, local layers seeing only keys with ``|i - j| <=
local_attention // 2``, and a GeGLU MLP (``Wi`` is ``[input; gate]``); a final LayerNorm.
Which layers are global comes from ``layer_types`` or, in older configs, from
``global_attn_every_n_layers`` (layer ``i`` is global when ``i % n == 0``).

Padding: transformers numbers positions ``0..seq-1`` in every row. The graph numbers
them from the attention mask (real tokens before each token), which is the same for a
right-padded row (ModernBERT's tokenizers pad right) and gives a left-padded row the
very same angles; rotary attention depends only on ``i - j`` anyway, and the sliding
window counts index distances, which one-sided padding does not change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyembed.errors import ModelConversionError, UnsupportedModelError
from lazyembed.models.checkpoint import Checkpoint
from lazyembed.models.graph_ops import I64, GraphBuilder

if TYPE_CHECKING:  # importing onnx is slow; the cache-hit path must not pay it
    import onnx

#: Bump whenever the emitted graph changes, so stale cached models are not reused.
CONVERTER_VERSION = "1"

_GLOBAL, _LOCAL = "full_attention", "sliding_attention"
#: transformers' defaults, and the pre-``rope_parameters`` names of the two bases.
_DEFAULT_THETA = {_GLOBAL: 160_000.0, _LOCAL: 10_000.0}
_LEGACY_THETA = {_GLOBAL: "global_rope_theta", _LOCAL: "local_rope_theta"}
#: ``hidden_activation`` values `GraphBuilder.activation` emits exactly as ACT2FN does.
_ACTIVATIONS = frozenset({"gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast", "silu", "swish"})
#: A ModernBertModel saved inside a task head (``ModernBertForMaskedLM``) has this prefix.
_PREFIXES = ("model.",)


@dataclass(frozen=True)
class _Spec:
    """The config fields that shape the graph, with transformers' defaults applied."""

    hidden: int
    heads: int
    layers: int
    intermediate: int
    vocab: int
    act: str
    eps: float
    norm_bias: bool
    attention_bias: bool
    mlp_bias: bool
    layer_types: tuple[str, ...]
    theta: dict[str, float]
    window: int  # a local layer's query sees keys with |i - j| <= window

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _refuse(path: Path, field: str, value: Any, supported: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"unsupported ModernBERT option {field}={value!r} in {path}; lazyembed converts {supported}"
    )


def _flag(raw: dict[str, Any], name: str, path: Path) -> bool:
    value = raw.get(name, False)
    if not isinstance(value, bool):
        raise _refuse(path, name, value, "true or false")
    return value


def _layer_types(raw: dict[str, Any], layers: int, path: Path) -> tuple[str, ...]:
    types = raw.get("layer_types")
    if types is None:
        every = raw.get("global_attn_every_n_layers", 3)
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise _refuse(path, "global_attn_every_n_layers", every, "a positive integer")
        return tuple(_LOCAL if i % every else _GLOBAL for i in range(layers))
    if (
        not isinstance(types, list)
        or len(types) != layers
        or any(t not in (_GLOBAL, _LOCAL) for t in types)
    ):
        raise _refuse(path, "layer_types", types, f"{layers} entries of {_GLOBAL!r} or {_LOCAL!r}")
    return tuple(types)


def _thetas(raw: dict[str, Any], path: Path) -> dict[str, float]:
    """The rotary base of each layer type; only the plain (``default``) rotary."""
    if raw.get("rope_scaling") is not None:
        raise _refuse(path, "rope_scaling", raw["rope_scaling"], "no rope scaling")
    params = raw.get("rope_parameters") or {}
    if not isinstance(params, dict) or not set(params) <= {_GLOBAL, _LOCAL}:
        raise _refuse(path, "rope_parameters", params, f"one entry per {_GLOBAL}/{_LOCAL}")
    theta: dict[str, float] = {}
    for kind in (_GLOBAL, _LOCAL):
        entry = params.get(kind) or {}
        if not isinstance(entry, dict) or entry.get("rope_type", entry.get("type")) not in (
            None,
            "default",
        ):  # ModernBertRotaryEmbedding's own init is the plain one
            raise _refuse(path, f"rope_parameters.{kind}", entry, "rope_type 'default' only")
        value = entry.get("rope_theta", raw.get(_LEGACY_THETA[kind], _DEFAULT_THETA[kind]))
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise _refuse(path, f"rope_theta ({kind})", value, "a positive number")
        theta[kind] = float(value)
    return theta


def _spec(raw: dict[str, Any], path: Path) -> _Spec:
    """Read and vet ``config.json``; refuse, by name, every option not emitted."""
    act = raw.get("hidden_activation", "gelu")
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        raise _refuse(path, "hidden_activation", act, ", ".join(sorted(_ACTIVATIONS)))
    try:
        hidden, heads = int(raw.get("hidden_size", 768)), int(raw.get("num_attention_heads", 12))
        layers = int(raw.get("num_hidden_layers", 22))
        intermediate = int(raw.get("intermediate_size", 1152))
        vocab = int(raw.get("vocab_size", 50368))
        eps = float(raw.get("norm_eps", 1e-5))
        local = int(raw.get("local_attention", 128))
    except (TypeError, ValueError) as exc:
        raise ModelConversionError(f"{path} lacks a usable modernbert field: {exc!r}") from exc
    if min(hidden, heads, layers, intermediate, vocab) < 1 or hidden % heads:
        raise ModelConversionError(
            f"{path}: hidden_size {hidden} must be a positive multiple of "
            f"num_attention_heads {heads}, and every size positive"
        )
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        raise _refuse(path, "head_dim", head_dim, "hidden_size / num_attention_heads")
    if local < 0:
        raise _refuse(path, "local_attention", local, "a window of at least 0")
    return _Spec(
        hidden=hidden,
        heads=heads,
        layers=layers,
        intermediate=intermediate,
        vocab=vocab,
        act=str(act),
        eps=eps,
        norm_bias=_flag(raw, "norm_bias", path),
        attention_bias=_flag(raw, "attention_bias", path),
        mlp_bias=_flag(raw, "mlp_bias", path),
        layer_types=_layer_types(raw, layers, path),
        theta=_thetas(raw, path),
        window=local // 2,
    )


def check_config(raw: dict[str, Any], path: Path) -> None:
    """Refuse the ModernBERT options this builder does not emit (see ``architectures.py``)."""
    _spec(raw, path)


def build(model_dir: Path, data: Path | None) -> onnx.ModelProto:
    """The graph of the ModernBERT in ``model_dir``, its weights streamed into ``data``."""
    path = Path(model_dir) / "config.json"
    spec = _spec(json.loads(path.read_text(encoding="utf-8")), path)
    g = GraphBuilder(data)
    try:
        with Checkpoint(Path(model_dir), _PREFIXES) as ckpt:
            last = _emit(g, ckpt, spec)
        model = g.finish(last, spec.hidden, "modernbert")
    finally:
        g.close()
    model.producer_version = CONVERTER_VERSION
    return model


class _Weights:
    """Reads each tensor right when it is emitted (one at a time in memory)."""

    def __init__(self, g: GraphBuilder, ckpt: Checkpoint, spec: _Spec) -> None:
        self.g, self.ckpt, self.spec = g, ckpt, spec

    def norm(self, x: str, name: str) -> str:
        h = self.spec.hidden
        gamma = self.ckpt.get(f"{name}.weight", (h,))
        beta = self.ckpt.get(f"{name}.bias", (h,)) if self.spec.norm_bias else None
        return self.g.layer_norm(x, gamma, beta, self.spec.eps, name)

    def linear(self, x: str, name: str, out: int, inp: int, bias: bool) -> str:
        weight = self.ckpt.get(f"{name}.weight", (out, inp))
        b = self.ckpt.get(f"{name}.bias", (out,)) if bias else None
        return self.g.linear(x, weight, b, name)


def _emit(g: GraphBuilder, ckpt: Checkpoint, spec: _Spec) -> str:
    w = _Weights(g, ckpt, spec)
    h, d, inter = spec.hidden, spec.head_dim, spec.intermediate
    table = g.const("tok_embeddings", ckpt.get("embeddings.tok_embeddings.weight", (spec.vocab, h)))
    x = w.norm(g.op("Gather", [table, "input_ids"]), "embeddings.norm")

    positions = g.positions_from_mask()  # [batch, seq]
    rotary: dict[str, tuple[str, str]] = {}
    for kind in sorted(set(spec.layer_types)):
        cos, sin = g.rotary_tables(positions, d, spec.theta[kind], f"rope_{kind}")
        rotary[kind] = (g.op("Unsqueeze", [cos, g.ints(1)]), g.op("Unsqueeze", [sin, g.ints(1)]))
    keys = g.key_padding_allowed()  # [batch, 1, 1, seq]
    bias = {_GLOBAL: g.bias_from_allowed(keys)}
    if _LOCAL in spec.layer_types:
        band = g.band_allowed(g.distance(), spec.window, spec.window)
        bias[_LOCAL] = g.bias_from_allowed(g.both(keys, band))  # [batch, 1, seq, seq]

    for i, kind in enumerate(spec.layer_types):
        p = f"layers.{i}"
        normed = x if i == 0 else w.norm(x, f"{p}.attn_norm")  # layer 0: Identity
        qkv = w.linear(normed, f"{p}.attn.Wqkv", 3 * h, h, spec.attention_bias)
        # [b, s, 3*h] -> [3, b, heads, s, d], as the model's view(..., 3, heads, d)
        qkv = g.op("Reshape", [qkv, g.ints(0, 0, 3, spec.heads, d)])
        qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
        q, k, v = (g.op("Gather", [qkv, g.scalar(j, I64)], axis=0) for j in range(3))
        cos, sin = rotary[kind]
        q, k = g.rotate(q, cos, sin, d, d), g.rotate(k, cos, sin, d, d)
        ctx = g.merge_heads(g.attention(q, k, v, bias[kind], d**-0.5), spec.heads, d)
        x = g.op("Add", [x, w.linear(ctx, f"{p}.attn.Wo", h, h, spec.attention_bias)])

        up = w.linear(w.norm(x, f"{p}.mlp_norm"), f"{p}.mlp.Wi", 2 * inter, h, spec.mlp_bias)
        act = g.activation(g.op("Slice", [up, g.ints(0), g.ints(inter), g.ints(-1)]), spec.act)
        gate = g.op("Slice", [up, g.ints(inter), g.ints(2 * inter), g.ints(-1)])
        glu = g.op("Mul", [act, gate])
        x = g.op("Add", [x, w.linear(glu, f"{p}.mlp.Wo", h, inter, spec.mlp_bias)])
    return w.norm(x, "final_norm")
