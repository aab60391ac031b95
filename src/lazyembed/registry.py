"""`Models`: several models in one process, under one memory budget.

One `Embedder` (so one Lifecycle) per model spec, made on first use; a call touches only
its own model's lifecycle, never a registry-wide lock. Before a model loads, the registry
makes room: while the load would exceed ``max_loaded_models`` or ``memory_budget_mb``
(each model counts the largest RSS a load of it added, and at least its memory-mapped
weights file, which is all resident once it has run), it unloads the least recently used
model with nothing in flight and no pin (reason ``budget``); pinned models only when
nothing else can make room (the event says "was pinned"); a model with a call in flight
never. If nothing can make room within ``load_timeout``, the load fails with
`ModelBusyError` naming what holds memory.

Locks: ``_lock`` (re-entrant) guards the table of models, the loads waiting for room
(``_admitting``: they hold no memory yet, so they never count against each other) and the
reservations of admitted loads; it is held while deciding and while unloading a victim (so
loads are admitted one at a time), and may take a lifecycle's lock inside it, never the
reverse. Lifecycles report "idle or unloaded" through ``on_idle`` after releasing their own
lock; that only bumps a counter under ``_idle`` (a small lock never held for long), and only
while some load is waiting, so a call's hot path pays one attribute read.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from lazyembed.config import (
    KeepAlive,
    KeepAliveLike,
    Settings,
    for_model,
    load_settings,
    parse_duration,
)
from lazyembed.embedder import Embedder, FloatArray
from lazyembed.errors import ClosedError, ModelBusyError
from lazyembed.memory import to_mb
from lazyembed.models.catalogue import canonical_name
from lazyembed.report import MemoryReport, State

log = logging.getLogger("lazyembed")

_HOLDS_MEMORY = (State.LOADING, State.LOADED, State.UNLOADING)


class Models:
    """Embedders by model name, loaded lazily, evicted least-recently-used under a budget."""

    def __new__(cls, **kwargs: Any) -> Models:
        """The ``share`` decision (see `Embedder.__new__`): a `SharedModels` client of the
        user's daemon when it resolves to the daemon, else an in-process registry."""
        if cls is Models and kwargs.get("clock", time.monotonic) is time.monotonic:
            from lazyembed.daemon.shared import SharedModels, decide_models

            kwargs.pop("clock", None)
            decided = decide_models(kwargs, _in_process_models)
            if isinstance(decided, SharedModels):
                return decided  # type: ignore[return-value]  # the same public surface
            models = super().__new__(cls)
            models._settings_read = decided  # read once: __init__ takes them
            return models
        return super().__new__(cls)

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> None:
        read: Settings | None = getattr(self, "_settings_read", None)
        self._settings_read: Settings | None = None
        self.settings = settings if settings is not None else read or load_settings(**overrides)
        if settings is not None and overrides:
            raise TypeError("pass either settings= or keyword settings, not both")
        self._clock = clock
        self._lock = threading.RLock()
        self._embedders: dict[str, Embedder] = {}
        self._reserved: dict[str, float] = {}  # name → MB held for a load in progress
        self._admitting: set[str] = set()  # loads still waiting for room: they hold nothing
        self._measured: dict[str, float] = {}  # name → the largest MB a load of it added
        self._idle = threading.Condition(threading.Lock())
        self._generation = 0  # bumped (under _idle) when a model goes idle or unloads
        self._waiters = 0
        self._closed = False

    # ---- models -----------------------------------------------------------------------

    def get(self, model: str | None = None) -> Embedder:
        """The Embedder of ``model`` (a catalogue name, hub id or folder), made once."""
        name = canonical_name(model if model is not None else self.settings.model)
        embedder = self._embedders.get(name)
        if embedder is not None:
            return embedder
        with self._lock:
            if self._closed:
                raise ClosedError("this Models registry is closed")
            embedder = self._embedders.get(name)
            if embedder is None:
                embedder = Embedder(
                    settings=for_model(self.settings, name),
                    clock=self._clock,
                    load_gate=self._admit,
                    on_idle=self._on_idle,
                )
                self._embedders[name] = embedder
            return embedder

    def names(self) -> list[str]:
        """Every model this registry has made an Embedder for (loaded or not)."""
        with self._lock:
            return list(self._embedders)

    def loaded(self) -> list[str]:
        with self._lock:
            return [name for name, e in self._embedders.items() if e.is_loaded]

    # ---- the library surface over one model each --------------------------------------

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
        """Unload one model (waits for its calls), or every model when None."""
        if model is not None:
            return self.get(model).unload_model()
        with self._lock:
            embedders = list(self._embedders.values())
        return any([e.unload_model() for e in embedders])

    def set_idle_timeout(self, value: KeepAliveLike, model: str | None = None) -> None:
        """One model's idle timeout, or (None) every model's, present and future."""
        if model is not None:
            self.get(model).set_idle_timeout(value)
            return
        timeout = KeepAlive.FOREVER if value is None else parse_duration(value, key="idle_timeout")
        with self._lock:
            self.settings = dataclasses.replace(self.settings, idle_timeout=timeout)
            embedders = list(self._embedders.values())
        for embedder in embedders:
            embedder.set_idle_timeout(timeout)

    def memory_reports(self, *, events: bool = False) -> list[MemoryReport]:
        with self._lock:
            embedders = list(self._embedders.values())
        return [e.memory_report(events=events) for e in embedders]

    def close(self) -> None:
        """Unload and close every model. Idempotent; afterwards every call that needs a
        model raises `ClosedError`, also through an Embedder taken from `get()` before."""
        with self._lock:
            self._closed = True
            embedders, self._embedders = list(self._embedders.values()), {}
        for embedder in embedders:
            embedder.close()

    def __enter__(self) -> Models:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the budget ---------------------------------------------------------------------

    def _on_idle(self) -> None:
        if self._waiters:  # nobody waiting for room: nothing to tell (the common case)
            with self._idle:
                self._generation += 1
                self._idle.notify_all()

    @contextmanager
    def _admit(self, embedder: Embedder) -> Iterator[None]:
        """The Embedder's load gate: returns when the load fits, holding its place."""
        name = embedder.model_name
        need = self.footprint_mb(embedder)
        deadline = self._clock() + self.settings.load_timeout
        with self._lock:
            self._admitting.add(name)
            try:
                self._wait_for_room(name, need, deadline)
            finally:
                self._admitting.discard(name)
        try:
            yield
        finally:
            with self._lock:
                self._reserved.pop(name, None)
            self._on_idle()  # the reservation is gone: another waiting load may fit now

    def _wait_for_room(self, name: str, need: float, deadline: float) -> None:
        """Under _lock (released while waiting): returns once ``name`` holds a reservation."""
        while True:
            with self._idle:
                generation = self._generation
                self._waiters += 1
            try:
                if self._try_make_room(name, need):
                    self._reserved[name] = need
                    return
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise ModelBusyError(self._busy_message(name, need))
                self._lock.release()  # let others unload or finish while we wait
                try:
                    with self._idle:
                        if self._generation == generation:
                            self._idle.wait(min(remaining, 1.0))
                finally:
                    self._lock.acquire()
            finally:
                with self._idle:
                    self._waiters -= 1

    def _try_make_room(self, name: str, need: float) -> bool:
        """Under _lock: True when ``name`` fits; unloads victims (LRU, unpinned first)."""
        budget = self.settings.memory_budget_mb
        if budget is not None and need > budget:
            raise ModelBusyError(
                f"{name} needs ~{need:.0f} MB, more than memory_budget_mb={budget:g} on its own"
            )
        tried: set[str] = set()
        while True:
            holders = self._holders(exclude=name)
            used = sum(mb for _, mb in holders)
            if len(holders) < self.settings.max_loaded_models and (
                budget is None or used + need <= budget
            ):
                return True
            victim = self._victim(exclude=name)
            if victim is None or victim.model_name in tried:
                return False
            tried.add(victim.model_name)
            lifecycle = victim.lifecycle
            pinned = lifecycle.pinned
            if lifecycle.try_unload("budget", allow_pinned=True):
                log.info(
                    "%s unloaded to make room for %s%s",
                    victim.model_name,
                    name,
                    " (it was pinned: nothing else could make room)" if pinned else "",
                )

    def _holders(self, *, exclude: str) -> list[tuple[Embedder, float]]:
        """Models holding memory now (loading, loaded, unloading) with their MB. A load
        still waiting for room holds nothing yet: counting it would let two waiting loads
        each wait for the other until load_timeout."""
        holders = []
        for other, embedder in self._embedders.items():
            if other == exclude or other in self._admitting:
                continue
            if embedder.lifecycle.state not in _HOLDS_MEMORY:
                continue
            if other in self._reserved:
                mb = self._reserved[other]
            else:
                mb = self._remember(embedder, embedder.lifecycle.status(events=False).model_mb)
            holders.append((embedder, mb))
        return holders

    def footprint_mb(self, embedder: Embedder) -> float:
        """What one model counts against the budget: its largest measured load, and at
        least its weights file (memory-mapped, all resident after its first inference,
        even when a load's RSS delta is hidden by memory the process had freed)."""
        floor = _weights_mb(embedder)
        return max(floor, self._measured.get(embedder.model_name, 0.0))

    def _remember(self, embedder: Embedder, mb: float) -> float:
        name = embedder.model_name
        if mb > self._measured.get(name, 0.0):
            if name not in self._measured:
                log.info("%s: %.1f MB measured at its first load", name, mb)
            self._measured[name] = mb
        return self.footprint_mb(embedder)

    def _victim(self, *, exclude: str) -> Embedder | None:
        """The least recently used idle model: unpinned ones first, pinned ones last."""
        idle = [
            e
            for name, e in self._embedders.items()
            if name != exclude and e.lifecycle.state is State.LOADED and not e.lifecycle.busy
        ]
        if not idle:
            return None
        idle.sort(key=lambda e: (e.lifecycle.pinned, e.lifecycle.last_used or float("-inf")))
        return idle[0]

    def _busy_message(self, name: str, need: float) -> str:
        budget = self.settings.memory_budget_mb
        held = []
        for embedder, mb in self._holders(exclude=name):
            status = embedder.lifecycle.status(events=False)
            why = []
            if status.in_flight:
                why.append(f"{status.in_flight} call(s) in flight")
            if status.state is not State.LOADED:
                why.append(status.state.value)
            if status.pinned:
                why.append("pinned")
            held.append(f"{embedder.model_name} ({mb:.0f} MB{', ' if why else ''}{', '.join(why)})")
        limits = f"max_loaded_models={self.settings.max_loaded_models}"
        if budget is not None:
            limits += f", memory_budget_mb={budget:g}"
        return (
            f"no room to load {name} (~{need:.0f} MB) within "
            f"load_timeout={self.settings.load_timeout:g}s ({limits}); "
            f"held by: {'; '.join(held) or 'nothing'}"
        )


def _weights_mb(embedder: Embedder) -> float:
    """The converted model's files (the weights are memory-mapped from them)."""
    converted = embedder.prepare().converted
    size = sum(p.stat().st_size for p in (converted.path, converted.data_path) if p.exists())
    return to_mb(size)


def _in_process_models(settings: Settings) -> Models:
    """An in-process registry of ``settings`` (the shared client's fallback)."""
    return Models(settings=settings)
