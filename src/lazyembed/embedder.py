"""`Embedder`: validate → cache → lifecycle.acquire() → runtime.encode().

The Embedder owns no lifecycle logic of its own: the `Lifecycle` decides when the model is
loaded and unloaded; the Embedder only says how to load it (`_load`) and what one call
needs. Preparation — resolving the model, converting it to ONNX once, fingerprinting it,
opening the cache — happens once per Embedder and costs no model memory, so cache hits
can be answered while the model stays unloaded.

Locks: `_prepare_lock` guards the one-time preparation and the counting tokenizer
(`_prepared` and `_tokenizer` are written once, under it, and read without it
afterwards). A forked child gets a fresh `_prepare_lock` (another thread of the parent
may have held it at the fork, for the seconds a first conversion takes). Everything
about the model's presence is the Lifecycle's (see lifecycle.py). The cache guards
itself.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from lazyembed import memory
from lazyembed._fork import after_fork_in_child
from lazyembed.cache import EmbeddingCache
from lazyembed.config import (
    Settings,
    effective_cache_path,
    effective_threads,
    load_settings,
    parse_duration,
    parse_keep_alive,
)
from lazyembed.inputs import check_text, normalize_inputs
from lazyembed.lifecycle import Lifecycle
from lazyembed.models.convert import ConvertedModel
from lazyembed.models.convert_child import ensure_onnx_in_child
from lazyembed.models.info import ModelInfo, read_model_info
from lazyembed.models.resolve import ResolvedModel, canonical_spec, resolve_model
from lazyembed.pressure import PressureMonitor
from lazyembed.runtime import EncodeResult, LoadedModel, RuntimeSpec, load_runtime, load_tokenizer

FloatArray = npt.NDArray[np.float32]
KeepAlive = float | int | str | None

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


class Embedder:
    """Sentence embeddings whose model is loaded on first use and unloaded when idle."""

    def __init__(
        self,
        model: str | None = None,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = load_settings(model=model, **overrides)
        elif model is not None or overrides:
            raise TypeError("pass either settings= or model/keyword settings, not both")
        self.settings = settings
        self.model_name = canonical_spec(settings.model)
        self._prepare_lock = threading.Lock()
        self._prepared: PreparedModel | None = None
        self._tokenizer: Tokenizer | None = None
        # Pressure checks ride on the lifecycle's watcher, only while the model is loaded.
        self._pressure = (
            PressureMonitor.from_settings(settings) if settings.pressure_unload else None
        )
        self._lifecycle: Lifecycle[LoadedModel] = Lifecycle(
            self._load,
            idle_timeout=settings.idle_timeout,
            max_events=settings.max_events,
            clock=clock or time.monotonic,
            periodic_check=self._pressure.check if self._pressure is not None else None,
            check_interval=settings.pressure_check_interval,
        )
        _LIVE.add(self)

    # ---- preparation (no model memory) -------------------------------------------------

    def prepare(self) -> PreparedModel:
        """Resolve, convert (once, cached on disk) and fingerprint the model."""
        prepared = self._prepared
        if prepared is not None:
            return prepared
        with self._prepare_lock:
            if self._prepared is None:
                self._prepared = self._prepare_now()
            return self._prepared

    def _prepare_now(self) -> PreparedModel:
        settings = self.settings
        resolved = resolve_model(settings.model, allow_download=settings.allow_download)
        info = read_model_info(resolved.directory)
        # A first conversion runs in a child process: its imports and ~500 MB peak must
        # not stay in this (long-running) process.
        converted = ensure_onnx_in_child(
            resolved.directory, variant=settings.variant, cache_dir=Path(settings.cache_dir)
        )
        spec = RuntimeSpec(
            onnx_path=str(converted.path),
            tokenizer_path=str(resolved.tokenizer),
            max_seq_length=info.max_seq_length,
            dimension=info.dimension,
            threads=effective_threads(settings),
            batch_size=settings.batch_size,
            normalize=info.normalize,
        )
        # The tokenizer changes vectors too (normalisation, vocabulary, special tokens).
        tokenizer_sha = hashlib.sha256(Path(resolved.tokenizer).read_bytes()).hexdigest()
        fingerprint = (
            f"{converted.fingerprint};{info.fingerprint_part()};tokenizer={tokenizer_sha[:24]}"
        )
        cache = None
        if settings.cache_memory_mb > 0 or settings.cache_persistent:
            cache = EmbeddingCache(
                fingerprint,
                memory_bytes=int(settings.cache_memory_mb * 2**20),
                sqlite_path=effective_cache_path(settings) if settings.cache_persistent else None,
                sqlite_max_bytes=int(settings.cache_max_mb * 2**20),
                dim=info.dimension,
            )
        return PreparedModel(resolved, info, converted, spec, fingerprint, cache)

    def _load(self) -> LoadedModel:
        """The lifecycle's loader: session + tokenizer + one warm-up inference.

        With ``isolation = "process"`` the same happens in a worker process, and unloading
        ends that process: every byte of the model leaves with it.
        """
        spec = self.prepare().spec
        if self.settings.isolation == "process":
            from lazyembed.isolation import load_isolated

            return load_isolated(spec)
        return load_runtime(spec)

    # ---- embedding ----------------------------------------------------------------------

    @overload
    def embed(  # type: ignore[overload-overlap]  # a str is also an Iterable[str]
        self, texts: str, *, keep_alive: KeepAlive = None
    ) -> list[float]: ...

    @overload
    def embed(self, texts: Iterable[str], *, keep_alive: KeepAlive = None) -> list[list[float]]: ...

    def embed(
        self, texts: str | Iterable[str], *, keep_alive: KeepAlive = None
    ) -> list[float] | list[list[float]]:
        """One text → one vector (list of 384 floats); a list of texts → a list of vectors."""
        seconds = self._keep_alive_seconds(keep_alive)  # a bad value fails even on a hit
        if isinstance(texts, str):  # the hot single-text path: no list, no stack
            text = check_text(texts)
            prepared = self._prepared or self.prepare()
            cache = prepared.cache
            if cache is None:
                plain: list[float] = self._encode([text], seconds).vectors[0].tolist()
                return plain
            hit = cache.get_many((text,))[0]
            if hit is not None:
                single_hit: list[float] = hit.tolist()
                return single_hit
            fresh = self._encode([text], seconds).vectors
            cache.put_many([text], fresh)
            result: list[float] = fresh[0].tolist()
            return result
        items, single = normalize_inputs(texts)
        vectors = self._embed(items, seconds)
        if single:
            one: list[float] = vectors[0].tolist()
            return one
        many: list[list[float]] = vectors.tolist()
        return many

    def embed_numpy(
        self, texts: str | Iterable[str], *, keep_alive: KeepAlive = None
    ) -> FloatArray:
        """Vectors as one float32 array of shape (n, dim), for bulk use."""
        seconds = self._keep_alive_seconds(keep_alive)
        items, _ = normalize_inputs(texts)
        return self._embed(items, seconds)

    def embed_with_usage(
        self, texts: str | Iterable[str], *, keep_alive: KeepAlive = None
    ) -> tuple[FloatArray, list[int]]:
        """Vectors plus each input's real token count (for servers that report usage)."""
        seconds = self._keep_alive_seconds(keep_alive)
        items, _ = normalize_inputs(texts)
        vectors = self._embed(items, seconds)
        return vectors, self.count_tokens(items)

    def _embed(self, items: list[str], keep_alive: float | None) -> FloatArray:
        prepared = self._prepared or self.prepare()
        cache = prepared.cache
        if cache is None:
            return self._encode(items, keep_alive).vectors
        found = cache.get_many(items)
        missing = [i for i, vector in enumerate(found) if vector is None]
        if not missing:  # all hits: the model is neither loaded nor its deadline touched
            return np.stack(found)  # type: ignore[arg-type]
        # Each distinct missing text is embedded once, however often it repeats.
        unique: dict[str, int] = {}
        for i in missing:
            unique.setdefault(items[i], len(unique))
        fresh = self._encode(list(unique), keep_alive).vectors
        cache.put_many(list(unique), fresh)
        if len(missing) == len(items) and len(unique) == len(items):
            return fresh
        out = np.empty((len(items), prepared.info.dimension), dtype=np.float32)
        for i, vector in enumerate(found):
            out[i] = fresh[unique[items[i]]] if vector is None else vector
        return out

    def _encode(self, items: list[str], keep_alive: float | None) -> EncodeResult:
        """keep_alive in lifecycle seconds (already parsed: `_keep_alive_seconds`)."""
        with self._lifecycle.acquire(keep_alive=keep_alive) as runtime:
            return runtime.encode(items)

    @staticmethod
    def _keep_alive_seconds(keep_alive: KeepAlive) -> float | None:
        """None → the idle timeout; a duration → seconds; negative/"never" → pin (inf)."""
        return None if keep_alive is None else parse_keep_alive(keep_alive)

    def count_tokens(self, texts: str | Iterable[str], *, truncate: bool = True) -> list[int]:
        """Real token counts, including [CLS] and [SEP]: after truncation at the model's
        limit, or (``truncate=False``) up to one past it, so that a count above
        `get_max_tokens()` says the text is too long (one tokenisation serves both)."""
        items, _ = normalize_inputs(texts)
        encodings = self._counting_tokenizer().encode_batch(items, add_special_tokens=True)
        if not truncate:
            return [len(e.ids) for e in encodings]
        limit = self.prepare().info.max_seq_length
        return [min(len(e.ids), limit) for e in encodings]

    def _counting_tokenizer(self) -> Tokenizer:
        """A tokenizer kept for counting only (~9 MB, loaded on the first count).

        Counting must not load or keep alive the model, so it cannot borrow the runtime's.
        It truncates one token past the model's limit, so "too long" stays visible.
        """
        tokenizer = self._tokenizer
        if tokenizer is None:
            spec = self.prepare().spec
            with self._prepare_lock:
                if self._tokenizer is None:
                    self._tokenizer = load_tokenizer(spec.tokenizer_path, spec.max_seq_length + 1)
                tokenizer = self._tokenizer
        return tokenizer

    # ---- lifecycle ----------------------------------------------------------------------

    def unload_model(self) -> bool:
        """Free the model now (waits for calls in flight). True if a model was loaded."""
        return self._lifecycle.unload("explicit")

    def warmup(self, *, keep_alive: KeepAlive = None) -> None:
        """Load the model now instead of at the first embed(), leaving a keep_alive lease.

        Goes straight to the lifecycle, never through the cache: Ollama's "load (or pin)
        the model" idiom must load even when every text it could embed is cached.
        """
        with self._lifecycle.acquire(keep_alive=self._keep_alive_seconds(keep_alive)):
            pass

    def set_idle_timeout(self, value: float | int | str | None) -> None:
        """Change the idle timeout at run time ("30m", 90, 0, "never"/negative/None)."""
        if value is None:
            seconds = None
        else:
            seconds = parse_duration(value, key="idle_timeout", source="argument")
        self._lifecycle.set_idle_timeout(seconds)

    @property
    def is_loaded(self) -> bool:
        return bool(self._lifecycle.status()["model_loaded"])

    def get_memory_usage(self) -> dict[str, Any]:
        """Measured figures (psutil), never estimates; see README for each key."""
        report = self._lifecycle.status()
        report["process_rss_mb"] = memory.to_mb(memory.process_rss_bytes())
        report["process_uss_mb"] = memory.to_mb(memory.process_uss_bytes())
        prepared = self._prepared
        if prepared is not None and prepared.cache is not None:
            report["cache"] = prepared.cache.stats()
        if self._pressure is not None:
            report["pressure"] = self._pressure.status()
        report["isolation"] = self.settings.isolation
        if self.settings.isolation == "process":
            worker = self._lifecycle.peek()
            memory_info = getattr(worker, "memory_info", None)
            report["worker"] = memory_info() if callable(memory_info) else None
            # The model lives in the worker: this process's RSS barely moves at a load.
            # What the model takes is the worker's own memory (USS, all of which leaves
            # when the worker exits), measured now.
            if report["model_loaded"] and report["worker"]:
                uss = report["worker"].get("worker_uss_mb")
                if uss is not None:
                    report["model_mb"] = uss
        return report

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
            "dimension": prepared.info.dimension,
            "max_seq_length": prepared.info.max_seq_length,
        }

    def close(self) -> None:
        """Unload and release the cache; the Embedder must not be used afterwards."""
        self._lifecycle.close()
        prepared = self._prepared
        if prepared is not None and prepared.cache is not None:
            prepared.cache.close()
