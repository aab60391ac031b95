"""`SharedEmbedder` and `SharedModels`: the Embedder/Models surface, served by the daemon.

``Embedder(...)`` and ``Models(...)`` return one of these when ``share`` resolves to the
user's daemon (`shared_embedder_or_none`, `shared_models_or_none`, called from their
``__new__`` before anything heavy is imported). Every call becomes one request to the
daemon; the vector-affecting settings travel with it (``options``), so clients with
other settings never get each other's vectors. Vectors arrive as float32 bytes and
become lists through `array` (numpy is imported only by `embed_numpy`/`encode`). When
the daemon cannot serve a call (`DaemonUnavailable`: hung, gone, another version), the
call runs on an in-process Embedder of the same settings, made on first need.

Locks: ``_local_lock`` guards the creation of the in-process fallback only; requests are
serialised by the process's `DaemonClient`. ``isinstance(x, lazyembed.Embedder)`` holds:
`SharedEmbedder` is registered as a virtual subclass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast, overload

from lazyembed.config import (
    KeepAliveLike,
    Settings,
    Share,
    for_model,
    load_settings,
    model_onnx_file,
    parse_duration,
    parse_keep_alive,
    resolve_share,
)
from lazyembed.config.settings import DEFAULT_SHARE
from lazyembed.daemon.client import (
    DaemonClient,
    DaemonUnavailable,
    connect,
    keep_alive_wire,
    model_for_request,
    platform_supported,
    request_options,
)
from lazyembed.daemon.protocol import Meta, ProtocolError, unpack_float32
from lazyembed.errors import InputTypeError, InvalidInputError
from lazyembed.inputs import check_text, normalize_inputs
from lazyembed.models.prompts import Prompts
from lazyembed.models.resolve import canonical_spec

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float32]

_windows_warned = False


def _share_client(settings: Settings, default: Share = DEFAULT_SHARE) -> DaemonClient | None:
    """The daemon client when ``settings`` resolve to the daemon and it can be used."""
    share = resolve_share(settings, default)
    if share == "never":
        return None
    if not platform_supported():
        global _windows_warned
        if settings.share == "always" and not _windows_warned:  # asked for, not a default
            import warnings

            from lazyembed.daemon.client import DaemonFallbackWarning

            _windows_warned = True
            warnings.warn(
                "share='always': the shared daemon needs Unix sockets (not on Windows yet); "
                "running in this process",
                DaemonFallbackWarning,
                stacklevel=4,
            )
        return None
    return connect(settings, share)


def _settings_from(model: str | None, kwargs: dict[str, Any]) -> Settings | None:
    """The settings an Embedder/Models call describes, or None when the in-process
    constructor must decide (a fake clock, or arguments it will refuse)."""
    if kwargs.get("clock") is not None or kwargs.get("on_idle") is not None:
        return None
    settings = kwargs.get("settings")
    overrides = {k: v for k, v in kwargs.items() if k not in ("settings", "clock", "on_idle")}
    if model is None:  # Models(model=...) names its default model as a keyword setting
        model = overrides.pop("model", None)
    if settings is not None:
        if model is not None or overrides:
            return None  # the constructor raises its TypeError
        return cast(Settings, settings)
    return load_settings(model=model, **overrides)


#: How this module makes an in-process Embedder or Models for a fallback: handed over by
#: the callers (lazyembed.embedder and lazyembed.registry import this module, never the
#: reverse, so the arrows point one way).
InProcess = Callable[[Settings], Any]


def decide_embedder(
    model: str | None, kwargs: dict[str, Any], in_process: InProcess
) -> SharedEmbedder | Settings | None:
    """`Embedder.__new__`'s question: a SharedEmbedder, else the settings read for the
    in-process one (None: its constructor reads them, e.g. to refuse bad arguments).
    ``in_process`` makes the fallback Embedder from settings."""
    settings = _settings_from(model, kwargs)
    if settings is None or resolve_share(settings) == "never":
        return settings if kwargs.get("settings") is None else None
    client = _share_client(settings)
    if client is None:
        return settings if kwargs.get("settings") is None else None
    return SharedEmbedder(settings, client, in_process=in_process)


def decide_models(kwargs: dict[str, Any], in_process: InProcess) -> SharedModels | Settings | None:
    """`Models.__new__`'s question: a SharedModels, else the settings read for the
    in-process registry (None: its constructor reads them)."""
    settings = _settings_from(None, kwargs)
    if settings is None or resolve_share(settings) == "never":
        return settings if kwargs.get("settings") is None else None
    client = _share_client(settings)
    if client is None:
        return settings if kwargs.get("settings") is None else None
    return SharedModels(settings, client, in_process)


def shared_embedder_for(settings: Settings, default_share: Share, in_process: InProcess) -> Any:
    """An Embedder for ``settings`` with ``default_share`` when the setting is not given
    (the CLI's "always"): shared when that resolves to the daemon, else in-process."""
    client = _share_client(settings, default_share)
    if client is not None:  # the mode it resolved to also rules its retries ("always")
        resolved = dataclasses.replace(settings, share=resolve_share(settings, default_share))
        return SharedEmbedder(resolved, client, in_process=in_process)
    return in_process(dataclasses.replace(settings, share="never"))


def _in_process(settings: Settings) -> Settings:
    return dataclasses.replace(settings, share="never")


class SharedEmbedder:
    """One model served by the daemon, with `lazyembed.Embedder`'s public surface."""

    #: `Embedder.__subclasshook__` reads it: ``isinstance(x, lazyembed.Embedder)`` holds.
    _embedder_surface = True

    def __init__(
        self,
        settings: Settings,
        client: DaemonClient,
        *,
        in_process: InProcess | None = None,
        fallback: Callable[[], Any] | None = None,
    ) -> None:
        if (in_process is None) == (fallback is None):
            raise TypeError("SharedEmbedder needs exactly one of in_process and fallback")
        if settings.onnx_files:  # this model's own export goes with each request
            settings = dataclasses.replace(
                settings, onnx_file=model_onnx_file(settings, settings.model)
            )
        self.settings = settings
        self.model_name = canonical_spec(settings.model)
        self._model = model_for_request(self.model_name)
        self._client = client
        self._share = resolve_share(settings)
        self._options = request_options(settings)
        self._in_process = in_process
        self._fallback_factory = fallback
        self._local: Any = None
        self._local_lock = threading.Lock()
        self._info: Meta | None = None
        self._closed = False
        self._leased = False  # an explicit keep-alive or warmup was sent (see close)

    # ---- plumbing ---------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """True: calls go to the daemon (the in-process fallback aside)."""
        return True

    @property
    def client(self) -> DaemonClient:
        return self._client

    def _request(self, op: str, **fields: Any) -> tuple[Meta, bytes]:
        if self._closed:
            from lazyembed.errors import ClosedError

            raise ClosedError("this Embedder is closed")
        meta: Meta = {"op": op, "id": 0, "model": self._model, "options": self._options}
        meta.update(fields)
        return self._client.call(meta, self.settings, self._share)

    def _fallback(self) -> Any:
        """The in-process Embedder of the same settings (made on first need)."""
        local = self._local
        if local is None:
            with self._local_lock:
                if self._local is None:
                    if self._fallback_factory is not None:
                        self._local = self._fallback_factory()
                    else:
                        assert self._in_process is not None
                        self._local = self._in_process(_in_process(self.settings))
                local = self._local
        return local

    def _vectors(
        self, items: list[str], keep_alive: KeepAliveLike, prompt_name: Any, prompt: Any
    ) -> tuple[Meta, bytes] | None:
        """The daemon's answer to embedding ``items``; None when it must run in-process."""
        _check_prompt_args(prompt_name, prompt)
        seconds = parse_keep_alive(keep_alive)  # a bad value fails before any request
        if not seconds.is_default:
            self._leased = True
        try:
            return self._request(
                "embed",
                texts=items,
                prompt=prompt,
                prompt_name=prompt_name,
                keep_alive=keep_alive_wire(seconds),
            )
        except DaemonUnavailable:
            return None

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
        """One text -> one vector (a list of floats); a list of texts -> a list of vectors."""
        if isinstance(texts, str):
            items, single = [check_text(texts)], True
        else:
            items, single = normalize_inputs(texts)
        answer = self._vectors(items, keep_alive, prompt_name, prompt)
        if answer is None:
            local = self._fallback()
            vectors: list[float] | list[list[float]] = local.embed(
                items[0] if single else items,
                keep_alive=keep_alive,
                prompt_name=prompt_name,
                prompt=prompt,
            )
            return vectors
        rows = unpack_float32(answer[1], _shape(answer[0]))
        return rows[0] if single else rows

    def embed_numpy(
        self,
        texts: str | Iterable[str],
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> FloatArray:
        """Vectors as one float32 array of shape (n, dim) (imports numpy)."""
        items, _ = normalize_inputs(texts)
        answer = self._vectors(items, keep_alive, prompt_name, prompt)
        if answer is None:
            array: FloatArray = self._fallback().embed_numpy(
                items, keep_alive=keep_alive, prompt_name=prompt_name, prompt=prompt
            )
            return array
        return _array(answer)

    def embed_with_usage(
        self,
        texts: str | Iterable[str],
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> tuple[FloatArray, list[int]]:
        """Vectors plus each input's real token count (two requests)."""
        items, _ = normalize_inputs(texts)
        prefix = self.prompts.text_for(prompt_name, prompt)
        vectors = self.embed_numpy(
            items, keep_alive=keep_alive, prompt_name=prompt_name, prompt=prompt
        )
        return vectors, self.count_tokens([prefix + item for item in items] if prefix else items)

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

    def encode(
        self,
        sentences: str | Iterable[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        **kwargs: Any,
    ) -> FloatArray | list[FloatArray]:
        """sentence-transformers' ``encode``, as `Embedder.encode` (imports numpy)."""
        import numpy as np

        if convert_to_tensor:
            raise InvalidInputError(
                "encode(convert_to_tensor=True) needs torch, which lazyembed does not use: "
                "keep convert_to_numpy=True and call torch.from_numpy() on the result"
            )
        keep_alive = kwargs.pop("keep_alive", None)
        if kwargs.pop("device", None) not in (None, "cpu"):
            raise InvalidInputError("lazyembed runs on the CPU only: pass device='cpu' or None")
        if kwargs:
            raise InvalidInputError(f"encode() does not support the argument(s) {sorted(kwargs)}")
        if isinstance(sentences, (list, tuple)) and not sentences:
            empty = np.empty((0, self.get_embedding_dimension()), dtype=np.float32)
            return empty if convert_to_numpy else []
        vectors = self.embed_numpy(
            sentences, keep_alive=keep_alive, prompt_name=prompt_name, prompt=prompt
        )
        if normalize_embeddings:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = (vectors / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
        if isinstance(sentences, str):
            one: FloatArray = vectors[0]
            return one
        return vectors if convert_to_numpy else list(vectors)

    # ---- the model's facts ----------------------------------------------------------------

    def _model_info(self) -> Meta:
        info = self._info
        if info is None:
            try:
                info, _ = self._request("info")
            except DaemonUnavailable:
                local = self._fallback()
                prompts = local.prompts
                info = {
                    "dimension": local.get_embedding_dimension(),
                    "max_tokens": local.get_max_tokens(),
                    "prompts": dict(prompts.prompts),
                    "default_prompt_name": prompts.default_name,
                }
            self._info = info
        return info

    @property
    def prompts(self) -> Prompts:
        """The model's prompts (as the daemon read them)."""
        info = self._model_info()
        raw = info.get("prompts") or {}
        return Prompts(MappingProxyType(dict(raw)), info.get("default_prompt_name"))

    def get_embedding_dimension(self) -> int:
        return int(self._model_info()["dimension"])

    def get_max_tokens(self) -> int:
        return int(self._model_info()["max_tokens"])

    def count_tokens(self, texts: str | Iterable[str], *, truncate: bool = True) -> list[int]:
        """Real token counts (the daemon tokenizes; see `Embedder.count_tokens`)."""
        items, _ = normalize_inputs(texts)
        try:
            answer, _ = self._request("count_tokens", texts=items, truncate=bool(truncate))
        except DaemonUnavailable:
            counts: list[int] = self._fallback().count_tokens(items, truncate=truncate)
            return counts
        return [int(n) for n in answer["counts"]]

    # ---- lifecycle ----------------------------------------------------------------------

    def unload_model(self) -> bool:
        """Release this process's leases on the model; the daemon unloads it when no other
        client holds one. True if the daemon unloaded it (or the fallback was loaded)."""
        unloaded = False
        local = self._local
        if local is not None:
            unloaded = local.unload_model()
        try:
            answer, _ = self._request("release")
        except DaemonUnavailable:
            return unloaded
        return unloaded or bool(answer.get("unloaded"))

    def warmup(self, *, keep_alive: KeepAliveLike = None) -> None:
        """Have the daemon load the model now, leaving this process's keep-alive lease."""
        wire = keep_alive_wire(parse_keep_alive(keep_alive))
        self._leased = True
        try:
            self._request("warmup", keep_alive=wire)
        except DaemonUnavailable:
            self._fallback().warmup(keep_alive=keep_alive)

    def set_idle_timeout(self, value: KeepAliveLike) -> None:
        """The model's idle timeout in the daemon (for every client of that model)."""
        timeout = parse_duration("never" if value is None else value, key="idle_timeout")
        seconds: float | str = "never" if timeout.is_forever else timeout.seconds
        if self._local is not None:
            self._local.set_idle_timeout(value)
        try:
            self._request("set_idle_timeout", seconds=seconds)
        except DaemonUnavailable:
            self._fallback().set_idle_timeout(value)

    @property
    def is_loaded(self) -> bool:
        """The model is loaded in the daemon (or in the in-process fallback)."""
        local = self._local
        if local is not None and local.is_loaded:
            return True
        try:
            answer, _ = self._request("memory")
        except DaemonUnavailable:
            return False
        return any(m.get("model_loaded") for m in answer.get("models") or [])

    def get_memory_usage(self) -> dict[str, Any]:
        """The daemon's figures for the model, its own (``"daemon"``) and this process's
        RSS (``process_rss_mb``), with ``"shared": True``."""
        from lazyembed import memory

        own_rss = memory.to_mb(memory.process_rss_bytes())
        try:
            answer, _ = self._request("memory")
        except DaemonUnavailable:
            local_report: dict[str, Any] = self._fallback().get_memory_usage()
            local_report["shared"] = False
            return local_report
        models = answer.get("models") or []
        report = dict(models[0]) if models else {"state": "unloaded", "model_loaded": False}
        daemon = dict(answer.get("daemon") or {})
        # The daemon's process figures belong under "daemon"; the top level is this process.
        for key in ("process_rss_mb", "process_uss_mb"):
            if key in report:
                daemon.setdefault(key.replace("process_", ""), report[key])
        report["process_rss_mb"] = own_rss
        report["process_uss_mb"] = None
        report["daemon"] = daemon
        report["shared"] = True
        local = self._local
        if local is not None:
            report["in_process_fallback"] = local.get_memory_usage()
        return report

    def close(self) -> None:
        """Done with the model: the object must not be used afterwards. Leases this object
        took (a keep_alive, warmup) are released, which unloads the model when no other
        client holds one; otherwise the daemon keeps it for its idle timeout, for the next
        client (a `lazyembed embed` run, say). The in-process fallback is closed."""
        if self._closed:
            return
        if self._leased:  # an explicit keep-alive or warmup: end it, as in-process close()
            with contextlib.suppress(Exception):  # closing never fails on the daemon's account
                self._request("release")
        self._closed = True
        local = self._local
        if local is not None and self._fallback_factory is None:
            local.close()

    def __enter__(self) -> SharedEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SharedEmbedder(model={self.model_name!r}, daemon={self._client.paths.socket})"


class SharedModels:
    """Several models served by the daemon, with `lazyembed.Models`' public surface."""

    def __init__(self, settings: Settings, client: DaemonClient, in_process: InProcess) -> None:
        self.settings = settings
        self._client = client
        self._in_process = in_process  # makes the in-process Models for a fallback
        self._lock = threading.Lock()  # guards _embedders and _local's creation
        self._embedders: dict[str, SharedEmbedder] = {}
        self._local: Any = None

    def get(self, model: str | None = None) -> SharedEmbedder:
        """The (shared) Embedder of ``model``, made once."""
        name = canonical_spec(model if model is not None else self.settings.model)
        with self._lock:
            embedder = self._embedders.get(name)
            if embedder is None:
                embedder = SharedEmbedder(
                    for_model(self.settings, name),
                    self._client,
                    fallback=lambda: self._fallback().get(name),
                )
                self._embedders[name] = embedder
        return embedder

    def _fallback(self) -> Any:
        with self._lock:
            if self._local is None:
                self._local = self._in_process(_in_process(self.settings))
            return self._local

    def names(self) -> list[str]:
        with self._lock:
            return list(self._embedders)

    def loaded(self) -> list[str]:
        """The models loaded in the daemon (for any client)."""
        try:
            answer, _ = self._request("memory", model=None)
        except DaemonUnavailable:
            return self._local.loaded() if self._local is not None else []
        return list((answer.get("daemon") or {}).get("models_loaded") or [])

    def _request(self, op: str, **fields: Any) -> tuple[Meta, bytes]:
        meta: Meta = {"op": op, "id": 0, "options": request_options(self.settings)}
        meta.update(fields)
        return self._client.call(meta, self.settings, resolve_share(self.settings))

    def embed(
        self,
        texts: str | Iterable[str],
        *,
        model: str | None = None,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> list[float] | list[list[float]]:
        return self.get(model).embed(
            texts, keep_alive=keep_alive, prompt_name=prompt_name, prompt=prompt
        )

    def embed_numpy(
        self,
        texts: str | Iterable[str],
        *,
        model: str | None = None,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> FloatArray:
        return self.get(model).embed_numpy(
            texts, keep_alive=keep_alive, prompt_name=prompt_name, prompt=prompt
        )

    def unload(self, model: str | None = None) -> bool:
        """Release this process's leases on one model (or all of them)."""
        if model is not None:
            return self.get(model).unload_model()
        unloaded = self._local.unload() if self._local is not None else False
        try:
            answer, _ = self._request("release", model=None)
        except DaemonUnavailable:
            return unloaded
        return unloaded or bool(answer.get("unloaded"))

    def set_idle_timeout(self, value: KeepAliveLike, model: str | None = None) -> None:
        """One model's idle timeout in the daemon, or (None) every model's."""
        if model is not None:
            self.get(model).set_idle_timeout(value)
            return
        timeout = parse_duration("never" if value is None else value, key="idle_timeout")
        self.settings = dataclasses.replace(self.settings, idle_timeout=timeout)
        if self._local is not None:
            self._local.set_idle_timeout(value)
        with contextlib.suppress(DaemonUnavailable):
            self._request(
                "set_idle_timeout",
                model=None,
                seconds="never" if timeout.is_forever else timeout.seconds,
            )

    def close(self) -> None:
        """Release this process's leases and close the fallback registry."""
        with self._lock:
            embedders, self._embedders = list(self._embedders.values()), {}
        for embedder in embedders:
            embedder.close()
        if self._local is not None:
            self._local.close()

    def __repr__(self) -> str:
        return f"SharedModels(daemon={self._client.paths.socket})"


def _shape(answer: Meta) -> tuple[int, int]:
    shape = answer.get("shape")
    if not isinstance(shape, list) or len(shape) != 2:
        raise ProtocolError(f"embed answer without a shape: {answer!r:.200}")
    return int(shape[0]), int(shape[1])


def _array(answer: tuple[Meta, bytes]) -> FloatArray:
    """The payload as a writable, native float32 array (numpy imported here only)."""
    import numpy as np

    n, dim = _shape(answer[0])
    if len(answer[1]) != 4 * n * dim:
        raise ProtocolError(f"payload of {len(answer[1])} bytes does not hold shape {[n, dim]}")
    flat = np.frombuffer(answer[1], dtype="<f4")
    return flat.reshape(n, dim).astype(np.float32)  # a copy: writable, native order


def _check_prompt_args(prompt_name: object, prompt: object) -> None:
    """The type errors the in-process Prompts would raise, before a request."""
    if prompt is not None and not isinstance(prompt, str):
        raise InputTypeError(f"prompt must be a str, not {type(prompt).__name__}")
    if prompt_name is not None and not isinstance(prompt_name, str):
        raise InputTypeError(f"prompt_name must be a str, not {type(prompt_name).__name__}")
