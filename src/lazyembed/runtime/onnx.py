"""The loaded model on ONNX Runtime (the default backend): the session and its options.

Knows nothing of lifecycles: `OnnxRuntime` is "a loaded thing" with `encode()` and
`close()` (a `base.LoadedModel`), which the lifecycle holds; `backends.load_runtime`
builds it from a picklable `base.RuntimeSpec`, so an isolated worker process can load the
same thing. A call's tokenising, run planning and pooling are `base.Call`'s.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lazyembed.errors import ClosedError
from lazyembed.models.dense import DenseStack
from lazyembed.runtime.base import Call, EncodeResult, RuntimeSpec
from lazyembed.runtime.batching import MAX_RUN_TOKENS
from lazyembed.runtime.feeds import ORT_DTYPES, PLAIN_INPUTS, GraphInput, make_feeds
from lazyembed.runtime.tokens import load_tokenizer

if TYPE_CHECKING:  # imported lazily: an isolated parent never needs onnxruntime
    import onnxruntime as ort
    from tokenizers import Tokenizer

log = logging.getLogger("lazyembed")

#: A run of at least this many padded tokens hands the arena's growth back when it ends;
#: smaller runs leave the (small) arena as it is, so short texts reuse it.
SHRINK_AFTER_TOKENS = 256
#: How long an intra-op worker spins for the next operator before it sleeps (µs).
SPIN_US = 20
#: Runs on the mapped weights before a "when_busy" session is pre-packed: enough to show
#: the model is in use (a load that serves one call and idles out never pays for it),
#: few enough that its cost (one pre-packed session creation) is soon repaid.
PREPACK_AFTER_RUNS = 16


def session_options(threads: int, *, pre_optimized: bool, prepack: bool) -> ort.SessionOptions:
    """Options measured to keep memory low, a quick (re)load, a short text fast and an idle
    model at zero CPU; ``prepack`` trades a slower load for faster calls."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if pre_optimized
        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    # The CPU arena stays on: without it every intermediate tensor of every layer is a
    # fresh malloc, and the big ones (attention scores of long texts) fault their pages in
    # each time (slower by a third for long documents and batches of sentences, measured).
    # Its memory is handed back after big runs instead (see `OnnxRuntime._run_options`).
    options.enable_cpu_mem_arena = True
    # Pre-packing lays every MatMul's weights out for the matrix kernel once, when the
    # session is created; without it each run re-lays them out, which is a large part of
    # a short text's time. The price is a session that takes several times longer to
    # create (page faults of the packed copy and the packing itself), so every reload is
    # slower; the memory held once loaded is the same (the packed copy replaces the mapped
    # weights). The two layouts round differently in the last bits (~1e-7); when each is
    # used is `RuntimeSpec.prepack` (docs/ARCHITECTURE.md, "Weight pre-packing").
    options.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
    # Within a run the intra-op workers spin between operators instead of sleeping: a
    # short text runs many small operators, and waking a sleeping worker for each costs
    # more than the operator. The spin is short (`SPIN_US`: the gap between two
    # operators, so a busy machine's other processes keep their CPU), and
    # `force_spinning_stop` ends it with the run, so a loaded, idle model stays at zero
    # CPU. (There is no inter-op pool: sequential mode.)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _graph_inputs(session: ort.InferenceSession) -> list[GraphInput] | None:
    """The session's inputs as `GraphInput` values; None when they are the plain two."""
    inputs = session.get_inputs()
    if sorted(i.name for i in inputs) == sorted(PLAIN_INPUTS) and all(
        i.type == "tensor(int64)" for i in inputs
    ):
        return None
    return [GraphInput(i.name, tuple(i.shape), ORT_DTYPES.get(i.type, np.float32)) for i in inputs]


