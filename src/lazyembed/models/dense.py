"""sentence-transformers' ``Dense`` modules: linear layers after the pooling, in numpy.

A Dense module (``sentence_transformers.models.Dense``, or the 6.x path
``sentence_transformers.base.modules.dense.Dense``) maps the pooled vector through
``activation(x @ W.T + b)`` (plus ``x`` or a projection of it with ``use_residual``);
EmbeddingGemma chains two (768→3072→768). `read_dense` reads and checks a module's
folder (``config.json`` and ``model.safetensors``: ``linear.weight`` [out, in],
``linear.bias``) when the model is prepared, so a folder lazyembed would not reproduce is
refused before any work: an activation outside `ACTIVATIONS` by name, a folder with only
``pytorch_model.bin`` with the one-line conversion. `DenseStack.load` reads the weights
when the model loads (they go with it at unload); `apply` runs the chain on a run's
pooled vectors. A matrix-vector product per text after pooling costs little next to the
transformer, so the chain is not folded into the graph (not measured yet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lazyembed.errors import ModelConversionError, UnsupportedModelError

FloatArray = npt.NDArray[np.float32]

WEIGHTS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
#: sentence-transformers' default when a config names no activation.
DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"


def _erf(x: FloatArray) -> FloatArray:
    """erf without scipy (Abramowitz-Stegun 7.1.26 is too coarse): float64 math.erf."""
    import math

    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(np.float32)  # type: ignore[no-any-return]


def _gelu(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))
    return out


def _softplus(x: FloatArray) -> FloatArray:
    out: FloatArray = np.logaddexp(np.float32(0.0), x).astype(np.float32)
    return out


#: torch.nn activation classes (constructed with their defaults, as sentence-transformers
#: does) -> the same function in numpy.
ACTIVATIONS: dict[str, Callable[[FloatArray], FloatArray]] = {
    "Identity": lambda x: x,
    "Tanh": np.tanh,
    "ReLU": lambda x: np.maximum(x, np.float32(0.0)),
    "GELU": _gelu,
    "Sigmoid": lambda x: (1.0 / (1.0 + np.exp(-x))).astype(np.float32),
    "SiLU": lambda x: (x / (1.0 + np.exp(-x))).astype(np.float32),
    "LeakyReLU": lambda x: np.where(x >= 0, x, np.float32(0.01) * x),
    "ELU": lambda x: np.where(x > 0, x, np.expm1(x)).astype(np.float32),
    "Softplus": _softplus,
    "Mish": lambda x: (x * np.tanh(_softplus(x))).astype(np.float32),
    "Softsign": lambda x: (x / (1.0 + np.abs(x))).astype(np.float32),
}


@dataclass(frozen=True)
class DenseLayer:
    """One Dense module: where its weights are and what it computes (picklable)."""

    weights_path: str
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a key of ACTIVATIONS
    residual: bool
    sha256: str

    def fingerprint_part(self) -> str:
        return (
            f"{self.in_features}>{self.out_features},{self.activation}"
            f"{',residual' if self.residual else ''},{self.sha256[:24]}"
        )


def _activation(name: object, path: Path) -> str:
    if name is None:
        name = DEFAULT_ACTIVATION
    text = str(name)
    short = text.rsplit(".", 1)[-1]
    if not text.startswith("torch.") or short not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{path}: Dense activation_function {text!r} is not one lazyembed applies; "
            f"supported: {', '.join(ACTIVATIONS)} (torch.nn)"
        )
    return short


def _int(config: dict[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelConversionError(f"{path}: Dense {key} must be a positive integer, not {value!r}")
    return value


def read_dense(folder: Path) -> DenseLayer:
    """Read and check a Dense module's folder (weights shapes included; not kept)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"cannot read the Dense module's {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelConversionError(f"{path} is not a JSON object")
    source = config.get("module_input_name", "sentence_embedding")
    target = config.get("module_output_name") or source
    if source != "sentence_embedding" or target != "sentence_embedding":
        raise UnsupportedModelError(
            f"{path}: a Dense module on {source!r} -> {target!r}; lazyembed applies Dense "
            "to the pooled sentence_embedding only"
        )
    in_features, out_features = (
        _int(config, "in_features", path),
        _int(config, "out_features", path),
    )
    layer = DenseLayer(
        weights_path=str(folder / WEIGHTS_FILE),
        in_features=in_features,
        out_features=out_features,
        bias=bool(config.get("bias", True)),
        activation=_activation(config.get("activation_function"), path),
        residual=bool(config.get("use_residual", False)),
        sha256="",
    )
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        if (folder / TORCH_FILE).is_file():
            torch_file, out = folder / TORCH_FILE, weights
            raise UnsupportedModelError(
                f"{folder} has only {TORCH_FILE}; lazyembed reads {WEIGHTS_FILE}. Convert it "
                f'once (needs torch): python -c "import torch; from safetensors.torch import '
                f"save_file; save_file(torch.load('{torch_file}'), '{out}')\""
            )
        raise ModelConversionError(f"{weights} is missing: the Dense module has no weights")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    layer = dataclasses.replace(layer, sha256=sha)
    _check_shapes(layer, _tensors(layer))
    return layer


def _bf16_tensors(path: str) -> dict[str, FloatArray]:
    """A safetensors file with bfloat16 tensors (numpy has no bfloat16): the header read
    as the format defines it, each bf16 value widened to float32 exactly."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        data = f.read()
    plain = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}
    out: dict[str, FloatArray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        raw = data[start:end]
        if meta["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            values = bits.view(np.float32)
        elif meta["dtype"] in plain:
            values = np.frombuffer(raw, dtype=plain[meta["dtype"]]).astype(np.float32)
        else:
            raise ModelConversionError(f"{path}: {name} has dtype {meta['dtype']}")
        out[name] = values.reshape(meta["shape"])
    return out


def _tensors(layer: DenseLayer) -> dict[str, FloatArray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        try:
            tensors = load_file(layer.weights_path)
        except TypeError:  # "data type 'bfloat16' not understood"
            return _bf16_tensors(layer.weights_path)
    except (SafetensorError, OSError, TypeError, ValueError, KeyError) as exc:
        raise ModelConversionError(f"cannot read {layer.weights_path}: {exc}") from exc
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in tensors.items()}


def _check_shapes(layer: DenseLayer, tensors: dict[str, FloatArray]) -> None:
    wanted: dict[str, tuple[int, ...]] = {"linear.weight": (layer.out_features, layer.in_features)}
    if layer.bias:
        wanted["linear.bias"] = (layer.out_features,)
    if layer.residual and layer.in_features != layer.out_features:
        wanted["residual.weight"] = (layer.out_features, layer.in_features)
    for name, shape in wanted.items():
        got = tensors.get(name)
        if got is None or got.shape != shape:
            found = "missing" if got is None else f"shape {list(got.shape)}"
            raise ModelConversionError(
                f"{layer.weights_path}: {name} should have shape {list(shape)} ({found})"
            )


class DenseStack:
    """A chain of Dense layers with their weights in memory (read-only after load, so
    any number of threads may `apply` at once)."""

    def __init__(self, layers: Sequence[DenseLayer]) -> None:
        self._layers: list[tuple[DenseLayer, FloatArray, FloatArray | None, FloatArray | None]]
        self._layers = []
        for layer in layers:
            tensors = _tensors(layer)
            _check_shapes(layer, tensors)
            weight_t = np.ascontiguousarray(tensors["linear.weight"].T)
            residual = tensors.get("residual.weight")
            self._layers.append(
                (
                    layer,
                    weight_t,
                    tensors.get("linear.bias") if layer.bias else None,
                    None if residual is None else np.ascontiguousarray(residual.T),
                )
            )

    def apply(self, x: FloatArray) -> FloatArray:
        """The chain on pooled vectors (rows), in float32."""
        for layer, weight_t, bias, residual in self._layers:
            out = x @ weight_t
            if bias is not None:
                out += bias
            out = ACTIVATIONS[layer.activation](out).astype(np.float32, copy=False)
            if layer.residual:
                out = out + (x if residual is None else x @ residual)
            x = out
        return x
