"""`Embedder`: validate → cache → lifecycle.acquire() → runtime.encode().

The Embedder owns no lifecycle logic of its own: the `Lifecycle` decides when the model is
loaded and unloaded; the Embedder only says how to load it (`_load`) and what one call
needs. Preparation — resolving the model, converting it to ONNX once, fingerprinting it,
opening the cache — happens once per Embedder and costs no model memory, so cache hits
can be answered while the model stays unloaded.

Locks: `_prepare_lock` guards the one-time preparation, the counting tokenizer and
closing (`_prepared` and `_tokenizer` are written once, under it, and read without it
afterwards; `close()` sets `_closed` and drops `_prepared` under it, so every later
`prepare()` raises `ClosedError` and the hot paths, which read `_prepared` anyway, pay
nothing for the check). A forked child gets a fresh `_prepare_lock` (another thread of the parent
may have held it at the fork, for the seconds a first conversion takes). Everything
about the model's presence is the Lifecycle's (see lifecycle.py). The cache guards
itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import weakref
from abc import ABCMeta
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from lazyembed._fork import after_fork_in_child
from lazyembed.config import (
    KeepAlive,
    KeepAliveLike,
    Settings,
    effective_cache_path,
    effective_threads,
    load_settings,
    model_onnx_file,
    parse_duration,
    parse_keep_alive,
    prepack_resolved,
)
from lazyembed.errors import ClosedError, ConfigError, InputTypeError
from lazyembed.inputs import check_text, normalize_inputs
from lazyembed.models.resolve import canonical_spec, list_exports
from lazyembed.st_dropin import SentenceTransformerMethods

# The heavy modules (numpy, tokenizers, ONNX Runtime, the model code) are imported by
# `_import_heavy()` when the first in-process Embedder is made, not with this module: a
# process whose Embedder() resolves to the shared daemon (`share`) never imports them.
# After that first import they are ordinary module globals (same speed as before).
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from tokenizers import Tokenizer

    from lazyembed import memory
    from lazyembed.cache import EmbeddingCache
    from lazyembed.lifecycle import Lifecycle
    from lazyembed.models.convert import ConvertedModel
    from lazyembed.models.info import ModelInfo, read_model_info
    from lazyembed.models.onnx_export import (
        TransformerChoice,
        choose_transformer,
        ensure_transformer,
        fit_info,
    )
    from lazyembed.models.prompts import Prompts
    from lazyembed.models.resolve import ResolvedModel, resolve_model
    from lazyembed.pressure import PressureMonitor
    from lazyembed.report import MemoryReport
    from lazyembed.runtime import (
        EncodeResult,
        LoadedModel,
        RuntimeSpec,
        load_runtime,
        load_tokenizer,
    )

    FloatArray = npt.NDArray[np.float32]
else:
    FloatArray = Any  # the real alias needs numpy; annotations only

_HEAVY = {
    "np": ("numpy", None),
    "npt": ("numpy.typing", None),
    "Tokenizer": ("tokenizers", "Tokenizer"),
    "memory": ("lazyembed.memory", None),
    "EmbeddingCache": ("lazyembed.cache", "EmbeddingCache"),
    "Lifecycle": ("lazyembed.lifecycle", "Lifecycle"),
    "ConvertedModel": ("lazyembed.models.convert", "ConvertedModel"),
    "ModelInfo": ("lazyembed.models.info", "ModelInfo"),
    "TransformerChoice": ("lazyembed.models.onnx_export", "TransformerChoice"),
    "choose_transformer": ("lazyembed.models.onnx_export", "choose_transformer"),
    "ensure_transformer": ("lazyembed.models.onnx_export", "ensure_transformer"),
    "fit_info": ("lazyembed.models.onnx_export", "fit_info"),
    "read_model_info": ("lazyembed.models.info", "read_model_info"),
    "Prompts": ("lazyembed.models.prompts", "Prompts"),
    "ResolvedModel": ("lazyembed.models.resolve", "ResolvedModel"),
    "resolve_model": ("lazyembed.models.resolve", "resolve_model"),
    "PressureMonitor": ("lazyembed.pressure", "PressureMonitor"),
    "MemoryReport": ("lazyembed.report", "MemoryReport"),
    "EncodeResult": ("lazyembed.runtime", "EncodeResult"),
    "LoadedModel": ("lazyembed.runtime", "LoadedModel"),
    "RuntimeSpec": ("lazyembed.runtime", "RuntimeSpec"),
    "load_runtime": ("lazyembed.runtime", "load_runtime"),
    "load_tokenizer": ("lazyembed.runtime", "load_tokenizer"),
}


_heavy_imported = False


def _import_heavy() -> None:
    """Bind the heavy names of `_HEAVY` as module globals (once; a name already bound,
    e.g. patched by a test, is kept)."""
    global _heavy_imported
    if _heavy_imported:
        return
    import importlib

    namespace = globals()
    for name, (module, attribute) in _HEAVY.items():
        if name not in namespace:
            imported = importlib.import_module(module)
            namespace[name] = imported if attribute is None else getattr(imported, attribute)
    _heavy_imported = True


def __getattr__(name: str) -> Any:
    """``lazyembed.embedder.np`` (and the other heavy names) from outside: import them."""
    if name in _HEAVY:
        _import_heavy()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_DEFAULT = KeepAlive.DEFAULT

#: Marks the cache keys of texts whose prompt is left out of the pooling (a lone
#: surrogate: `check_text` refuses it in any input, so no text's own key can match).
_EXCLUDED = "\ud800"

_LIVE: weakref.WeakSet[Embedder] = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    for embedder in list(_LIVE):
        embedder._prepare_lock = threading.Lock()


@dataclass(frozen=True)
class PreparedModel:
    """What one Embedder resolved and converted; fixed for its lifetime."""

    resolved: ResolvedModel
    info: ModelInfo
    converted: ConvertedModel
    spec: RuntimeSpec
    fingerprint: str
    cache: EmbeddingCache | None
    prompts: Prompts
    #: Native conversion or the folder's ONNX export (models/onnx_export.py).
    transformer: TransformerChoice | None = None


class Embedder(SentenceTransformerMethods, metaclass=ABCMeta):
    """Sentence embeddings whose model is loaded on first use and unloaded when idle."""

    def __new__(cls, model: str | None = None, **kwargs: Any) -> Embedder:
        """The ``share`` decision, before anything heavy is imported: a `SharedEmbedder`
        (a thin client of the user's daemon) when it resolves to the daemon, else an
        in-process Embedder. A registry's Embedders (``load_gate``) are always in-process."""
        if cls is Embedder and kwargs.get("load_gate") is None:
            from lazyembed.daemon.shared import SharedEmbedder, decide_embedder

            decided = decide_embedder(model, kwargs, _in_process_embedder)
            if isinstance(decided, SharedEmbedder):
                return decided  # type: ignore[return-value]  # registered as an Embedder
            embedder = super().__new__(cls)
            embedder._settings_read = decided  # read once: __init__ takes them
            return embedder
        return super().__new__(cls)

    @classmethod
    def __subclasshook__(cls, subclass: type) -> Any:
        """``isinstance(shared, Embedder)`` holds for the daemon's thin client (its class
        says it has this surface), without this module importing it."""
        if cls is Embedder and getattr(subclass, "_embedder_surface", False):
            return True
        return NotImplemented

    def __init__(
        self,
        model: str | None = None,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] | None = None,
        load_gate: Callable[[Embedder], AbstractContextManager[object]] | None = None,
        on_idle: Callable[[], object] | None = None,
        **overrides: Any,
    ) -> None:
        """``load_gate`` and ``on_idle`` connect a `Models` registry: every load runs
        inside ``load_gate(self)`` (which makes room under the memory budget), and
        ``on_idle`` hears when calls in flight reach zero or the model unloads."""
        _import_heavy()
        read: Settings | None = getattr(self, "_settings_read", None)
        self._settings_read: Settings | None = None
        if settings is None:
            settings = read or load_settings(model=model, **overrides)
        elif model is not None or overrides:
            raise TypeError("pass either settings= or model/keyword settings, not both")
        if settings.backend == "onnxruntime" and settings.precision == "bf16":
            raise ConfigError(
                "precision='bf16' is OpenVINO's (backend='openvino', the lazyembed[openvino] "
                "extra, on a CPU with AMX or AVX512-BF16); ONNX Runtime runs fp32"
            )
        if settings.onnx_files:  # this model's own export, if the table names one
            settings = dataclasses.replace(
                settings, onnx_file=model_onnx_file(settings, settings.model)
            )
        self.settings = settings
        self.model_name = canonical_spec(settings.model)
        self._prepare_lock = threading.Lock()
        # Dropped by close(), after which prepare() refuses: every path that needs the
        # model or the cache reads it first, so "closed" costs the hot path nothing.
        self._prepared: PreparedModel | None = None
        self._closed = False
        self._tokenizer: Tokenizer | None = None
        # Pressure checks ride on the lifecycle's watcher, only while the model is loaded.
        self._pressure = (
            PressureMonitor.from_settings(settings.pressure) if settings.pressure.unload else None
        )
        self._lifecycle: Lifecycle[LoadedModel] = Lifecycle(
            self._load,
            idle_timeout=settings.idle_timeout,
            max_events=settings.max_events,
            clock=clock or time.monotonic,
            periodic_check=self._pressure.check if self._pressure is not None else None,
            check_interval=settings.pressure.check_interval,
            name=self.model_name,
            on_idle=on_idle,
            admit=None if load_gate is None else lambda: load_gate(self),
        )
        _LIVE.add(self)

    # ---- preparation (no model memory) -------------------------------------------------

    def prepare(self) -> PreparedModel:
        """Resolve, convert (once, cached on disk) and fingerprint the model."""
        prepared = self._prepared
        if prepared is not None:
            return prepared
        with self._prepare_lock:
            if self._closed:
                raise ClosedError(f"{self.model_name}: this Embedder was closed")
            if self._prepared is None:
                self._prepared = self._prepare_now()
            return self._prepared

    def _prepare_now(self) -> PreparedModel:
        settings = self.settings
        resolved = resolve_model(
            settings.model, allow_download=settings.allow_download, onnx_file=settings.onnx_file
        )
        choice = choose_transformer(resolved.directory, settings.onnx_file)
        info = read_model_info(resolved.directory, any_architecture=choice.export is not None)
        # A first conversion runs in a child process: its imports and memory peak must
        # not stay in this (long-running) process. An export is used as it is.
        transformer = ensure_transformer(
            resolved.directory,
            choice,
            variant=settings.variant,
            cache_dir=Path(settings.model_cache_dir),
        )
        converted, graph = transformer.converted, transformer.graph
        if graph is not None and choice.export is not None:
            info = fit_info(info, graph, choice.export)
        spec = RuntimeSpec(
            onnx_path=str(converted.path),
            tokenizer_path=str(resolved.tokenizer),
            max_seq_length=info.max_seq_length,
            dimension=info.dimension,
            threads=effective_threads(settings),
            batch_size=settings.encode_batch_size,
            normalize=info.normalize,
            include_prompt=info.include_prompt,
            pooling=(info.pooling,),
            backend=settings.backend,
            precision=settings.precision,
            compile_cache_dir=str(settings.model_cache_dir),
            lowercase=info.do_lower_case,
            prepack=prepack_resolved(settings),
            # An export is optimised by ONNX Runtime at load, a converted model once.
            pre_optimized=graph is None,
            output=graph.output if graph is not None else "last_hidden_state",
            dense=info.dense,
            padding_side=info.padding_side,
        )
        # The tokenizer changes vectors too (normalisation, vocabulary, special tokens).
        tokenizer_sha = hashlib.sha256(Path(resolved.tokenizer).read_bytes()).hexdigest()
        fingerprint = (
            f"{converted.fingerprint};{info.fingerprint_part()};tokenizer={tokenizer_sha[:24]}"
        )
        # Other kernels round the last bits differently: keyed apart, cached vectors stay
        # bit-identical to the ones this Embedder computes (a "when_busy" one computes
        # both layouts, so it keeps a key of its own and leaves the others pure).
        if spec.backend != "onnxruntime":
            fingerprint += f";backend={spec.backend}-{spec.precision}"
        elif spec.prepack == "at_load":
            fingerprint += ";prepacked"
        elif spec.prepack == "when_busy":
            fingerprint += ";prepacked-when-busy"
        cache = None
        wanted = settings.cache
        if wanted.memory_mb > 0 or wanted.persistent:
            cache = EmbeddingCache(
                fingerprint,
                memory_bytes=int(wanted.memory_mb * 2**20),
                sqlite_path=effective_cache_path(settings) if wanted.persistent else None,
                sqlite_max_bytes=int(wanted.max_mb * 2**20),
                dim=info.dimension,
            )
        return PreparedModel(
            resolved, info, converted, spec, fingerprint, cache, info.prompts, choice
        )

    def _load(self) -> LoadedModel:
        """The lifecycle's loader: the session, with the tokenizer this Embedder keeps.

        With ``isolation = "process"`` the same happens in a worker process, and unloading
        ends that process: every byte of the model leaves with it.
        """
        prepared = self.prepare()
        spec = prepared.spec
        # The cached files may have been damaged since they were prepared (a `cp` over
        # them, a full disk): check them again (a stat when unchanged) and heal if needed.
        if prepared.transformer is not None:
            ensure_transformer(
                prepared.resolved.directory,
                prepared.transformer,
                variant=self.settings.variant,
                cache_dir=Path(self.settings.model_cache_dir),
            )
        if self.settings.isolation == "process":
            from lazyembed.isolation import load_isolated

            return load_isolated(spec, call_timeout=self.settings.worker_call_timeout)
        # Kept across unloads: the runtime's load_tokenizer() hands back this same object,
        # so a reload does not parse tokenizer.json again.
        self._counting_tokenizer()
        return load_runtime(spec)

    @property
    def lifecycle(self) -> Lifecycle[LoadedModel]:
        """The model's lifecycle (for a registry and reports; use embed() for work)."""
        return self._lifecycle

    # ---- embedding ----------------------------------------------------------------------

    @overload
    def embed(  # type: ignore[overload-overlap]  # a str is also an Iterable[str]
        self,
        texts: str,
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> list[float]: ...

    @overload
    def embed(
        self,
        texts: Iterable[str],
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> list[list[float]]: ...

    def embed(
        self,
        texts: str | Iterable[str],
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> list[float] | list[list[float]]:
        """One text → one vector (a list of floats); a list of texts → a list of vectors.

        ``prompt_name`` picks one of the model's prompts, ``prompt`` gives the text to
        prepend; with neither, the model's ``default_prompt_name`` applies (if any).
        """
        seconds = parse_keep_alive(keep_alive)  # a bad value fails even on a hit
        if isinstance(texts, str):  # the hot single-text path: no list, no stack
            text = check_text(texts)
            prepared = self._prepared or self.prepare()
            if prompt_name is not None or prompt is not None or prepared.prompts.default_name:
                prefix = prepared.prompts.text_for(prompt_name, prompt)
                if prefix and not prepared.info.include_prompt:  # the rare path: no shortcut
                    vector: list[float] = self._embed([prefix + text], prefix, keep_alive=seconds)[
                        0
                    ].tolist()
                    return vector
                text = prefix + text
            cache = prepared.cache
            if cache is None:
                plain: list[float] = self._encode([text], seconds).vectors[0].tolist()
                return plain
            hit = cache.get_many((text,))[0]
            if hit is not None:
                if seconds is not _DEFAULT:  # the lease it asks for, without a load
                    self._lifecycle.lease(seconds)
                single_hit: list[float] = hit.tolist()
                return single_hit
            fresh = self._encode([text], seconds).vectors
            cache.put_many([text], fresh)
            result: list[float] = fresh[0].tolist()
            return result
        items, single = normalize_inputs(texts)
        vectors = self._embed(*self._with_prompt(items, prompt_name, prompt), keep_alive=seconds)
        if single:
            one: list[float] = vectors[0].tolist()
            return one
        many: list[list[float]] = vectors.tolist()
        return many

    def embed_numpy(
        self,
        texts: str | Iterable[str],
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> FloatArray:
        """Vectors as one float32 array of shape (n, dim), for bulk use."""
        seconds = parse_keep_alive(keep_alive)
        items, _ = normalize_inputs(texts)
        return self._embed(*self._with_prompt(items, prompt_name, prompt), keep_alive=seconds)

    def embed_with_usage(
        self,
        texts: str | Iterable[str],
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> tuple[FloatArray, list[int]]:
        """Vectors plus each input's real token count (for servers that report usage)."""
        seconds = parse_keep_alive(keep_alive)
        items, _ = normalize_inputs(texts)
        items, prefix = self._with_prompt(items, prompt_name, prompt)
        vectors = self._embed(items, prefix, keep_alive=seconds)
        return vectors, self.count_tokens(items)

    @overload
    def embed_query(  # type: ignore[overload-overlap]  # a str is also an Iterable[str]
        self, texts: str, *, keep_alive: KeepAliveLike = None
    ) -> list[float]: ...

    @overload
    def embed_query(
        self, texts: Iterable[str], *, keep_alive: KeepAliveLike = None
    ) -> list[list[float]]: ...

    def embed_query(
        self, texts: str | Iterable[str], *, keep_alive: KeepAliveLike = None
    ) -> list[float] | list[list[float]]:
        """Embed search queries with the model's ``query`` prompt, when it has one."""
        name = self.prompts.name_for("query")
        return self.embed(texts, keep_alive=keep_alive, prompt_name=name)

    def embed_documents(
        self, texts: Iterable[str], *, keep_alive: KeepAliveLike = None
    ) -> list[list[float]]:
        """Embed documents with the model's ``document``/``passage`` prompt, if any."""
        if isinstance(texts, str):
            raise InputTypeError("embed_documents takes a list of texts; use embed_query/embed")
        name = self.prompts.name_for("document")
        return self.embed(texts, keep_alive=keep_alive, prompt_name=name)

    @property
    def prompts(self) -> Prompts:
        """The model's prompts (from config_sentence_transformers.json; may be empty)."""
        return self.prepare().prompts

    def _with_prompt(
        self, items: list[str], prompt_name: str | None, prompt: str | None
    ) -> tuple[list[str], str]:
        """Prepend the prompt a call asked for (or the model's default) to every text;
        the texts and the prompt. The prompt is then part of each text's cache key."""
        prompts = (self._prepared or self.prepare()).prompts
        if prompt_name is None and prompt is None and not prompts.default_name:
            return items, ""
        prefix = prompts.text_for(prompt_name, prompt)
        return ([prefix + item for item in items] if prefix else items), prefix

    def _embed(self, items: list[str], prefix: str = "", *, keep_alive: KeepAlive) -> FloatArray:
        """Vectors of ``items`` (prompt already prepended), through the cache.

        With ``include_prompt: false`` the prompt's tokens are left out of the pooling, so
        the vector depends on where the prompt ends: the cache key then carries it, behind
        a lone surrogate that no valid input text can contain.
        """
        prepared = self._prepared or self.prepare()
        excluded = prefix if prefix and not prepared.info.include_prompt else ""
        prompt_length = self._prompt_length(excluded) if excluded else 0
        keys = [f"{_EXCLUDED}{excluded}{_EXCLUDED}{item}" for item in items] if excluded else items
        cache = prepared.cache
        if cache is None:
            return self._encode(items, keep_alive, prompt_length).vectors
        found = cache.get_many(keys)
        missing = [i for i, vector in enumerate(found) if vector is None]
        if not missing:  # all hits: nothing loads; an explicit keep-alive is still a lease
            if keep_alive is not _DEFAULT:
                self._lifecycle.lease(keep_alive)
            return np.stack(found)  # type: ignore[arg-type]
        # Each distinct missing text is embedded once, however often it repeats.
        unique: dict[str, int] = {}
        for i in missing:
            unique.setdefault(keys[i], i)
        fresh = self._encode([items[i] for i in unique.values()], keep_alive, prompt_length)
        cache.put_many(list(unique), fresh.vectors)
        if len(missing) == len(items) and len(unique) == len(items):
            return fresh.vectors
        row = {key: n for n, key in enumerate(unique)}
        out = np.empty((len(items), prepared.info.dimension), dtype=np.float32)
        for i, vector in enumerate(found):
            out[i] = fresh.vectors[row[keys[i]]] if vector is None else vector
        return out

    def _prompt_length(self, prompt: str) -> int:
        """The prompt's tokens as sentence-transformers counts them for ``include_prompt:
        false``: the prompt tokenized alone, less a trailing special token ([SEP])."""
        encoding = self._counting_tokenizer().encode(prompt, add_special_tokens=True)
        length = len(encoding.ids)
        return length - 1 if length and encoding.special_tokens_mask[-1] else length

    def _encode(
        self, items: list[str], keep_alive: KeepAlive, prompt_length: int = 0
    ) -> EncodeResult:
        with self._lifecycle.acquire(keep_alive=keep_alive) as runtime:
            if prompt_length:
                return runtime.encode(items, prompt_length=prompt_length)
            return runtime.encode(items)

    def count_tokens(self, texts: str | Iterable[str], *, truncate: bool = True) -> list[int]:
        """Real token counts, including [CLS] and [SEP]: after truncation at the model's
        limit, or (``truncate=False``) up to one past it, so that a count above
        `get_max_tokens()` says the text is too long (one tokenisation serves both)."""
        from lazyembed.runtime import token_counts  # the runtime's own cut-then-tokenize

        items, _ = normalize_inputs(texts)
        if self.prepare().info.do_lower_case:  # as the runtime tokenizes them
            items = [item.lower() for item in items]
        return token_counts(self._counting_tokenizer(), items, past_limit=not truncate)

    def _counting_tokenizer(self) -> Tokenizer:
        """The tokenizer kept by this Embedder (loaded on the first count or load).

        Counting must not load or keep alive the model, so the runtime borrows this one,
        not the other way round (`load_tokenizer` hands the same object to both).
        "Too long" stays visible to counts through the encoding's overflow.
        """
        tokenizer = self._tokenizer
        if tokenizer is None:
            spec = self.prepare().spec
            with self._prepare_lock:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(spec.tokenizer_path, spec.max_seq_length)
                tokenizer = self._tokenizer
        return tokenizer

    # ---- lifecycle ----------------------------------------------------------------------

    def unload_model(self) -> bool:
        """Free the model now (waits for calls in flight). True if a model was loaded."""
        return self._lifecycle.unload("explicit")

    def warmup(self, *, keep_alive: KeepAliveLike = None) -> None:
        """Load the model now instead of at the first embed(), leaving a keep_alive lease.

        Goes straight to the lifecycle, never through the cache: Ollama's "load (or pin)
        the model" idiom must load even when every text it could embed is cached.
        """
        with self._lifecycle.acquire(keep_alive=parse_keep_alive(keep_alive)):
            pass

    def set_idle_timeout(self, value: KeepAliveLike) -> None:
        """Change the idle timeout at run time ("30m", 90, 0, "never"/negative/None)."""
        timeout = KeepAlive.FOREVER if value is None else parse_duration(value, key="idle_timeout")
        self._lifecycle.set_idle_timeout(timeout)

    @property
    def is_loaded(self) -> bool:
        """Cheap: the model is LOADED now (loading or unloading is not loaded)."""
        return self._lifecycle.is_loaded

    def memory_report(self, *, events: bool = True) -> MemoryReport:
        """Measured figures (psutil), never estimates, as a typed report."""
        status = self._lifecycle.status(events=events)
        prepared = self._prepared
        model_mb = status.model_mb
        worker: dict[str, Any] | None = None
        if self.settings.isolation == "process":
            loaded = self._lifecycle.peek()
            memory_info = getattr(loaded, "memory_info", None)
            worker = memory_info() if callable(memory_info) else None
            # The model lives in the worker: this process's RSS barely moves at a load.
            # What the model takes is the worker's own memory (USS, all of which leaves
            # when the worker exits), measured now.
            if status.model_loaded and worker and worker.get("worker_uss_mb") is not None:
                model_mb = float(worker["worker_uss_mb"])
        return MemoryReport(
            model=self.model_name,
            lifecycle=status,
            model_mb=model_mb,
            process_rss_mb=memory.to_mb(memory.process_rss_bytes()),
            process_uss_mb=memory.to_mb(memory.process_uss_bytes()),
            isolation=self.settings.isolation,
            cache=prepared.cache.stats() if prepared and prepared.cache else None,
            pressure=self._pressure.status() if self._pressure is not None else None,
            worker=worker,
        )

    def get_memory_usage(self) -> dict[str, Any]:
        """Measured figures (psutil), never estimates; see README for each key."""
        return self.memory_report().as_dict()

    def get_embedding_dimension(self) -> int:
        return self.prepare().info.dimension

    def get_max_tokens(self) -> int:
        return self.prepare().info.max_seq_length

    def model_report(self) -> dict[str, Any]:
        """Where the model came from and what was converted (for `lazyembed models`)."""
        prepared = self.prepare()
        path = prepared.converted.path
        return {
            "model": self.model_name,
            "source": prepared.resolved.source,
            "directory": str(prepared.resolved.directory),
            "onnx_path": str(path),
            "onnx_mb": memory.to_mb(
                sum(p.stat().st_size for p in (path, prepared.converted.data_path) if p.exists())
            ),
            "variant": prepared.converted.variant,
            "weights_sha256": prepared.converted.weights_sha256,
            "converter_version": prepared.converted.converter_version,
            "fingerprint": prepared.fingerprint,
            "backend": prepared.spec.backend,
            "prepack_weights": prepared.spec.prepack,
            "dimension": prepared.info.dimension,
            "max_seq_length": prepared.info.max_seq_length,
            "transformer": prepared.transformer.reason if prepared.transformer else None,
            "onnx_exports": list_exports(prepared.resolved.directory),
        }

    def close(self) -> None:
        """Unload and release the cache. Idempotent; afterwards every call that needs the
        model or the cache (embed, warmup, count_tokens, ...) raises `ClosedError`, in
        isolation mode too; reports (`get_memory_usage`) still answer."""
        with self._prepare_lock:
            self._closed = True
            prepared, self._prepared = self._prepared, None
        self._lifecycle.close()
        if prepared is not None and prepared.cache is not None:
            prepared.cache.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- sentence-transformers drop-in (the methods are SentenceTransformerMethods') ---

    def _dropin_info(self) -> ModelInfo:
        return self.prepare().info

    def _dropin_tokenizer(self) -> Tokenizer:
        return self._counting_tokenizer()


def _in_process_embedder(settings: Settings) -> Embedder:
    """An in-process Embedder of ``settings`` (the shared client's fallback)."""
    return Embedder(settings=settings)
