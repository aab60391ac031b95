"""Torch-free conversion of a BERT-family ``model.safetensors`` into an ONNX graph.

Why build the graph by hand: exporting through torch would pull a 700 MB dependency into
a library whose point is a small footprint. BERT is a fixed, small architecture, so we
emit the ONNX nodes directly from the safetensors tensors with ``onnx.helper``.

Two graph flavours are built from the same weights:

* ``plain`` (default): standard opset-17 ops only (LayerNormalization, Erf GELU, an
  additive attention mask equal to Hugging Face's). It runs on any runtime, it is what
  dynamic int8 quantization works on (the quantizer's shape inference fails on contrib
  ops), and ORT's EXTENDED optimizer already fuses its GELU and scaled Q.K^T.
* ``fused``: ONNX Runtime ``com.microsoft`` contrib ops (``EmbedLayerNormalization``,
  ``Attention`` with packed QKV, ``SkipLayerNormalization``, erf-exact ``BiasGelu`` --
  never the tanh ``FastGelu``). Kept as a cross-check and for re-measuring: on the
  2-core AVX2 host with onnxruntime 1.32 it was *not* faster than ``plain`` (equal
  within noise at 1 and 2 threads; its SkipLayerNormalization kernel costs more than
  Add + LayerNormalization), so it is not the default.

The built graph is optimized once by ONNX Runtime (``ORT_ENABLE_EXTENDED``) and saved,
so later processes load it with optimizations disabled, as a small graph file plus one
external data file of weights that ONNX Runtime memory-maps (``<stem>.onnx`` and
``<stem>.onnx.data``): a session then starts in ~10 ms instead of ~120 ms. Results live in a cache
directory, keyed by the source hashes, ``CONVERTER_VERSION``, the variant and the
onnxruntime version, written atomically under a file lock and verified by a manifest.

Locks: ``<cache_dir>/<name>.lock`` (a ``filelock.FileLock``) guards building and
replacing one cached model and its manifest; ``<cache_dir>/hash-index.json.lock`` guards
read-modify-write of the source-hash index. ``_VERIFIED_LOCK`` (a ``threading.Lock``)
guards the in-process set of already hash-verified model files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from filelock import FileLock

from lazyembed.errors import ModelConversionError

if TYPE_CHECKING:  # importing onnx costs ~200 ms; the cache-hit path must not pay it
    import onnx

__all__ = [
    "CONVERTER_VERSION",
    "ConvertedModel",
    "GraphKind",
    "Variant",
    "build_onnx_model",
    "ensure_onnx",
    "find_converted",
]

logger = logging.getLogger("lazyembed")

#: Bump whenever the emitted graph changes, so stale cached models are not reused.
CONVERTER_VERSION = "2"  # 2: weights in an external, memory-mapped data file

Variant = Literal["fp32", "int8"]
GraphKind = Literal["fused", "plain"]

#: Which graph flavour each variant is built from (chosen by measurement, see module doc).
DEFAULT_GRAPH: GraphKind = "plain"
INT8_GRAPH: GraphKind = "plain"

_OPSET = 17
_MS_DOMAIN = "com.microsoft"
_WEIGHTS_FILE = "model.safetensors"
_CONFIG_FILE = "config.json"
_INDEX_FILE = "hash-index.json"
_LOCK_TIMEOUT_S = 600.0
_HASH_CHUNK = 1 << 20

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ConvertedModel:
    """A ready-to-load ONNX model file and where it came from."""

    path: Path
    #: The weights beside the graph (ONNX external data), memory-mapped by ONNX Runtime.
    data_path: Path
    variant: Variant
    weights_sha256: str
    converter_version: str
    #: Identifies the numbers this model produces; changes with any input of the build.
    fingerprint: str
    #: False when the model was taken from the cache.
    converted: bool
    seconds: float


# --------------------------------------------------------------------------------------
# Reading the source model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BertConfig:
    model_type: str
    hidden: int
    heads: int
    layers: int
    intermediate: int
    eps: float
    vocab: int
    max_positions: int


_SUPPORTED_MODEL_TYPES = {"bert"}


def _read_config(model_dir: Path) -> _BertConfig:
    path = model_dir / _CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelConversionError(f"{path} is missing; cannot convert {model_dir}") from exc
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelConversionError(f"{path} must hold a JSON object")
    model_type = raw.get("model_type")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise ModelConversionError(
            f"unsupported architecture model_type={model_type!r} in {path}; "
            f"the converter supports {sorted(_SUPPORTED_MODEL_TYPES)}"
        )
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
        raise ModelConversionError(
            f"unsupported hidden_act={act!r} in {path}; only exact 'gelu' (erf) is supported"
        )
    pos_type = raw.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ModelConversionError(
            f"unsupported position_embedding_type={pos_type!r} in {path}; only 'absolute'"
        )
    try:
        cfg = _BertConfig(
            model_type=str(model_type),
            hidden=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]),
            layers=int(raw["num_hidden_layers"]),
            intermediate=int(raw["intermediate_size"]),
            eps=float(raw.get("layer_norm_eps", 1e-12)),
            vocab=int(raw["vocab_size"]),
            max_positions=int(raw.get("max_position_embeddings", 512)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelConversionError(f"{path} lacks a usable BERT field: {exc!r}") from exc
    if cfg.hidden % cfg.heads:
        raise ModelConversionError(
            f"hidden_size {cfg.hidden} is not divisible by num_attention_heads {cfg.heads}"
        )
    return cfg


class _Weights:
    """Tensors of a BERT checkpoint, with or without the ``bert.`` prefix, shape-checked."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        self._path = path
        try:
            tensors = load_file(str(path))
        except FileNotFoundError as exc:
            raise ModelConversionError(f"{path} is missing") from exc
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelConversionError(f"{path} is not a readable safetensors file: {exc}") from exc
        prefixes = ("bert.", "model.", "")
        self._tensors: dict[str, npt.NDArray[Any]] = {}
        # Prefer un-prefixed names; strip a known prefix otherwise (BertForX checkpoints).
        for name, value in tensors.items():
            for prefix in prefixes:
                if name.startswith(prefix):
                    self._tensors.setdefault(name[len(prefix) :], value)
                    break

    def get(self, name: str, shape: tuple[int | None, ...]) -> FloatArray:
        """The tensor as contiguous float32; ``None`` in ``shape`` matches any size."""
        value = self._tensors.get(name)
        if value is None:
            raise ModelConversionError(
                f"tensor {name!r} (or 'bert.{name}') missing from {self._path}; "
                "is this a BERT-family checkpoint?"
            )
        if len(value.shape) != len(shape) or any(
            want is not None and got != want for got, want in zip(value.shape, shape, strict=False)
        ):
            raise ModelConversionError(
                f"tensor {name!r} in {self._path} has shape {tuple(value.shape)}, "
                f"config.json implies {shape}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ModelConversionError(f"tensor {name!r} has non-float dtype {value.dtype}")
        return np.ascontiguousarray(value, dtype=np.float32)


@dataclass(frozen=True)
class _Layer:
    wq: FloatArray  # [hidden, hidden] laid out for x @ w
    bq: FloatArray
    wk: FloatArray
    bk: FloatArray
    wv: FloatArray
    bv: FloatArray
    wo: FloatArray
    bo: FloatArray
    ln1_g: FloatArray
    ln1_b: FloatArray
    w1: FloatArray  # [hidden, intermediate]
    b1: FloatArray
    w2: FloatArray  # [intermediate, hidden]
    b2: FloatArray
    ln2_g: FloatArray
    ln2_b: FloatArray


@dataclass(frozen=True)
class _Bert:
    cfg: _BertConfig
    word: FloatArray  # [vocab, hidden]
    #: Position embeddings with the token-type-0 row folded in (single-sentence input).
    position: FloatArray  # [max_positions, hidden]
    ln_g: FloatArray
    ln_b: FloatArray
    layers: tuple[_Layer, ...]


def _load_bert(model_dir: Path) -> _Bert:
    cfg = _read_config(model_dir)
    w = _Weights(model_dir / _WEIGHTS_FILE)
    h, i = cfg.hidden, cfg.intermediate

    def lin(name: str, n_out: int, n_in: int) -> tuple[FloatArray, FloatArray]:
        # torch Linear stores [out, in]; ONNX MatMul wants [in, out].
        weight = np.ascontiguousarray(w.get(f"{name}.weight", (n_out, n_in)).T)
        return weight, w.get(f"{name}.bias", (n_out,))

    layers = []
    for n in range(cfg.layers):
        p = f"encoder.layer.{n}"
        wq, bq = lin(f"{p}.attention.self.query", h, h)
        wk, bk = lin(f"{p}.attention.self.key", h, h)
        wv, bv = lin(f"{p}.attention.self.value", h, h)
        wo, bo = lin(f"{p}.attention.output.dense", h, h)
        w1, b1 = lin(f"{p}.intermediate.dense", i, h)
        w2, b2 = lin(f"{p}.output.dense", h, i)
        layers.append(
            _Layer(
                wq, bq, wk, bk, wv, bv, wo, bo,
                w.get(f"{p}.attention.output.LayerNorm.weight", (h,)),
                w.get(f"{p}.attention.output.LayerNorm.bias", (h,)),
                w1, b1, w2, b2,
                w.get(f"{p}.output.LayerNorm.weight", (h,)),
                w.get(f"{p}.output.LayerNorm.bias", (h,)),
            )
        )  # fmt: skip
    type_table = w.get("embeddings.token_type_embeddings.weight", (None, h))
    position = w.get("embeddings.position_embeddings.weight", (cfg.max_positions, h))
    return _Bert(
        cfg=cfg,
        word=w.get("embeddings.word_embeddings.weight", (cfg.vocab, h)),
        position=(position + type_table[0]).astype(np.float32),
        ln_g=w.get("embeddings.LayerNorm.weight", (h,)),
        ln_b=w.get("embeddings.LayerNorm.bias", (h,)),
        layers=tuple(layers),
    )


# --------------------------------------------------------------------------------------
# Graph builders
# --------------------------------------------------------------------------------------


class _GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(
        self, op_type: str, inputs: list[str], *, domain: str = "", n_out: int = 1, **attrs: Any
    ) -> str:
        from onnx import helper

        self._n += 1
        base = f"{op_type}_{self._n}"
        outputs = [base] if n_out == 1 else [f"{base}:{k}" for k in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=base, domain=domain, **attrs)
        )
        return outputs[0]


