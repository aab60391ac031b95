"""sentence-transformers' ``SentenceTransformer`` methods, for drop-in use without torch.

`SentenceTransformerMethods` is a mixin: ``encode``, ``encode_query``/``encode_document``,
``similarity``/``similarity_pairwise``/``similarity_fn_name``, ``tokenize``,
``max_seq_length`` and the dimension getters, built only on what its host provides —
``embed_numpy``, ``prompts``, the model's `ModelInfo` and its tokenizer — so an
`Embedder`, its process-isolated mode and any client of a shared model offer the same
names with the same behaviour. Each name keeps sentence-transformers' signature, and its
results (compared in tests/test_st_dropin.py with sentence-transformers' own); where
sentence-transformers hands back torch tensors, these hand back numpy arrays. An option
lazyembed cannot honour raises `UnsupportedOptionError` naming it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, overload

from lazyembed.errors import InputTypeError, InvalidInputError, UnsupportedOptionError
from lazyembed.inputs import normalize_inputs

# numpy and the modules built on it are imported by the methods that use them: the class
# is a base of `Embedder`, whose module a thin client of the shared daemon imports too.
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from tokenizers import Tokenizer

    from lazyembed.config import KeepAliveLike
    from lazyembed.models.info import ModelInfo
    from lazyembed.models.prompts import Prompts
    from lazyembed.quantization import Quantized
    from lazyembed.similarity import Scores

    FloatArray = npt.NDArray[np.float32]
    TokenArrays = dict[str, npt.NDArray[np.int64]]
#: Model types whose Hugging Face tokenizer also returns token_type_ids.
_TOKEN_TYPE_MODELS: Final = frozenset({"bert"})
#: encode() keywords sentence-transformers accepts that change nothing here: ``task``
#: routes through a Router module, which no model lazyembed runs has.
_IGNORED_KEYWORDS: Final = frozenset({"task"})


class SentenceTransformerMethods:
    """sentence-transformers' names on top of ``embed_numpy``, ``prompts``, the model's
    info and tokenizer (the host's four hooks below)."""

    #: Set through ``similarity_fn_name = ...``; None: the model's own.
    _similarity_fn_override: str | None = None

    # ---- what the host provides ---------------------------------------------------------

    def embed_numpy(
        self,
        texts: str | Iterable[str],
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> FloatArray:
        """Vectors as one float32 (n, dim) array, prompts applied as sentence-transformers
        does."""
        raise NotImplementedError

    @property
    def prompts(self) -> Prompts:
        """The model's prompts (config_sentence_transformers.json)."""
        raise NotImplementedError

    def _dropin_info(self) -> ModelInfo:
        """The model's facts (dimension, max_seq_length, similarity_fn_name, ...)."""
        raise NotImplementedError

    def _dropin_tokenizer(self) -> Tokenizer:
        """The model's tokenizer: truncating at max_seq_length, never padding."""
        raise NotImplementedError

    # ---- encode ---------------------------------------------------------------------------

    @overload
    def encode(
        self,
        inputs: str | Iterable[str] | None = ...,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        output_value: str | None = ...,
        precision: str = ...,
        convert_to_numpy: Literal[True] = ...,
        convert_to_tensor: bool = ...,
        device: str | None = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
        pool: object = ...,
        chunk_size: int | None = ...,
        **kwargs: Any,
    ) -> Quantized: ...

    @overload
    def encode(
        self,
        inputs: str | Iterable[str] | None = ...,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        output_value: str | None = ...,
        precision: str = ...,
        convert_to_numpy: bool = ...,
        convert_to_tensor: bool = ...,
        device: str | None = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
        pool: object = ...,
        chunk_size: int | None = ...,
        **kwargs: Any,
    ) -> Quantized | list[Quantized]: ...

    def encode(
        self,
        inputs: str | Iterable[str] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: object = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> Quantized | list[Quantized]:
        """sentence-transformers' ``encode``: a str gives one vector (1-D), a list a 2-D
        array (``convert_to_numpy=False``: a list of 1-D arrays).

        As in sentence-transformers: ``prompt``/``prompt_name`` (else the model's default
        prompt), ``truncate_dim`` (the first dimensions), then ``normalize_embeddings``
        (unit length), then ``precision`` (``int8``/``uint8`` ranges from this call's
        vectors, so they need two texts or more; ``binary``/``ubinary`` pack the signs).
        ``batch_size`` must be positive; the runtime plans its own runs from the
        ``encode_batch_size`` setting. ``show_progress_bar`` and ``chunk_size`` change
        nothing. ``inputs`` may also be passed as ``sentences=`` (sentence-transformers
        before 6). lazyembed's own keyword: ``keep_alive``. An empty list gives a
        (0, dim) array (sentence-transformers: a (0,) one). Refused with
        `UnsupportedOptionError`: tensors (``convert_to_tensor``; torch is never
        imported), ``output_value`` other than ``"sentence_embedding"``, a device other
        than the CPU, a multi-process ``pool``.
        """
        keep_alive = kwargs.pop("keep_alive", None)
        if "sentences" in kwargs:
            if inputs is not None:
                raise InputTypeError("encode() got both inputs and sentences")
            inputs = kwargs.pop("sentences")
        for name in _IGNORED_KEYWORDS & kwargs.keys():
            del kwargs[name]
        if kwargs:
            raise UnsupportedOptionError(
                f"encode() does not support the argument(s) {sorted(kwargs)}"
            )
        _check_options(
            batch_size=batch_size,
            output_value=output_value,
            convert_to_tensor=convert_to_tensor,
            device=device,
            truncate_dim=truncate_dim,
            pool=pool,
        )
        import numpy as np

        from lazyembed.quantization import check_precision, quantize_embeddings

        precision = check_precision(precision)
        if isinstance(inputs, (list, tuple)) and not inputs:  # nothing in, none out
            width = self._dropin_info().dimension
            empty = np.empty((0, min(width, truncate_dim or width)), dtype=np.float32)
            quantized = quantize_embeddings(empty, precision)
            return quantized if convert_to_numpy else []
        if inputs is None:
            raise InputTypeError("encode() needs a str or a list of str, got None")
        vectors = self.embed_numpy(
            inputs, keep_alive=keep_alive, prompt_name=prompt_name, prompt=prompt
        )
        if truncate_dim is not None:
            vectors = vectors[:, :truncate_dim]
        if normalize_embeddings:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = (vectors / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
        out = quantize_embeddings(vectors, precision) if precision != "float32" else vectors
        if isinstance(inputs, str):
            one: Quantized = out[0]
            return one
        return out if convert_to_numpy else list(out)

    @overload
    def encode_query(
        self,
        inputs: str | Iterable[str] | None = ...,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        output_value: str | None = ...,
        precision: str = ...,
        convert_to_numpy: Literal[True] = ...,
        convert_to_tensor: bool = ...,
        device: str | None = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
        pool: object = ...,
        chunk_size: int | None = ...,
        **kwargs: Any,
    ) -> Quantized: ...

    @overload
    def encode_query(
        self,
        inputs: str | Iterable[str] | None = ...,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        output_value: str | None = ...,
        precision: str = ...,
        convert_to_numpy: bool = ...,
        convert_to_tensor: bool = ...,
        device: str | None = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
        pool: object = ...,
        chunk_size: int | None = ...,
        **kwargs: Any,
    ) -> Quantized | list[Quantized]: ...

    def encode_query(
        self,
        inputs: str | Iterable[str] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: object = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> Quantized | list[Quantized]:
        """`encode` with the model's ``query`` prompt when the call names no prompt
        (sentence-transformers 5+), as ``embed_query`` picks it."""
        if prompt_name is None and prompt is None:
            prompt_name = self.prompts.name_for("query")
        return self.encode(
            inputs,
            prompt_name,
            prompt,
            batch_size,
            show_progress_bar,
            output_value,
            precision,
            convert_to_numpy,
            convert_to_tensor,
            device,
            normalize_embeddings,
            truncate_dim,
            pool,
            chunk_size,
            **kwargs,
        )

    @overload
    def encode_document(
        self,
        inputs: str | Iterable[str] | None = ...,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        output_value: str | None = ...,
        precision: str = ...,
        convert_to_numpy: Literal[True] = ...,
        convert_to_tensor: bool = ...,
        device: str | None = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
        pool: object = ...,
        chunk_size: int | None = ...,
        **kwargs: Any,
    ) -> Quantized: ...

    @overload
    def encode_document(
        self,
        inputs: str | Iterable[str] | None = ...,
        prompt_name: str | None = ...,
        prompt: str | None = ...,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        output_value: str | None = ...,
        precision: str = ...,
        convert_to_numpy: bool = ...,
        convert_to_tensor: bool = ...,
        device: str | None = ...,
        normalize_embeddings: bool = ...,
        truncate_dim: int | None = ...,
        pool: object = ...,
        chunk_size: int | None = ...,
        **kwargs: Any,
    ) -> Quantized | list[Quantized]: ...

    def encode_document(
        self,
        inputs: str | Iterable[str] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: object = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> Quantized | list[Quantized]:
        """`encode` with the model's first ``document``/``passage``/``corpus`` prompt when
        the call names no prompt (sentence-transformers 5+), as ``embed_documents`` picks
        it. Unlike ``embed_documents``, one str is fine (gives one vector)."""
        if prompt_name is None and prompt is None:
            prompt_name = self.prompts.name_for("document")
        return self.encode(
            inputs,
            prompt_name,
            prompt,
            batch_size,
            show_progress_bar,
            output_value,
            precision,
            convert_to_numpy,
            convert_to_tensor,
            device,
            normalize_embeddings,
            truncate_dim,
            pool,
            chunk_size,
            **kwargs,
        )

    # ---- similarity -----------------------------------------------------------------------

    @property
    def similarity_fn_name(self) -> str:
        """``cosine``, ``dot``, ``euclidean`` or ``manhattan``: the model's
        (config_sentence_transformers.json, cosine when it names none) until set."""
        from lazyembed.similarity import check_similarity_fn_name

        if self._similarity_fn_override is not None:
            return self._similarity_fn_override
        name = self._dropin_info().similarity_fn_name
        try:
            return check_similarity_fn_name(name)
        except InvalidInputError as exc:
            raise UnsupportedOptionError(
                f"the model's config_sentence_transformers.json: {exc}; set "
                "similarity_fn_name to one of these to compare vectors"
            ) from None

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: object) -> None:
        from lazyembed.similarity import check_similarity_fn_name

        # sentence-transformers: None falls back to cosine, not to the model's.
        self._similarity_fn_override = (
            "cosine" if value is None else check_similarity_fn_name(value)
        )

    def similarity(self, embeddings1: object, embeddings2: object) -> Scores:
        """(n1, n2) scores of every vector of ``embeddings1`` with every one of
        ``embeddings2`` by `similarity_fn_name` (a numpy array, not a tensor)."""
        from lazyembed.similarity import similarity

        return similarity(self.similarity_fn_name, embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: object, embeddings2: object) -> Scores:
        """(n,) scores of ``embeddings1[i]`` with ``embeddings2[i]`` by
        `similarity_fn_name` (a numpy array, not a tensor)."""
        from lazyembed.similarity import similarity_pairwise

        return similarity_pairwise(self.similarity_fn_name, embeddings1, embeddings2)

    # ---- model facts ----------------------------------------------------------------------

    def get_sentence_embedding_dimension(self) -> int:
        """The length of the vectors `encode` returns (sentence-transformers' older name
        of ``get_embedding_dimension``)."""
        return self._dropin_info().dimension

    @property
    def max_seq_length(self) -> int:
        """Tokens kept per text, [CLS] and [SEP] included; longer texts are truncated.

        Read-only: the converted model, its tokenizer and the embedding cache's key are
        all fixed to it, so setting it raises `UnsupportedOptionError`.
        """
        return self._dropin_info().max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: object) -> None:
        raise UnsupportedOptionError(
            f"max_seq_length is read-only in lazyembed (asked for {value!r}, the model "
            f"keeps {self.max_seq_length} tokens): it is fixed with the model's files "
            "(sentence_bert_config.json); truncate texts yourself to keep fewer tokens"
        )

    def get_max_seq_length(self) -> int:
        """`max_seq_length` (sentence-transformers' older getter)."""
        return self.max_seq_length

    def tokenize(self, texts: Iterable[str], **kwargs: Any) -> TokenArrays:
        """The model's tokens for a list of texts, as sentence-transformers' ``tokenize``
        gives them, as int64 numpy arrays of shape (n, longest): ``input_ids`` (padded
        with the pad token), ``token_type_ids`` (BERT models only) and
        ``attention_mask``, truncated at `max_seq_length`, without prompts. An empty list
        gives {}. A bare str is refused (sentence-transformers would tokenize each of its
        characters); text pairs and ``kwargs`` are not supported.
        """
        import numpy as np

        from lazyembed.runtime.tokens import encode_truncated  # the runtime's tokenisation

        if kwargs:
            raise UnsupportedOptionError(f"tokenize() does not support {sorted(kwargs)}")
        if isinstance(texts, str):
            raise InputTypeError("tokenize() takes a list of texts; wrap one text in a list")
        if isinstance(texts, (list, tuple)) and not texts:
            return {}
        items, _ = normalize_inputs(texts)
        info = self._dropin_info()
        if info.do_lower_case:  # as the runtime (and sentence-transformers) tokenize them
            items = [item.lower() for item in items]
        encodings = encode_truncated(self._dropin_tokenizer(), items)
        width = max(len(encoding.ids) for encoding in encodings)
        ids = np.full((len(items), width), info.encoder.pad_token_id, dtype=np.int64)
        types = np.zeros((len(items), width), dtype=np.int64)
        mask = np.zeros((len(items), width), dtype=np.int64)
        left = info.padding_side == "left"  # as the model's tokenizer pads (Qwen3-Embedding)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            cols = slice(width - length, width) if left else slice(0, length)
            ids[row, cols] = encoding.ids
            types[row, cols] = encoding.type_ids
            mask[row, cols] = 1
        if info.encoder.model_type in _TOKEN_TYPE_MODELS:
            return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
        return {"input_ids": ids, "attention_mask": mask}


def _check_options(
    *,
    batch_size: object,
    output_value: object,
    convert_to_tensor: bool,
    device: object,
    truncate_dim: object,
    pool: object,
) -> None:
    """Refuse, by name, the encode() options lazyembed cannot honour."""
    if convert_to_tensor:
        raise UnsupportedOptionError(
            "encode(convert_to_tensor=True) needs torch, which lazyembed does not use: "
            "keep convert_to_numpy=True and call torch.from_numpy() on the result"
        )
    if output_value != "sentence_embedding":
        raise UnsupportedOptionError(
            f"encode(output_value={output_value!r}) is not supported: lazyembed pools "
            "inside the model, so only output_value='sentence_embedding' is available"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise InputTypeError(f"batch_size must be an int, not {type(batch_size).__name__}")
    if batch_size <= 0:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size}")
    if device not in (None, "cpu"):
        raise UnsupportedOptionError(
            f"lazyembed runs on the CPU only: pass device='cpu' or None, not {device!r}"
        )
    if pool is not None:
        raise UnsupportedOptionError(
            "encode(pool=...) is sentence-transformers' multi-process pool (torch); "
            "lazyembed does not use one: set the threads setting instead"
        )
    if truncate_dim is not None and (
        isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int) or truncate_dim < 1
    ):
        raise InvalidInputError(f"truncate_dim must be an int > 0 or None, not {truncate_dim!r}")
