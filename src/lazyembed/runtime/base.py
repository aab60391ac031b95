"""What every backend shares: the spec it loads from, the result it gives, and the steps
of a call around the engine's run (tokenise, sort by length, plan runs, pool, trim).

Backends (`onnx`, `openvino`) import this module and never each other; `backends` picks
one for a spec. Imports no engine: an isolated parent process needs only these types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from lazyembed import memory
from lazyembed.models.dense import DenseLayer, DenseStack
from lazyembed.pooling import pool
from lazyembed.runtime.batching import padded_inputs, plan_batches
from lazyembed.runtime.tokens import encode_truncated

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from lazyembed.config import PrepackMode

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]
Rows = npt.NDArray[np.intp]
#: After a call whose largest run held this many (padded) tokens, trim the heap.
TRIM_AFTER_TOKENS = 512


@dataclass(frozen=True)
class RuntimeSpec:
    """Everything needed to load the runtime; plain values so it pickles to a worker."""

    onnx_path: str
    tokenizer_path: str
    max_seq_length: int
    dimension: int
    threads: int
    batch_size: int
    normalize: bool = True
    pre_optimized: bool = True
    #: sentence-transformers' pooling modes (one, or several concatenated).
    pooling: tuple[str, ...] = ("mean",)
    #: Lowercase texts before tokenizing (sentence_bert_config.json's do_lower_case).
    lowercase: bool = False
    #: "onnxruntime" (runtime/onnx.py) or "openvino" (runtime/openvino.py, the extra), with
    #: OpenVINO's precision and where it keeps compiled models.
    backend: str = "onnxruntime"
    precision: str = "fp32"
    compile_cache_dir: str | None = None
    #: Pool over a prompt's tokens too (False: ``encode(..., prompt_length=n)`` leaves the
    #: first n tokens of each text out of the pooling; the encoder still sees them).
    include_prompt: bool = True
    #: When the MatMul weights are pre-packed (see `onnx.session_options`): "at_load",
    #: "when_busy" (`OnnxRuntime` swaps in a pre-packed session once busy) or "never".
    prepack: PrepackMode = "never"
    #: The graph output read: token vectors ("last_hidden_state", "token_embeddings"),
    #: or "sentence_embedding" from a graph that pools itself (then no pooling here).
    output: str = "last_hidden_state"
    #: Dense modules applied to the pooled vectors, before the normalisation.
    dense: tuple[DenseLayer, ...] = ()
    #: tokenizer_config.json's padding_side ("left": Qwen3-Embedding-style decoders).
    #: Positions are counted from the mask and pooling finds each text's tokens, so the
    #: side changes no vector beyond rounding; it follows the model's own layout.
    padding_side: str = "right"

    @property
    def prepack_at_load(self) -> bool:
        """Whether the session a load creates is pre-packed (the swap comes later)."""
        return self.prepack == "at_load"


@dataclass(frozen=True)
class EncodeResult:
    """Vectors in input order, and the real token count of each input after truncation."""

    vectors: FloatArray
    token_counts: list[int]


class LoadedModel(Protocol):
    """What the lifecycle holds: a backend's runtime in process, or an isolated worker."""

    def encode(self, texts: Sequence[str], *, prompt_length: int = 0) -> EncodeResult: ...

    def close(self) -> None: ...


class Call:
    """One ``encode`` call's texts, tokenised once, cut into length-sorted runs.

    A backend feeds each run's `inputs` to its engine and hands the hidden states to
    `pool`, then returns `result`. Sorting by length wastes almost nothing on padding
    (unsorted, much is padding). Owned by the calling thread only.
    """

    def __init__(
        self,
        spec: RuntimeSpec,
        tokenizer: Tokenizer,
        texts: Sequence[str],
        *,
        max_run_tokens: int,
        prompt_length: int = 0,
        dense: DenseStack | None = None,
    ) -> None:
        if spec.dense and dense is None:
            raise ValueError("a spec with Dense modules needs their loaded DenseStack")
        self.spec = spec
        self.dense = dense
        self.prompt_length = prompt_length
        if spec.lowercase:
            texts = [text.lower() for text in texts]
        self.encodings: Sequence[Any] = encode_truncated(tokenizer, texts)
        self.lengths: IdArray = np.fromiter(
            (len(e.ids) for e in self.encodings), dtype=np.int64, count=len(texts)
        )
        self.out: FloatArray = np.empty((len(texts), spec.dimension), dtype=np.float32)
        order = np.argsort(self.lengths, kind="stable")
        plan = plan_batches(self.lengths[order].tolist(), spec.batch_size, max_run_tokens)
        #: The input rows of each run, shortest texts first.
        self.runs: list[Rows] = [order[start:end] for start, end in plan]
        #: The most padded tokens (rows x width) of any run fed so far.
        self.largest = 0

    def inputs(self, rows: Rows) -> tuple[IdArray, IdArray]:
        """input_ids and attention_mask of a run, padded to its longest (last) text."""
        ids, mask = padded_inputs(
            self.encodings, rows, int(self.lengths[rows[-1]]), left=self.spec.padding_side == "left"
        )
        self.largest = max(self.largest, ids.size)
        return ids, mask

    def pool(self, rows: Rows, hidden: Any, mask: IdArray) -> None:
        """Pool a run's hidden states into its rows (the spec's modes, the prompt left out
        when the model excludes it), normalised when the spec says so."""
        if self.spec.output == "sentence_embedding":  # pooled by the graph already
            pooled = np.asarray(hidden, dtype=np.float32)
        else:
            excluded = np.full(len(rows), self.prompt_length) if self.prompt_length else None
            pooled = pool(
                hidden,
                mask,
                self.spec.pooling,
                normalize=self.spec.normalize and self.dense is None,
                prompt_lengths=excluded,
            )
            if self.dense is None:
                self.out[rows] = pooled
                return
        if self.dense is not None:
            pooled = self.dense.apply(pooled)
        if self.spec.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        self.out[rows] = pooled

    def result(self, *, trim: bool = False) -> EncodeResult:
        """The vectors and token counts; trims the heap after a big run (or when asked):
        cheap, and better than holding the peak while the model sits idle."""
        if trim or self.largest >= TRIM_AFTER_TOKENS:
            memory.trim_heap()
        return EncodeResult(self.out, self.lengths.tolist())
