"""From the built graph to the files the cache stores: quantize, optimize.

The graph is optimized once by ONNX Runtime (``ORT_ENABLE_EXTENDED``) and saved, so later
processes load it with optimizations disabled, as a small graph file plus one external
data file of weights that ONNX Runtime memory-maps (``<stem>.onnx`` and
``<stem>.onnx.data``). ONNX Runtime writes both itself: re-saving through ``onnx`` would
hold the whole model as one protobuf in memory (several GB for a 0.6B model).
Everything is written into a fresh private work directory; the store
(``onnx_store.py``) moves the results into the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lazyembed.errors import ModelConversionError
from lazyembed.models import bert_graph
from lazyembed.models.architectures import BERT_TYPES, architecture
from lazyembed.models.bert_graph import GraphKind
from lazyembed.models.encoder_config import read_config
from lazyembed.models.graph_ops import EXTERNAL_MIN_BYTES
from lazyembed.models.onnx_store import Variant, data_path

if TYPE_CHECKING:
    import onnx


def build_onnx_model(
    model_dir: Path, *, graph: GraphKind = "plain", data: Path | None = None
) -> onnx.ModelProto:
    """The unoptimized graph of the model in ``model_dir`` (of a native type).

    ``graph``: ``fused`` exists for BERT/XLM-R only. ``data``: stream the weights into
    this external data file, so the graph must be saved beside it (and is checked from
    disk, `_check_saved`); without it the graph is built and checked in memory.
    """
    import onnx

    model_dir = Path(model_dir)
    model_type = read_config(model_dir).model_type  # refuses unsupported ones
    if model_type in BERT_TYPES:
        model = bert_graph.build_onnx_model(model_dir, graph=graph, data=data)
    elif graph == "fused":
        raise ModelConversionError(f"the fused graph exists for BERT/XLM-R, not {model_type}")
    else:
        model = architecture(model_type).build(model_dir, data)
    if data is None:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:  # a converter bug, not a user error
            raise ModelConversionError(f"built an invalid ONNX graph: {exc}") from exc
    return model


def _check_saved(path: Path) -> None:
    """``onnx.checker`` on a saved graph whose weights are external (any size)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:  # a converter bug, not a user error
        raise ModelConversionError(f"built an invalid ONNX graph: {exc}") from exc


def _optimize(src: Path, dest: Path) -> None:
    """Let ONNX Runtime optimize ``src`` once and save the result to ``dest``, every
    initializer of at least ``EXTERNAL_MIN_BYTES`` in ``data_path(dest)``.

    ORT_ENABLE_EXTENDED, not ALL: ALL adds layout transforms that may be specific to the
    CPU the file was written on, and for this graph it produced the same nodes anyway.

    The data file is what runtimes memory-map: a session is created in ~10 ms instead of
    ~120 ms, and only the weight pages actually touched count in RSS (most of a
    word-embedding table never is). The pages belong to the file, so unloading unmaps
    them and the kernel can drop them under pressure. ONNX Runtime aligns each tensor's
    offset, as ``onnx`` would, and reads the weights of ``src`` from its mapped data
    file, so the converter never holds the model as one protobuf.
    """
    import onnxruntime as ort

    data = data_path(dest)
    if data.exists():  # must be a fresh file, not appended to or rewritten in place
        raise FileExistsError(f"{data} exists in the private work directory")

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dest)
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_prepacking", "1")
    # Weights go to an external file: a graph over 2 GB cannot be one protobuf.
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", data_path(dest).name
    )
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes",
        str(EXTERNAL_MIN_BYTES),
    )
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


def build_into(
    model_dir: Path, variant: Variant, graph_kind: GraphKind, work: Path, name: str
) -> tuple[Path, Path]:
    """Build, (quantize,) optimize; return (graph, data) inside ``work``."""
    import onnx

    raw = work / "raw.onnx"
    model = build_onnx_model(model_dir, graph=graph_kind, data=data_path(raw))
    onnx.save(model, str(raw))
    del model
    _check_saved(raw)
    if variant == "int8":
        quantized = work / "quantized.onnx"
        _quantize(raw, quantized)
        raw = quantized
    graph = work / name
    _optimize(raw, graph)
    data = data_path(graph)
    if not data.is_file():
        raise ModelConversionError(f"ONNX Runtime wrote no external data file {data}")
    data.chmod(0o644)  # not 0600 (by umask): that would hide the cache from other users
    for path in (data, graph):
        with path.open("rb") as f:
            os.fsync(f.fileno())
    return graph, data