class OnnxRuntime:
    """A loaded model. `encode` is thread-safe (ORT sessions allow concurrent run()).

    With ``prepack = "when_busy"`` the session first runs on the memory-mapped weights,
    so a (re)load gives its first vector quickly. The call during which the load reaches
    `PREPACK_AFTER_RUNS` runs creates a pre-packed session once its own vectors are done
    and swaps it in, so it returns later by about one pre-packed load. It does so on its
    own thread, on purpose: a helper thread's malloc arena kept the packed copy's pages
    after unload (docs/ARCHITECTURE.md, "Weight pre-packing"). A call keeps the session it
    started with, so one call's vectors come from one layout; calls after the swap round
    the last bits differently (~1e-7). `encode` reads ``_session`` once (one reference,
    atomic); the old session goes with the last call holding it.
    """

    #: Padded tokens per ONNX run: bounds a call's working memory (see `plan_batches`).
    max_run_tokens = MAX_RUN_TOKENS

    def __init__(self, spec: RuntimeSpec, tokenizer: Tokenizer | None = None) -> None:
        import onnxruntime as ort

        self.spec = spec
        self.tokenizer = tokenizer or load_tokenizer(spec.tokenizer_path, spec.max_seq_length)
        self._session: ort.InferenceSession | None = self._new_session(prepack=spec.prepack_at_load)
        # Counts runs until the swap ("when_busy" only); next() on a count is atomic, so
        # of concurrent calls exactly one sees the count reach the mark.
        self._runs = itertools.count(1)
        self._prepack_at_run = PREPACK_AFTER_RUNS if spec.prepack == "when_busy" else 0
        self._output_names = [spec.output]
        # What the graph takes (read once; every session of this file takes the same):
        # None for the plain two inputs, fed without any lookup.
        self._inputs = _graph_inputs(self._session)
        # Dense modules' weights (small) live as long as this loaded model.
        self._dense = DenseStack(spec.dense) if spec.dense else None
        # Shrink the arena at the end of big runs: the arena's speed within a run, not its
        # peak held between runs (the default arena keeps a big batch's whole peak).
        # Shrinking after every run would free and fault in its pages for each short text.
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._small_run_options = ort.RunOptions()

    def _new_session(self, *, prepack: bool) -> ort.InferenceSession:
        import onnxruntime as ort

        spec = self.spec
        return ort.InferenceSession(
            spec.onnx_path,
            sess_options=session_options(
                spec.threads, pre_optimized=spec.pre_optimized, prepack=prepack
            ),
            providers=["CPUExecutionProvider"],
        )

    @property
    def prepacked(self) -> bool:
        """Whether the current session runs on pre-packed weights."""
        session = self._session
        entry = "session.disable_prepacking"
        return session is not None and (
            session.get_session_options().get_session_config_entry(entry) == "0"
        )

    def _prepack(self) -> None:
        """Swap in a pre-packed session; a failure leaves the mapped weights in use.

        ONNX Runtime releases the GIL while it creates the session, so other threads'
        calls go on meanwhile, on the old one."""
        started = time.perf_counter()
        try:
            packed = self._new_session(prepack=True)
        except Exception:
            log.warning("pre-packing the weights failed; runs go on unpacked", exc_info=True)
            return
        if self._session is not None:  # None: closed by a caller not using the lifecycle
            self._session = packed
        del packed
        log.info(
            "weights pre-packed in %.0f ms, after %d runs",
            (time.perf_counter() - started) * 1e3,
            self._prepack_at_run,
        )

    def encode(self, texts: Sequence[str], *, prompt_length: int = 0) -> EncodeResult:
        """Embed texts: tokenize once (cut to what is kept), run length-sorted runs bounded
        in texts and padded tokens, pool (leaving the first ``prompt_length`` tokens out
        when the model excludes its prompt), normalise."""
        session = self._session
        if session is None:
            raise ClosedError("OnnxRuntime.encode() after close()")  # the lifecycle prevents it
        call = Call(
            self.spec,
            self.tokenizer,
            texts,
            max_run_tokens=self.max_run_tokens,
            prompt_length=prompt_length,
            dense=self._dense,
        )
        prepack_now = False
        for rows in call.runs:
            ids, mask = call.inputs(rows)
            feeds = (
                {"input_ids": ids, "attention_mask": mask}
                if self._inputs is None
                else make_feeds(self._inputs, ids, mask)
            )
            options = (
                self._run_options if ids.size >= SHRINK_AFTER_TOKENS else self._small_run_options
            )
            call.pool(rows, session.run(self._output_names, feeds, options)[0], mask)
            if self._prepack_at_run and next(self._runs) == self._prepack_at_run:
                prepack_now = True
        if prepack_now:
            del session  # so the old session goes at the swap (unless a call still runs on it)
            self._prepack()
        # Creating the packed copy grew the heap, as a big run does: trim it too.
        return call.result(trim=prepack_now)

    def close(self) -> None:
        """Drop the session; the caller returns the freed pages to the OS."""
        self._session = None
