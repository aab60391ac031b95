"""The loaded model on OpenVINO (the ``lazyembed[openvino]`` extra), twin of `OnnxRuntime`.

Same converted .onnx file (external data beside it), same tokenisation, run planning,
pooling and normalisation (`base.Call`); only the engine differs. OpenVINO compiles the
model for this CPU when it loads: a compile cache under lazyembed's model cache dir turns
a reload into an import, and the weights are mapped from disk rather than copied.
Inference is fp32, or bf16 where the CPU has bf16 hardware (`lazyembed.cpu`). openvino
is imported only when a runtime is built, never by importing this module.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lazyembed import memory
from lazyembed.cpu import CpuFeatures, cpu_features
from lazyembed.errors import BackendUnavailableError, ClosedError
from lazyembed.models.dense import DenseStack
from lazyembed.runtime.base import Call, EncodeResult, Rows, RuntimeSpec
from lazyembed.runtime.batching import MAX_RUN_TOKENS
from lazyembed.runtime.feeds import PLAIN_INPUTS, GraphInput, make_feeds
from lazyembed.runtime.tokens import load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

Precision = Literal["fp32", "bf16", "auto"]
Hint = Literal["LATENCY", "THROUGHPUT"]
#: Compiled-model blobs go to this folder of lazyembed's model cache dir.
CACHE_SUBDIR = "openvino"
#: OpenVINO's names for the two precisions.
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def import_openvino() -> Any:
    """The openvino module, or `BackendUnavailableError` naming the extra to install."""
    try:
        openvino = importlib.import_module("openvino")
    except ImportError as exc:
        raise BackendUnavailableError(
            'backend = "openvino" needs OpenVINO: pip install "lazyembed[openvino]"'
        ) from exc
    return openvino


def ov_capabilities(core: Any) -> frozenset[str] | None:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (e.g. FP32, BF16), if it tells."""
    try:
        return frozenset(
            str(c).upper() for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        )
    except Exception:  # an older or unusual plugin without the property: the flags decide
        return None


def resolve_precision(
    requested: Precision, cpu: CpuFeatures, capabilities: Collection[str] | None
) -> Literal["fp32", "bf16"]:
    """The precision to compile with: bf16 only on bf16 hardware that OpenVINO can use.

    ``"auto"`` picks bf16 where available and fp32 elsewhere, quietly; ``"bf16"`` on a
    CPU without it raises `BackendUnavailableError` naming the CPU and what it lacks.
    """
    if requested == "fp32":
        return "fp32"
    reason = _bf16_missing(cpu, capabilities)
    if reason is None:
        return "bf16"
    if requested == "auto":
        return "fp32"
    raise BackendUnavailableError(
        f'precision = "bf16" needs a CPU with AMX (amx_tile, amx_bf16) or AVX512-BF16 '
        f'(avx512_bf16); {reason}. Use precision = "fp32" (or "auto").'
    )


def _bf16_missing(cpu: CpuFeatures, capabilities: Collection[str] | None) -> str | None:
    """Why bf16 is not available here, or None if it is."""
    ov_says = None if capabilities is None else "BF16" in capabilities
    if cpu.known and not cpu.bf16:
        return f"this CPU, {cpu.describe()}, has neither"
    if ov_says is False:
        return f"OpenVINO reports no BF16 capability on {cpu.describe()}"
    if not cpu.known and ov_says is None:
        return f"neither /proc/cpuinfo nor OpenVINO tells whether {cpu.model_name} has it"
    return None


def compile_config(
    spec: RuntimeSpec,
    *,
    precision: Literal["fp32", "bf16"],
    cache_dir: Path | None,
    hint: Hint = "LATENCY",
) -> dict[str, str]:
    """The CPU plugin's compile properties (plain strings, so tests can read them).

    The precision is always set: left alone, OpenVINO picks bf16 by itself on AMX CPUs,
    and ``fp32`` must mean fp32 there too.
    """
    config = {
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
        "INFERENCE_NUM_THREADS": str(spec.threads),
        "PERFORMANCE_HINT": hint,
        "ENABLE_MMAP": "YES",
    }
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir / CACHE_SUBDIR)
    return config


