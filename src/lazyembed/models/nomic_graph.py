"""The ONNX graph of a NomicBert encoder (nomic-ai/nomic-embed-text-v1.5), node by node.

NomicBert is a post-norm BERT with rotary position embeddings instead of a position
table, a gated MLP (SwiGLU) and no biases in its attention and MLP projections. Two
on-disk forms exist and both convert:

* the hub's (nomic's own remote code): ``config.json`` in GPT-2 names (``n_embd``,
  ``n_head``, ``rotary_emb_fraction``, ``activation_function: swiglu``, ...) and weights
  ``emb_ln``, ``encoder.layers.N.attn.Wqkv`` (q, k, v stacked), ``attn.out_proj``,
  ``mlp.fc11`` (up), ``mlp.fc12`` (gate), ``mlp.fc2``, ``norm1``/``norm2``;
* transformers 5's (``hidden_size``, ``rope_parameters``, ``hidden_act``; weights
  ``embeddings.LayerNorm``, ``layers.N.self_attn.{q,k,v,o}_proj``,
  ``mlp.{up,gate,down}_proj``, ``post_attention_layernorm``/``post_mlp_layernorm``).
  transformers 5 writes this config with either weight naming (``save_pretrained``
  inverts its conversion mapping by default), so config form and weight form are
  detected separately.

The math is transformers 5.24's ``NomicBertModel`` (its renaming: ``fc11`` -> ``up_proj``,
``fc12`` -> ``gate_proj``, so the MLP is ``fc2(act(fc12 x) * fc11 x)``), plus the hub
config's partial rotary (``rotary_emb_fraction`` < 1 rotates the first features of each
head, as nomic's code does). Positions are 0..seq-1 for every row, as in transformers:
with no position table, attention sees only relative positions, so a left-padded row
gets the vectors of a right-padded one. Options neither implements the same way are
refused by name in `check_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lazyembed.errors import ModelConversionError, UnsupportedModelError
from lazyembed.models.checkpoint import Checkpoint, FloatArray
from lazyembed.models.encoder_config import CONFIG_FILE
from lazyembed.models.graph_ops import GraphBuilder

if TYPE_CHECKING:  # importing onnx is slow; the cache-hit path must not pay it
    import onnx

#: Bump whenever the emitted graph changes, so stale cached models are not reused.
CONVERTER_VERSION = "1"

#: Prefixes a NomicBert may be stored under inside a task model.
_PREFIXES = ("nomic_bert.", "bert.", "model.")
#: transformers 5's activations of the gate, by ``hidden_act`` (what GraphBuilder emits).
_TF5_ACTS = frozenset({"silu", "swish", "gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_tanh"})
#: The hub's gated ``activation_function`` values -> the gate's activation.
_HUB_ACTS = {"swiglu": "silu", "geglu": "gelu", "glu": "sigmoid"}
#: Hub options that must be off (false, or absent: nomic's default).
_HUB_OFF = (
    "prenorm",
    "parallel_block",
    "use_rms_norm",
    "causal",
    "rotary_emb_interleaved",
    "rotary_head_dim",
)
_HUB_BIASES = ("qkv_proj_bias", "mlp_fc1_bias", "mlp_fc2_bias")  # nomic's default: true
_HUB_NULL = ("rotary_scaling_factor", "rotary_emb_scale_base")  # must be null or absent


@dataclass(frozen=True)
class NomicConfig:
    """What the graph needs, from either config form."""

    hidden: int
    heads: int
    head_dim: int
    layers: int
    eps: float
    rotary_dim: int
    rope_base: float
    act: str  # the gate's activation: a GraphBuilder.activation name or "sigmoid"


def _refuse(path: Path, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"unsupported NomicBert option {what} in {path}")


def _is_hub(raw: dict[str, Any]) -> bool:
    return "n_embd" in raw or "rotary_emb_fraction" in raw


def _hub_config(raw: dict[str, Any], path: Path) -> NomicConfig:
    """nomic's GPT2Config-based config (its defaults where a key is missing)."""
    for key in _HUB_OFF:
        if raw.get(key):
            raise _refuse(path, f"{key}={raw[key]!r}")
    for key in _HUB_BIASES:
        if raw.get(key, True):
            raise _refuse(path, f"{key}={raw.get(key, True)!r} (biases are not implemented)")
    for key in _HUB_NULL:
        if raw.get(key) is not None:
            raise _refuse(path, f"{key}={raw[key]!r} (only null)")
    act = raw.get("activation_function", "gelu_new")
    if act not in _HUB_ACTS:
        raise _refuse(path, f"activation_function={act!r} (only {', '.join(_HUB_ACTS)})")
    hidden, heads = int(raw.get("n_embd", 768)), int(raw.get("n_head", 12))
    kv_heads = raw.get("num_heads_kv")
    if kv_heads is not None and int(kv_heads) != heads:
        raise _refuse(path, f"num_heads_kv={kv_heads!r}")
    if hidden % heads:
        raise ModelConversionError(f"{path}: n_embd {hidden} is not divisible by n_head {heads}")
    head_dim = hidden // heads
    fraction = float(raw.get("rotary_emb_fraction", 0.0))
    rotary = head_dim * fraction
    if not 0.0 < fraction <= 1.0 or rotary != int(rotary) or int(rotary) % 2:
        raise _refuse(
            path,
            f"rotary_emb_fraction={fraction!r} (only rotary embeddings over an even number "
            f"of each head's {head_dim} features; no absolute position table)",
        )
    return NomicConfig(
        hidden=hidden,
        heads=heads,
        head_dim=head_dim,
        layers=int(raw.get("n_layer", 12)),
        eps=float(raw.get("layer_norm_epsilon", 1e-5)),
        rotary_dim=int(rotary),
        rope_base=float(raw.get("rotary_emb_base", 10_000.0)),
        act=_HUB_ACTS[act],
    )