def _io() -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    return inputs, []


def _finish(g: _GraphBuilder, last: str, cfg: _BertConfig, kind: GraphKind) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    g.nodes.append(helper.make_node("Identity", [last], ["last_hidden_state"], name="output"))
    inputs, _ = _io()
    output = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", cfg.hidden]
    )
    graph = helper.make_graph(g.nodes, f"bert_{kind}", inputs, [output], initializer=g.inits)
    opsets = [helper.make_opsetid("", _OPSET)]
    if kind == "fused":
        opsets.append(helper.make_opsetid(_MS_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="lazyembed")
    model.producer_version = CONVERTER_VERSION
    model.ir_version = 8  # readable by every onnxruntime we support (>= 1.17)
    return model


def _build_plain(bert: _Bert) -> onnx.ModelProto:
    """Standard ops only (opset 17): the reference and quantization-friendly graph."""
    from onnx import TensorProto

    cfg = bert.cfg
    g = _GraphBuilder()
    head = cfg.hidden // cfg.heads
    word = g.const("word_embeddings", bert.word)
    pos = g.const("position_embeddings", bert.position)
    i64 = np.int64
    zero = g.const("c_zero", np.array(0, i64))
    one = g.const("c_one", np.array(1, i64))
    split_heads = g.const("c_split_heads", np.array([0, 0, cfg.heads, head], i64))
    merge_heads = g.const("c_merge_heads", np.array([0, 0, cfg.hidden], i64))

    # Embeddings: word[ids] + (position + type0)[0..seq), then LayerNorm.
    x = g.op("Gather", [word, "input_ids"])
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), one], axis=0)
    positions = g.op("Range", [zero, seq, one])
    x = g.op("Add", [x, g.op("Gather", [pos, positions])])
    x = g.op(
        "LayerNormalization",
        [x, g.const("emb_ln_g", bert.ln_g), g.const("emb_ln_b", bert.ln_b)],
        axis=-1,
        epsilon=cfg.eps,
    )

    # Additive mask [batch, 1, 1, seq]: 0 where attended, a huge negative where padded.
    maskf = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    lowest = np.float32(np.finfo(np.float32).min)
    bias = g.op(
        "Mul",
        [
            g.op("Sub", [g.const("c_onef", np.array(1.0, np.float32)), maskf]),
            g.const("c_lowest", np.array(lowest, np.float32)),
        ],
    )
    bias = g.op("Unsqueeze", [bias, g.const("c_axes12", np.array([1, 2], i64))])
    scale = g.const("c_scale", np.array(1.0 / math.sqrt(head), np.float32))

    for n, layer in enumerate(bert.layers):
        p = f"l{n}_"

        def dense(inp: str, w: FloatArray, b: FloatArray, name: str, p: str = p) -> str:
            mm = g.op("MatMul", [inp, g.const(f"{p}{name}_w", w)])
            return g.op("Add", [mm, g.const(f"{p}{name}_b", b)])

        def heads(t: str) -> str:
            return g.op("Reshape", [t, split_heads])

        q = g.op("Transpose", [heads(dense(x, layer.wq, layer.bq, "q"))], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [heads(dense(x, layer.wk, layer.bk, "k"))], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [heads(dense(x, layer.wv, layer.bv, "v"))], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads])
        attn = g.op("Add", [dense(ctx, layer.wo, layer.bo, "o"), x])
        x = g.op(
            "LayerNormalization",
            [attn, g.const(f"{p}ln1_g", layer.ln1_g), g.const(f"{p}ln1_b", layer.ln1_b)],
            axis=-1,
            epsilon=cfg.eps,
        )
        hmid = dense(x, layer.w1, layer.b1, "ffn1")
        # Exact GELU: 0.5 * h * (1 + erf(h / sqrt(2))).
        erf = g.op("Erf", [g.op("Div", [hmid, g.const(f"{p}sqrt2", np.float32(math.sqrt(2)))])])
        gelu = g.op(
            "Mul",
            [
                g.op("Mul", [hmid, g.const(f"{p}half", np.float32(0.5))]),
                g.op("Add", [erf, g.const(f"{p}onef", np.float32(1.0))]),
            ],
        )
        out = g.op("Add", [dense(gelu, layer.w2, layer.b2, "ffn2"), x])
        x = g.op(
            "LayerNormalization",
            [out, g.const(f"{p}ln2_g", layer.ln2_g), g.const(f"{p}ln2_b", layer.ln2_b)],
            axis=-1,
            epsilon=cfg.eps,
        )
    return _finish(g, x, cfg, "plain")