class OpenVinoRuntime:
    """A loaded model on OpenVINO. `encode` is thread-safe: calls take turns on the model
    (with the LATENCY hint one inference runs at a time anyway, on all its threads)."""

    max_run_tokens = MAX_RUN_TOKENS

    def __init__(
        self,
        spec: RuntimeSpec,
        *,
        precision: Literal["fp32", "bf16"],
        config: dict[str, str],
        core: Any,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.spec = spec
        self.precision = precision
        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(spec.tokenizer_path, spec.max_seq_length)
        self._lock = threading.Lock()  # held by a call for all its runs; guards the requests
        self._dense = DenseStack(spec.dense) if spec.dense else None  # read-only once loaded
        core_keys = {"ENABLE_MMAP"}
        core.set_property({k: v for k, v in config.items() if k in core_keys})
        compile_options = {k: v for k, v in config.items() if k not in core_keys}
        self._core: Any = core
        self._compiled: Any = core.compile_model(spec.onnx_path, "CPU", compile_options)
        # THROUGHPUT: one request per stream, so runs can go through the streams at once.
        # A model's own export may take more than the plain two inputs (runtime/feeds.py)
        # and give more than one output: read them, as the ONNX Runtime backend does.
        self._inputs = _graph_inputs(self._compiled)
        # By name: a port would keep the compiled model alive past close().
        self._output = spec.output
        requests = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests: list[Any] = [
            self._compiled.create_infer_request() for _ in range(max(1, requests))
        ]

    def encode(self, texts: Sequence[str], *, prompt_length: int = 0) -> EncodeResult:
        """Embed texts exactly as `OnnxRuntime.encode` does, on OpenVINO."""
        call = Call(
            self.spec,
            self.tokenizer,
            texts,
            max_run_tokens=self.max_run_tokens,
            prompt_length=prompt_length,
            dense=self._dense,
        )
        with self._lock:
            if self._compiled is None:
                raise ClosedError("OpenVinoRuntime.encode() after close()")
            if len(self._requests) > 1 and len(call.runs) > 1:
                self._run_overlapped(call)
            else:
                request = self._requests[0]
                for rows in call.runs:
                    ids, mask = call.inputs(rows)
                    request.infer(self._feeds(ids, mask))
                    call.pool(rows, request.get_tensor(self._output).data, mask)
        return call.result()

    def _run_overlapped(self, call: Call) -> None:
        """Runs dealt round-robin to the streams' requests: run k waits for run k - n.

        No Python callbacks (OpenVINO would call them on its own threads, under the GIL);
        each request is waited for here, and every started one is waited for even when
        another fails, so no run still writes into a request's buffers after we return.
        """
        requests = self._requests
        pending: list[tuple[Rows, Any] | None] = [None] * len(requests)
        try:
            for index, rows in enumerate(call.runs):
                slot = index % len(requests)
                self._collect(slot, pending, call)
                ids, mask = call.inputs(rows)
                requests[slot].start_async(self._feeds(ids, mask))
                pending[slot] = (rows, mask)
            for slot in range(len(requests)):
                self._collect(slot, pending, call)
        finally:
            for slot, job in enumerate(pending):
                if job is not None:
                    requests[slot].wait()

    def _collect(self, slot: int, pending: list[tuple[Rows, Any] | None], call: Call) -> None:
        """Wait for the request in ``slot`` (if it runs) and pool its output into its rows."""
        job = pending[slot]
        if job is None:
            return
        request = self._requests[slot]
        pending[slot] = None
        request.wait()
        rows, mask = job
        call.pool(rows, request.get_tensor(self._output).data, mask)

    def _feeds(self, ids: Any, mask: Any) -> dict[str, Any]:
        if self._inputs is None:
            return {"input_ids": ids, "attention_mask": mask}
        return dict(make_feeds(self._inputs, ids, mask))

    def close(self) -> None:
        """Drop the requests, the compiled model and the core, then hand the heap back."""
        with self._lock:
            self._requests = []
            self._compiled = None
            self._core = None
        memory.release_to_os()


def _graph_inputs(compiled: Any) -> list[GraphInput] | None:
    """The compiled model's inputs as `GraphInput` values; None when they are the plain
    two (int64 input_ids and attention_mask)."""
    inputs = [
        GraphInput(
            port.get_any_name(),
            tuple(dim.get_length() if dim.is_static else None for dim in port.get_partial_shape()),
            port.get_element_type().to_dtype().type,
        )
        for port in compiled.inputs
    ]
    plain = sorted(i.name for i in inputs) == sorted(PLAIN_INPUTS)
    if plain and all(i.dtype is np.int64 for i in inputs):
        return None
    return inputs


def load_openvino(
    spec: RuntimeSpec,
    *,
    precision: Precision = "fp32",
    cache_dir: str | Path | None = None,
    hint: Hint = "LATENCY",
    tokenizer: Tokenizer | None = None,
    cpu: CpuFeatures | None = None,
    core: Any = None,
) -> OpenVinoRuntime:
    """Compile ``spec.onnx_path`` for this CPU with OpenVINO.

    ``cache_dir`` is lazyembed's model cache dir (``settings.model_cache_dir``): compiled
    blobs go to its `CACHE_SUBDIR`; None compiles every time. ``cpu`` and ``core`` are
    this machine's `cpu_features()` and a fresh ``openvino.Core()`` unless given (tests
    pass fakes). Raises `BackendUnavailableError` without openvino, and for
    ``precision="bf16"`` on a CPU without bf16.
    """
    if core is None:
        core = import_openvino().Core()
    chosen = resolve_precision(precision, cpu or cpu_features(), ov_capabilities(core))
    folder = None if cache_dir is None else Path(cache_dir)
    config = compile_config(spec, precision=chosen, cache_dir=folder, hint=hint)
    return OpenVinoRuntime(spec, precision=chosen, config=config, core=core, tokenizer=tokenizer)