def _tf5_config(raw: dict[str, Any], path: Path) -> NomicConfig:
    """transformers 5's NomicBertConfig (its defaults where a key is missing)."""
    act = raw.get("hidden_act", "silu")
    if act not in _TF5_ACTS:
        raise _refuse(path, f"hidden_act={act!r} (only {', '.join(sorted(_TF5_ACTS))})")
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise _refuse(path, f"rope_parameters={rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise _refuse(path, f"rope_type={rope_type!r} (only 'default')")
    partial = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:  # transformers 5.24 ignores it
        raise _refuse(path, f"partial_rotary_factor={partial!r}")
    hidden, heads = int(raw.get("hidden_size", 768)), int(raw.get("num_attention_heads", 12))
    head_dim = int(raw.get("head_dim") or hidden // heads)
    if head_dim % 2:
        raise _refuse(path, f"head_dim={head_dim} (rotary needs an even head size)")
    return NomicConfig(
        hidden=hidden,
        heads=heads,
        head_dim=head_dim,
        layers=int(raw.get("num_hidden_layers", 12)),
        eps=float(raw.get("layer_norm_eps", 1e-12)),
        rotary_dim=head_dim,
        rope_base=float(rope.get("rope_theta", raw.get("rope_theta", 1000.0))),
        act=str(act),
    )


def nomic_config(raw: dict[str, Any], path: Path) -> NomicConfig:
    """The config of either form; `UnsupportedModelError` names an option not implemented."""
    try:
        return _hub_config(raw, path) if _is_hub(raw) else _tf5_config(raw, path)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, UnsupportedModelError):
            raise
        raise ModelConversionError(f"{path} lacks a usable nomic_bert field: {exc!r}") from exc


def check_config(raw: dict[str, Any], path: Path) -> None:
    """Refuse the NomicBert options this builder does not emit (see ``architectures.py``)."""
    nomic_config(raw, path)


# ---- weights ----------------------------------------------------------------------------

#: Internal name -> (hub name, transformers 5 name); ``{}``: the layer number.
_NAMES: dict[str, tuple[str, str]] = {
    "emb_ln": ("emb_ln", "embeddings.LayerNorm"),
    "o": ("encoder.layers.{}.attn.out_proj", "layers.{}.self_attn.o_proj"),
    "up": ("encoder.layers.{}.mlp.fc11", "layers.{}.mlp.up_proj"),
    "gate": ("encoder.layers.{}.mlp.fc12", "layers.{}.mlp.gate_proj"),
    "down": ("encoder.layers.{}.mlp.fc2", "layers.{}.mlp.down_proj"),
    "norm1": ("encoder.layers.{}.norm1", "layers.{}.post_attention_layernorm"),
    "norm2": ("encoder.layers.{}.norm2", "layers.{}.post_mlp_layernorm"),
}
_LINEARS = ("o", "up", "gate", "down")


class _Weights:
    """The checkpoint under one internal naming, whichever form it was saved in."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        if ckpt.has("encoder.layers.0.attn.Wqkv.weight"):
            self.hub = True
        elif ckpt.has("layers.0.self_attn.q_proj.weight"):
            self.hub = False
        else:
            raise ModelConversionError(
                f"{ckpt.model_dir}: no NomicBert weights (neither "
                "encoder.layers.0.attn.Wqkv.weight nor layers.0.self_attn.q_proj.weight)"
            )

    def name(self, key: str, layer: int = 0) -> str:
        return _NAMES[key][0 if self.hub else 1].format(layer)

    def get(self, key: str, layer: int, part: str, shape: tuple[int | None, ...]) -> FloatArray:
        return self.ckpt.get(f"{self.name(key, layer)}.{part}", shape)

    def qkv(self, layer: int, width: int, hidden: int) -> FloatArray:
        """q, k and v stacked [3 * width, hidden] (the hub's Wqkv layout)."""
        if self.hub:
            return self.ckpt.get(f"encoder.layers.{layer}.attn.Wqkv.weight", (3 * width, hidden))
        base = f"layers.{layer}.self_attn"
        parts = [self.ckpt.get(f"{base}.{p}_proj.weight", (width, hidden)) for p in "qkv"]
        return np.concatenate(parts, axis=0)

    def refuse_biases(self, layers: int) -> None:
        """Projection biases are not implemented: a checkpoint with them is refused."""
        names = [f"{self.name(key, n)}.bias" for n in range(layers) for key in _LINEARS]
        names += [f"encoder.layers.{n}.attn.Wqkv.bias" for n in range(layers)]
        names += [f"layers.{n}.self_attn.{p}_proj.bias" for n in range(layers) for p in "qkv"]
        found = [n for n in names if self.ckpt.has(n)]
        if found:
            raise UnsupportedModelError(
                f"{self.ckpt.model_dir}: NomicBert projection biases are not implemented "
                f"(found {found[0]})"
            )


# ---- graph ------------------------------------------------------------------------------


def _gate(g: GraphBuilder, x: str, act: str) -> str:
    return g.op("Sigmoid", [x]) if act == "sigmoid" else g.activation(x, act)


def _layer(
    g: GraphBuilder, w: _Weights, n: int, x: str, cfg: NomicConfig, rot: tuple[str, str, str]
) -> str:
    """One post-norm layer: rotary self-attention, Add & LayerNorm, gated MLP, Add & LayerNorm."""
    h, width, p = cfg.hidden, cfg.heads * cfg.head_dim, f"l{n}"
    cos, sin, bias = rot
    qkv = g.linear(x, w.qkv(n, width, h), None, f"{p}.qkv")
    q, k, v = (g.split_heads(t, cfg.heads, cfg.head_dim) for t in _split(g, qkv, width, 3))
    q = g.rotate(q, cos, sin, cfg.head_dim, cfg.rotary_dim)
    k = g.rotate(k, cos, sin, cfg.head_dim, cfg.rotary_dim)
    ctx = g.merge_heads(g.attention(q, k, v, bias, cfg.head_dim**-0.5), cfg.heads, cfg.head_dim)
    attn = g.linear(ctx, w.get("o", n, "weight", (h, width)), None, f"{p}.o")
    x = _norm(g, w, "norm1", n, g.op("Add", [attn, x]), cfg)
    inner = w.ckpt.shape(f"{w.name('up', n)}.weight")[0]
    up_gate = np.concatenate(
        [w.get("up", n, "weight", (inner, h)), w.get("gate", n, "weight", (inner, h))], axis=0
    )
    up, gate = _split(g, g.linear(x, up_gate, None, f"{p}.up_gate"), inner, 2)
    del up_gate
    mid = g.op("Mul", [_gate(g, gate, cfg.act), up])
    out = g.linear(mid, w.get("down", n, "weight", (h, inner)), None, f"{p}.down")
    return _norm(g, w, "norm2", n, g.op("Add", [out, x]), cfg)


def _split(g: GraphBuilder, x: str, width: int, parts: int) -> list[str]:
    """``parts`` equal slices of the last axis (each ``width`` wide)."""
    first = g.op("Split", [x, g.ints(*([width] * parts))], axis=-1, n_out=parts)
    return [first, *(f"{first[: first.rindex(':')]}:{k}" for k in range(1, parts))]


def _norm(g: GraphBuilder, w: _Weights, key: str, n: int, x: str, cfg: NomicConfig) -> str:
    gamma = w.get(key, n, "weight", (cfg.hidden,))
    beta = w.get(key, n, "bias", (cfg.hidden,))
    return g.layer_norm(x, gamma, beta, cfg.eps, f"{key}.{n}" if key != "emb_ln" else key)


def build(model_dir: Path, data: Path | None) -> onnx.ModelProto:
    """The graph of the NomicBert in ``model_dir``; weights are read one at a time and
    streamed to ``data`` as they are emitted."""
    import json

    path = Path(model_dir) / CONFIG_FILE
    cfg = nomic_config(json.loads(path.read_text(encoding="utf-8")), path)
    g = GraphBuilder(data)
    try:
        with Checkpoint(Path(model_dir), _PREFIXES) as ckpt:
            w = _Weights(ckpt)
            w.refuse_biases(cfg.layers)
            # Embeddings: word + token type 0 (no position table: rotary), then LayerNorm.
            word = ckpt.get("embeddings.word_embeddings.weight", (None, cfg.hidden))
            x = g.op("Gather", [g.const("word_embeddings", word), "input_ids"])
            del word
            if ckpt.has("embeddings.token_type_embeddings.weight"):
                types = ckpt.get("embeddings.token_type_embeddings.weight", (None, cfg.hidden))
                x = g.op("Add", [x, g.const("token_type_0", np.ascontiguousarray(types[0]))])
            x = _norm(g, w, "emb_ln", 0, x, cfg)
            positions = g.positions()  # [seq], as transformers (see the module doc)
            cos, sin = g.rotary_tables(positions, cfg.rotary_dim, cfg.rope_base, "rope")
            bias = g.bias_from_allowed(g.key_padding_allowed())
            for n in range(cfg.layers):
                x = _layer(g, w, n, x, cfg, (cos, sin, bias))
        model = g.finish(x, cfg.hidden, "nomic_bert")
    finally:
        g.close()
    model.producer_version = CONVERTER_VERSION
    return model


__all__ = ["CONVERTER_VERSION", "NomicConfig", "build", "check_config", "nomic_config"]