def _build_fused(bert: _Bert) -> onnx.ModelProto:
    """ONNX Runtime contrib ops (CPU EP): fewer kernels, same math (erf GELU)."""
    from onnx import TensorProto

    cfg = bert.cfg
    g = _GraphBuilder()
    ids32 = g.op("Cast", ["input_ids"], to=TensorProto.INT32)
    mask32 = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
    x = g.op(
        "EmbedLayerNormalization",
        [
            ids32,
            "",  # segment_ids: all zero, folded into the position table
            g.const("word_embeddings", bert.word),
            g.const("position_embeddings", bert.position),
            "",  # segment_embedding
            g.const("emb_ln_g", bert.ln_g),
            g.const("emb_ln_b", bert.ln_b),
        ],
        domain=_MS_DOMAIN,
        n_out=2,
        epsilon=cfg.eps,
    )
    for n, layer in enumerate(bert.layers):
        p = f"l{n}_"
        qkv_w = np.concatenate([layer.wq, layer.wk, layer.wv], axis=1)
        qkv_b = np.concatenate([layer.bq, layer.bk, layer.bv])
        ctx = g.op(
            "Attention",
            [x, g.const(f"{p}qkv_w", qkv_w), g.const(f"{p}qkv_b", qkv_b), mask32],
            domain=_MS_DOMAIN,
            num_heads=cfg.heads,
        )
        attn = g.op("MatMul", [ctx, g.const(f"{p}o_w", layer.wo)])
        x = g.op(
            "SkipLayerNormalization",
            [
                attn,
                x,
                g.const(f"{p}ln1_g", layer.ln1_g),
                g.const(f"{p}ln1_b", layer.ln1_b),
                g.const(f"{p}o_b", layer.bo),
            ],
            domain=_MS_DOMAIN,
            epsilon=cfg.eps,
        )
        hmid = g.op("MatMul", [x, g.const(f"{p}ffn1_w", layer.w1)])
        gelu = g.op("BiasGelu", [hmid, g.const(f"{p}ffn1_b", layer.b1)], domain=_MS_DOMAIN)
        out = g.op("MatMul", [gelu, g.const(f"{p}ffn2_w", layer.w2)])
        x = g.op(
            "SkipLayerNormalization",
            [
                out,
                x,
                g.const(f"{p}ln2_g", layer.ln2_g),
                g.const(f"{p}ln2_b", layer.ln2_b),
                g.const(f"{p}ffn2_b", layer.b2),
            ],
            domain=_MS_DOMAIN,
            epsilon=cfg.eps,
        )
    return _finish(g, x, cfg, "fused")


