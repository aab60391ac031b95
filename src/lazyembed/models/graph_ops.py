"""The pieces every converted transformer graph is made of, emitted with ``onnx.helper``.

`GraphBuilder` collects nodes and initializers. Given a data file, it writes each large
initializer there the moment it is created (ONNX external data), so a graph of a
0.6B-parameter model never sits in memory as one protobuf (which protobuf could not
serialize past 2 GB anyway) and the converter holds about one tensor at a time.

The blocks are the ones the architectures share: linear layers with or without bias,
LayerNorm and RMSNorm (plain and Gemma's ``1 + weight`` form), exact and tanh GELU,
SiLU, rotary embeddings (half-rotation layout, full or partial), attention masks
(padding, causal, banded) and scaled-dot-product attention with grouped key/value heads.
Each architecture module (``*_graph.py``) composes them; shapes are written
``[batch, seq, hidden]`` and ``[batch, heads, seq, head_dim]``.

Masks are boolean "may attend" tensors combined with ``And`` and turned into an
additive bias once (``bias_from_allowed``), so two masked conditions never add two
float32 minima into an infinity.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # importing onnx is slow; the cache-hit path must not pay it
    import onnx

OPSET = 17
MS_DOMAIN = "com.microsoft"
#: Initializers at least this large go to the external data file (when there is one).
EXTERNAL_MIN_BYTES = 1024
#: Offsets in the data file are aligned to this, so a runtime can map tensors in place.
_ALIGN = 4096
I64 = np.int64
F32 = np.float32


class GraphBuilder:
    """Collects nodes and initializers with unique names.

    ``data``: the path of an external data file to stream large initializers into
    (created, must not exist); its name is what the graph file records, so the graph
    must be saved in the same directory. Without it, every initializer stays inline.
    """

    def __init__(self, data: Path | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._data_name = data.name if data is not None else ""
        self._data: IO[bytes] | None = data.open("xb") if data is not None else None
        self._names: set[str] = set()

    # ---- initializers ------------------------------------------------------------------

    def const(self, name: str, value: npt.NDArray[Any] | np.generic | float | int) -> str:
        """Add an initializer; large ones are written to the data file at once."""
        from onnx import TensorProto, helper, numpy_helper

        if name in self._names:
            raise ValueError(f"initializer {name!r} defined twice")
        self._names.add(name)
        array = np.asarray(value)
        if self._data is None or array.nbytes < EXTERNAL_MIN_BYTES:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        array = np.ascontiguousarray(array)
        offset = self._data.seek(0, os.SEEK_END)
        pad = -offset % _ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            offset += pad
        self._data.write(array.data.cast("B"))  # no bytes copy of a large table
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, val in (
            ("location", self._data_name),
            ("offset", str(offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, val
        self.inits.append(tensor)
        return name

    def scalar(self, value: float, dtype: type[np.generic] = F32) -> str:
        """A shared scalar constant (one initializer per distinct value and type)."""
        name = f"c_{np.dtype(dtype).name}_{value!r}"
        if name not in self._names:
            self.const(name, np.array(value, dtype))
        return name

    def ints(self, *values: int) -> str:
        """A shared 1-D int64 constant (shapes, axes)."""
        name = "c_i64_" + "_".join(str(v) for v in values)
        if name not in self._names:
            self.const(name, np.array(values, I64))
        return name

    # ---- nodes -------------------------------------------------------------------------

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

    def finish(self, last: str, hidden: int, name: str) -> onnx.ModelProto:
        """The model: inputs ``input_ids``/``attention_mask`` (int64 [batch, seq]), output
        ``last_hidden_state`` [batch, seq, hidden]. Closes the data file."""
        from onnx import TensorProto, helper

        if self._data is not None:
            self._data.close()
            self._data = None
        self.nodes.append(helper.make_node("Identity", [last], ["last_hidden_state"], name="out"))
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ]
        output = helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden]
        )
        graph = helper.make_graph(self.nodes, name, inputs, [output], initializer=self.inits)
        domains = {node.domain for node in self.nodes if node.domain}
        opsets = [helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, 1) for d in domains)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="lazyembed")
        model.ir_version = 8  # readable by every onnxruntime we support (>= 1.17)
        return model

    def close(self) -> None:
        """Close the data file (when building stopped early)."""
        if self._data is not None:
            self._data.close()
            self._data = None

    # ---- dense layers and norms ----------------------------------------------------------

    def linear(
        self, x: str, weight: npt.NDArray[F32], bias: npt.NDArray[F32] | None, name: str
    ) -> str:
        """``x @ weight.T + bias`` for a torch ``Linear`` weight stored [out, in]."""
        y = self.op("MatMul", [x, self.const(f"{name}.w", np.ascontiguousarray(weight.T))])
        return y if bias is None else self.op("Add", [y, self.const(f"{name}.b", bias)])

    def layer_norm(
        self, x: str, gamma: npt.NDArray[F32], beta: npt.NDArray[F32] | None, eps: float, name: str
    ) -> str:
        """LayerNorm over the last axis; ``beta`` None: no bias (zeros)."""
        b = beta if beta is not None else np.zeros_like(gamma)
        return self.op(
            "LayerNormalization",
            [x, self.const(f"{name}.g", gamma), self.const(f"{name}.b", b)],
            axis=-1,
            epsilon=eps,
        )

    def rms_norm(self, x: str, weight: npt.NDArray[F32], eps: float, name: str) -> str:
        """RMSNorm over the last axis: ``x / sqrt(mean(x^2) + eps) * weight`` (pass
        ``1 + w`` for Gemma's form)."""
        ms = self.op("ReduceMean", [self.op("Pow", [x, self.scalar(2.0)])], axes=[-1], keepdims=1)
        rms = self.op("Sqrt", [self.op("Add", [ms, self.scalar(eps)])])
        # Pow / Div: the form ONNX Runtime's optimizer fuses into SimplifiedLayerNormalization.
        return self.op("Mul", [self.op("Div", [x, rms]), self.const(f"{name}.w", weight)])

    # ---- activations ---------------------------------------------------------------------

    def gelu(self, x: str) -> str:
        """Exact GELU: ``0.5 x (1 + erf(x / sqrt 2))``."""
        erf = self.op("Erf", [self.op("Div", [x, self.scalar(math.sqrt(2.0))])])
        half_x = self.op("Mul", [x, self.scalar(0.5)])
        return self.op("Mul", [half_x, self.op("Add", [erf, self.scalar(1.0)])])

    def gelu_tanh(self, x: str) -> str:
        """GELU, tanh approximation (``gelu_pytorch_tanh``, ``gelu_new``)."""
        cube = self.op("Mul", [self.op("Mul", [x, x]), x])
        inner = self.op("Add", [x, self.op("Mul", [cube, self.scalar(0.044715)])])
        t = self.op("Tanh", [self.op("Mul", [inner, self.scalar(math.sqrt(2.0 / math.pi))])])
        half_x = self.op("Mul", [x, self.scalar(0.5)])
        return self.op("Mul", [half_x, self.op("Add", [t, self.scalar(1.0)])])

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def activation(self, x: str, name: str) -> str:
        """By Hugging Face's ``ACT2FN`` name (the ones these architectures use)."""
        if name in ("gelu",):
            return self.gelu(x)
        if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_tanh"):
            return self.gelu_tanh(x)
        if name in ("silu", "swish"):
            return self.silu(x)
        raise ValueError(f"activation {name!r} is not emitted")

    # ---- shapes --------------------------------------------------------------------------

    def split_heads(self, x: str, heads: int, head_dim: int) -> str:
        """[batch, seq, heads*head_dim] -> [batch, heads, seq, head_dim]."""
        r = self.op("Reshape", [x, self.ints(0, 0, heads, head_dim)])
        return self.op("Transpose", [r], perm=[0, 2, 1, 3])

    def merge_heads(self, x: str, heads: int, head_dim: int) -> str:
        """[batch, heads, seq, head_dim] -> [batch, seq, heads*head_dim]."""
        t = self.op("Transpose", [x], perm=[0, 2, 1, 3])
        return self.op("Reshape", [t, self.ints(0, 0, heads * head_dim)])

    def seq_len(self) -> str:
        """The sequence length (int64 scalar) of ``input_ids``."""
        return self.op("Gather", [self.op("Shape", ["input_ids"]), self.scalar(1, I64)], axis=0)

    def positions(self) -> str:
        """0..seq-1 as int64 [seq] (the same for every row: right padding or no padding)."""
        return self.op("Range", [self.scalar(0, I64), self.seq_len(), self.scalar(1, I64)])

    def positions_from_mask(self) -> str:
        """[batch, seq] int64: each real token numbered from 0 counting only real tokens
        before it (left padding shifts nothing); padding gets 0. What decoders compute
        from the attention mask (``cumsum(mask) - 1``, clipped at 0)."""
        cum = self.op("CumSum", ["attention_mask", self.scalar(1, I64)])
        pos = self.op("Sub", [cum, self.scalar(1, I64)])
        return self.op("Mul", [pos, "attention_mask"])

    # ---- masks ---------------------------------------------------------------------------

    def key_padding_allowed(self) -> str:
        """[batch, 1, 1, seq] bool: the key is a real token."""
        mask = self.op("Cast", ["attention_mask"], to=9)  # BOOL
        return self.op("Unsqueeze", [mask, self.ints(1, 2)])

    def distance(self) -> str:
        """[seq, seq] int64: ``key_index - query_index``."""
        pos = self.positions()
        rows = self.op("Unsqueeze", [pos, self.ints(1)])
        cols = self.op("Unsqueeze", [pos, self.ints(0)])
        return self.op("Sub", [cols, rows])

    def causal_allowed(self, distance: str) -> str:
        """[seq, seq] bool: the key is not after the query."""
        return self.op("LessOrEqual", [distance, self.scalar(0, I64)])

    def band_allowed(self, distance: str, below: int, above: int) -> str:
        """[seq, seq] bool: ``-below <= key - query <= above``."""
        lo = self.op("GreaterOrEqual", [distance, self.scalar(-below, I64)])
        hi = self.op("LessOrEqual", [distance, self.scalar(above, I64)])
        return self.op("And", [lo, hi])

    def both(self, a: str, b: str) -> str:
        return self.op("And", [a, b])

    def bias_from_allowed(self, allowed: str) -> str:
        """The additive attention bias: 0 where allowed, float32's lowest elsewhere."""
        lowest = self.scalar(float(np.finfo(np.float32).min))
        return self.op("Where", [allowed, self.scalar(0.0), lowest])

    # ---- rotary and attention -----------------------------------------------------------

    def rotary_tables(
        self, positions: str, rotary_dim: int, base: float, name: str
    ) -> tuple[str, str]:
        """cos and sin [..., rotary_dim] for int64 ``positions`` ([seq], or [batch, seq]:
        then unsqueeze axis 1 before `rotate`), in the half-rotation layout (frequencies
        repeated twice), as Hugging Face's ``RotaryEmbedding``:
        ``inv_freq = 1 / base ** (arange(0, dim, 2) / dim)``."""
        exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(F32) / rotary_dim
        inv = 1.0 / (base**exponents)
        posf = self.op("Unsqueeze", [self.op("Cast", [positions], to=1), self.ints(-1)])
        freqs = self.op("Mul", [posf, self.const(f"{name}.inv_freq", inv.astype(F32))])
        emb = self.op("Concat", [freqs, freqs], axis=-1)
        return self.op("Cos", [emb]), self.op("Sin", [emb])

    def rotate(self, x: str, cos: str, sin: str, head_dim: int, rotary_dim: int) -> str:
        """Apply rotary embeddings to ``x`` [batch, heads, seq, head_dim] (``cos``/``sin``
        broadcast to it: [seq, rotary_dim] or [batch, 1, seq, rotary_dim]); the last
        ``head_dim - rotary_dim`` features pass through unchanged."""
        half = rotary_dim // 2
        if rotary_dim < head_dim:
            rot = self.op("Slice", [x, self.ints(0), self.ints(rotary_dim), self.ints(-1)])
            rest = self.op("Slice", [x, self.ints(rotary_dim), self.ints(head_dim), self.ints(-1)])
        else:
            rot, rest = x, ""
        x1 = self.op("Slice", [rot, self.ints(0), self.ints(half), self.ints(-1)])
        x2 = self.op("Slice", [rot, self.ints(half), self.ints(rotary_dim), self.ints(-1)])
        rotated = self.op("Concat", [self.op("Neg", [x2]), x1], axis=-1)
        out = self.op("Add", [self.op("Mul", [rot, cos]), self.op("Mul", [rotated, sin])])
        return self.op("Concat", [out, rest], axis=-1) if rest else out

    def attention(self, q: str, k: str, v: str, bias: str, scale: float, groups: int = 1) -> str:
        """softmax(q k^T * scale + bias) v for q [b, h, s, d], k/v [b, h/groups, s, d];
        ``groups`` > 1 repeats each key/value head for that many query heads (GQA)."""
        if groups > 1:
            k, v = self._repeat_kv(k, groups), self._repeat_kv(v, groups)
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = self.op("Mul", [self.op("MatMul", [q, kt]), self.scalar(scale)])
        probs = self.op("Softmax", [self.op("Add", [scores, bias])], axis=-1)
        return self.op("MatMul", [probs, v])

    def _repeat_kv(self, x: str, groups: int) -> str:
        """[b, kv, s, d] -> [b, kv*groups, s, d], each head repeated ``groups`` times in a
        row (as ``repeat_kv`` does)."""
        shape = self.op("Shape", [x])
        batch_kv = self.op("Slice", [shape, self.ints(0), self.ints(2)])
        seq_dim = self.op("Slice", [shape, self.ints(2), self.ints(4)])
        expanded = self.op("Unsqueeze", [x, self.ints(2)])  # [b, kv, 1, s, d]
        target = self.op("Concat", [batch_kv, self.ints(groups), seq_dim], axis=0)
        tiled = self.op("Expand", [expanded, target])  # [b, kv, groups, s, d]
        # Reshape's 0 copies the input's dimension at the same index, so spell out s, d.
        batch = self.op("Slice", [shape, self.ints(0), self.ints(1)])
        merged = self.op("Concat", [batch, self.ints(-1), seq_dim], axis=0)
        return self.op("Reshape", [tiled, merged])  # [b, kv*groups, s, d]