def build_onnx_model(model_dir: Path, *, graph: GraphKind = DEFAULT_GRAPH) -> onnx.ModelProto:
    """Build the (unoptimized) ONNX graph of the BERT model in ``model_dir``."""
    import onnx

    bert = _load_bert(Path(model_dir))
    model = _build_fused(bert) if graph == "fused" else _build_plain(bert)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:  # a converter bug, not a user error
        raise ModelConversionError(f"built an invalid ONNX graph: {exc}") from exc
    return model


# --------------------------------------------------------------------------------------
# Hashing (with a persistent index so each file version is hashed once)
# --------------------------------------------------------------------------------------

_INDEX_MAX_ENTRIES = 256


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` so readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the cache from others
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cached_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of ``path``, remembered in ``cache_dir/hash-index.json`` by (path, size, mtime).

    Hashing 90 MB costs 50-100 ms; the index makes that a one-time cost per file version.
    A failure to read or write the index only costs a re-hash, never correctness.
    """
    abs_path, size, mtime_ns = _stat_key(path)
    key = f"{abs_path}|{size}|{mtime_ns}"
    index_path = cache_dir / _INDEX_FILE
    with contextlib.suppress(OSError, ValueError):
        entries = json.loads(index_path.read_text(encoding="utf-8")).get("entries", {})
        cached = entries.get(key)
        if isinstance(cached, str) and len(cached) == 64:
            return cached
    sha = _sha256_file(path)
    try:
        with FileLock(str(index_path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            try:
                loaded = json.loads(index_path.read_text(encoding="utf-8"))
                entries = loaded.get("entries", {}) if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                entries = {}
            # Drop older versions of the same file; keep the index bounded.
            entries = {
                k: v
                for k, v in entries.items()
                if isinstance(v, str) and k.split("|")[0] != abs_path
            }
            entries[key] = sha
            if len(entries) > _INDEX_MAX_ENTRIES:
                entries = dict(list(entries.items())[-_INDEX_MAX_ENTRIES:])
            payload = json.dumps({"version": 1, "entries": entries}, indent=0)
            _atomic_write_bytes(index_path, payload.encode("utf-8"))
    except OSError as exc:
        logger.warning("could not update hash index %s: %s", index_path, exc)
    return sha


# --------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------

#: Model files whose sha256 matched their manifest in this process: (path, size, mtime_ns,
#: sha256). Guarded by _VERIFIED_LOCK.
_VERIFIED: set[tuple[str, int, int, str]] = set()
_VERIFIED_LOCK = threading.Lock()


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


@dataclass(frozen=True)
class _Target:
    """Everything that identifies one cached model."""

    variant: Variant
    graph: GraphKind
    weights_sha256: str
    config_sha256: str
    ort_version: str
    model_type: str

    @property
    def fingerprint(self) -> str:
        return (
            f"{self.model_type}-{self.variant}-{self.graph}"
            f";weights={self.weights_sha256}"
            f";config={self.config_sha256}"
            f";converter={CONVERTER_VERSION}"
            f";onnxruntime={self.ort_version}"
        )

    @property
    def stem(self) -> str:
        key = hashlib.sha256(self.fingerprint.encode("utf-8")).hexdigest()[:24]
        return f"{self.model_type}-{self.variant}-{key}"


def _version_key(converter: object, onnxruntime: object) -> tuple[int, tuple[int, ...]]:
    """Orders conversions: converter version first, then the ONNX Runtime version."""
    try:
        converter_number = int(str(converter))
    except ValueError:
        converter_number = -1
    return converter_number, tuple(int(part) for part in re.findall(r"\d+", str(onnxruntime)))


def _prune_superseded(cache_dir: Path, target: _Target, *, keep: Path) -> None:
    """Delete older conversions of the same weights and variant (~90 MB each).

    A conversion is superseded when its (converter version, ONNX Runtime version) is
    strictly older than the one just built; nothing newer, or of other weights or another
    variant, is touched. Strictly older only: an older lazyembed installed elsewhere that
    reconverts its own copy never deletes ours, so two installs cannot take turns
    rebuilding. A session that has the old file mapped keeps its inode until it closes.
    Best effort: a file that cannot be removed stays (and is logged at debug).
    """
    mine = _version_key(CONVERTER_VERSION, target.ort_version)
    for manifest_path in cache_dir.glob(f"{target.model_type}-{target.variant}-*.json"):
        if manifest_path == _manifest_path(keep):
            continue
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            same_model = (
                manifest["weights_sha256"] == target.weights_sha256
                and manifest["config_sha256"] == target.config_sha256
                and manifest["variant"] == target.variant
            )
            theirs = _version_key(manifest["converter_version"], manifest["onnxruntime_version"])
            files = [manifest_path.with_name(str(manifest["file"]))]
            if manifest.get("data_file"):
                files.append(manifest_path.with_name(str(manifest["data_file"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a manifest of ours, or unreadable: leave it alone
        if not same_model or theirs >= mine:
            continue
        freed = 0
        for path in [manifest_path, *files]:  # manifest first: nobody validates it anew
            try:
                freed += path.stat().st_size
                path.unlink()
            except OSError as exc:
                logger.debug("could not remove superseded %s: %s", path, exc)
        logger.info(
            "removed superseded conversion %s (converter %s, onnxruntime %s): %.0f MB",
            manifest_path.stem,
            manifest["converter_version"],
            manifest["onnxruntime_version"],
            freed / 2**20,
        )


def _manifest_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def _data_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".data")


def _file_ok(path: Path, size: object, sha: object) -> bool:
    """Size always; sha256 once per process per file version (cached in _VERIFIED)."""
    try:
        abs_path, actual, mtime_ns = _stat_key(path)
    except OSError:
        return False
    if actual != size or not isinstance(sha, str):
        logger.warning("cached model file %s has the wrong size; rebuilding", path)
        return False
    stamp = (abs_path, actual, mtime_ns, sha)
    with _VERIFIED_LOCK:
        if stamp in _VERIFIED:
            return True
    try:
        ok = _sha256_file(path) == sha
    except OSError:
        return False
    if not ok:
        logger.warning("cached model file %s fails its sha256 check; rebuilding", path)
        return False
    with _VERIFIED_LOCK:
        _VERIFIED.add(stamp)
    return True


def _valid_cached(model_path: Path, target: _Target) -> bool:
    """True if the graph and its data file are complete and match the manifest."""
    try:
        manifest = json.loads(_manifest_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("fingerprint") != target.fingerprint:
        return False
    return _file_ok(model_path, manifest.get("size"), manifest.get("sha256")) and _file_ok(
        _data_path(model_path), manifest.get("data_size"), manifest.get("data_sha256")
    )


def _remember_verified(path: Path, sha: str) -> None:
    abs_path, size, mtime_ns = _stat_key(path)
    with _VERIFIED_LOCK:
        _VERIFIED.add((abs_path, size, mtime_ns, sha))


def _optimize(src: Path, dest: Path) -> None:
    """Let ONNX Runtime optimize ``src`` once and save the result to ``dest``.

    ORT_ENABLE_EXTENDED, not ALL: ALL adds layout transforms that may be specific to the
    CPU the file was written on, and for this graph it produced the same nodes anyway.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_prepacking", "1")
    sess = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    del sess


def _quantize(src: Path, dest: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights (per output channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(
            str(src),
            str(dest),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Attention"],
        )


class _DropQuantizerRecords(logging.Filter):
    """Drops records logged from inside onnxruntime.quantization (and nothing else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        return "/onnxruntime/quantization/" not in path


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Keep the quantizer's ``logging.warning`` off the application's root logger.

    It warns on the root logger (advice to pre-process, which does not apply to a graph
    built here), and ``logging.warning`` on a root without handlers would also call
    ``basicConfig()`` for the application. While quantizing (seconds, rare, under the
    conversion lock) a filter drops the quantizer's own records, and a NullHandler stands
    in only when the root has no handler at all.
    """
    root = logging.getLogger()
    drop = _DropQuantizerRecords()
    guard = logging.NullHandler() if not root.handlers else None
    root.addFilter(drop)
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if guard is not None:
            root.removeHandler(guard)


def _externalize(src: Path, dest: Path) -> Path:
    """Re-save ``src`` as a small graph file plus one data file holding every weight.

    ONNX Runtime memory-maps external data instead of parsing and copying it: a session
    is created in ~10 ms instead of ~120 ms, and only the weight pages actually touched
    count in RSS (most of the 47 MB word-embedding table never is). The pages belong to
    the file, so unloading unmaps them and the kernel can drop them under pressure.
    """
    import onnx

    model = onnx.load(str(src))
    data = _data_path(dest)
    onnx.save_model(
        model,
        str(dest),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    return data


def _build_into(model_dir: Path, target: _Target, work: Path, name: str) -> tuple[Path, Path]:
    """Build, (quantize,) optimize, externalize; return (graph, data) inside ``work``."""
    import onnx

    raw = work / "raw.onnx"
    model = build_onnx_model(model_dir, graph=target.graph)
    onnx.save(model, str(raw))
    del model
    if target.variant == "int8":
        quantized = work / "quantized.onnx"
        _quantize(raw, quantized)
        raw = quantized
    optimized = work / "optimized.onnx"
    _optimize(raw, optimized)
    graph = work / name
    data = _externalize(optimized, graph)
    for path in (data, graph):
        with path.open("rb+") as f:
            os.fsync(f.fileno())
    return graph, data


def _plan(model_dir: Path, variant: Variant, cache_dir: Path) -> tuple[_Target, Path]:
    """Check the inputs and name the cached model they map to (no conversion)."""
    if variant not in ("fp32", "int8"):
        raise ModelConversionError(f"unknown variant {variant!r}; expected 'fp32' or 'int8'")
    weights = model_dir / _WEIGHTS_FILE
    config = model_dir / _CONFIG_FILE
    for required in (weights, config):
        if not required.is_file():
            raise ModelConversionError(f"{required} is missing; cannot convert {model_dir}")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelConversionError(f"cannot create cache directory {cache_dir}: {exc}") from exc
    model_type = _read_config(model_dir).model_type
    target = _Target(
        variant=variant,
        graph=DEFAULT_GRAPH if variant == "fp32" else INT8_GRAPH,
        weights_sha256=_cached_sha256(weights, cache_dir),
        config_sha256=_sha256_file(config),
        ort_version=_ort_version(),
        model_type=model_type,
    )
    return target, cache_dir / f"{target.stem}.onnx"


def _converted_model(
    target: _Target, model_path: Path, *, converted: bool, start: float
) -> ConvertedModel:
    return ConvertedModel(
        path=model_path,
        data_path=_data_path(model_path),
        variant=target.variant,
        weights_sha256=target.weights_sha256,
        converter_version=CONVERTER_VERSION,
        fingerprint=target.fingerprint,
        converted=converted,
        seconds=time.perf_counter() - start,
    )


def find_converted(
    model_dir: Path, *, variant: Variant = "fp32", cache_dir: Path
) -> ConvertedModel | None:
    """The verified cached conversion of ``model_dir``, or None if it must be built."""
    start = time.perf_counter()
    target, model_path = _plan(Path(model_dir), variant, Path(cache_dir))
    if _valid_cached(model_path, target):
        return _converted_model(target, model_path, converted=False, start=start)
    return None


def ensure_onnx(model_dir: Path, *, variant: Variant = "fp32", cache_dir: Path) -> ConvertedModel:
    """Return a verified ONNX model for ``model_dir``, converting it on first use.

    Safe against concurrent callers in other processes (file lock + double check) and
    against truncated or corrupt cache files (size and sha256 checked against a
    manifest; a bad file is rebuilt, never loaded). Converts in this process:
    ``lazyembed.models.convert_child.ensure_onnx_in_child`` keeps the conversion's memory
    out of a long-running one.
    """
    start = time.perf_counter()
    model_dir = Path(model_dir)
    cache_dir = Path(cache_dir)
    target, model_path = _plan(model_dir, variant, cache_dir)

    def result(converted: bool) -> ConvertedModel:
        return _converted_model(target, model_path, converted=converted, start=start)

    if _valid_cached(model_path, target):
        return result(False)
    lock = FileLock(str(model_path) + ".lock", timeout=_LOCK_TIMEOUT_S)
    try:
        with lock:
            if _valid_cached(model_path, target):  # another process built it meanwhile
                return result(False)
            logger.info("converting %s to ONNX (%s) in %s", model_dir, variant, cache_dir)
            with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
                built, built_data = _build_into(model_dir, target, Path(tmp), model_path.name)
                sha = _sha256_file(built)
                data_sha = _sha256_file(built_data)
                manifest = {
                    "fingerprint": target.fingerprint,
                    "file": model_path.name,
                    "size": built.stat().st_size,
                    "sha256": sha,
                    "data_file": built_data.name,
                    "data_size": built_data.stat().st_size,
                    "data_sha256": data_sha,
                    "variant": variant,
                    "graph": target.graph,
                    "weights_sha256": target.weights_sha256,
                    "config_sha256": target.config_sha256,
                    "converter_version": CONVERTER_VERSION,
                    "onnxruntime_version": target.ort_version,
                    "source_dir": str(model_dir.resolve()),
                    "created_unix": time.time(),
                }
                # Data, graph, then manifest: a reader that sees a new manifest with an old
                # file fails validation and waits on the lock. A session that mapped the
                # old data file keeps its (unlinked) inode: replacing never truncates it.
                os.replace(built_data, _data_path(model_path))
                os.replace(built, model_path)
                _atomic_write_bytes(
                    _manifest_path(model_path), json.dumps(manifest, indent=2).encode("utf-8")
                )
            _remember_verified(model_path, sha)
            _remember_verified(_data_path(model_path), data_sha)
            _prune_superseded(cache_dir, target, keep=model_path)
    except OSError as exc:
        raise ModelConversionError(
            f"could not write the converted model to {cache_dir}: {exc}"
        ) from exc
    except ModelConversionError:
        raise
    except Exception as exc:  # onnx / onnxruntime failures surface as many types
        raise ModelConversionError(f"converting {model_dir} failed: {exc}") from exc
    converted = result(True)
    logger.info("converted %s -> %s in %.2f s", model_dir, model_path, converted.seconds)
    return converted
