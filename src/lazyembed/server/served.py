"""The models one server serves: one `ServedModel` (embedder, batcher, facts) per model.

A server built on one Embedder serves that model. One built on a `Models` registry
serves the registry's default model and ``server.models``, and with ``server.any_model``
also any catalogue model or local folder present here, made on the first request that
names it (the registry keeps them all under its memory budget). Each model has its own
batcher and model thread, so a model call never mixes models, and a load waiting for
room never blocks the calls whose end will make it. The table changes on the loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lazyembed.errors import LazyEmbedError
from lazyembed.models.catalogue import CATALOGUE, CatalogueEntry, canonical_name, find_entry
from lazyembed.models.catalogue import names_for as catalogue_names
from lazyembed.models.resolve import locate
from lazyembed.registry import Models
from lazyembed.report import MemoryReport
from lazyembed.server.batcher import Batcher, BatcherClosedError, EmbedderLike
from lazyembed.server.errors import ApiError, echo

_MB = 1024 * 1024


class ServedModel:
    """One served model: its embedder, its batcher, and its facts (asked once)."""

    def __init__(self, name: str, embedder: EmbedderLike, batcher: Batcher) -> None:
        self.name = name
        self.embedder = embedder
        self.batcher = batcher
        self._dimension: int | None = None
        self._report: dict[str, Any] | None = None

    def aliases(self) -> list[str]:
        """Other names this model answers to (from the catalogue)."""
        return sorted(set(catalogue_names(self.name)) - {self.name})

    def answers_to(self, requested: str) -> bool:
        """Its name, a catalogue alias of it, or the last part of its name (any case)."""
        text = requested.strip()
        if self.name in (text, text.rstrip("/"), canonical_name(text)):
            return True
        return text.lower() == self.name.rstrip("/").rsplit("/", 1)[-1].lower()

    async def dimension(self) -> int:
        if self._dimension is None:
            try:
                self._dimension = await asyncio.to_thread(self.embedder.get_embedding_dimension)
            except LazyEmbedError as exc:
                raise ApiError(
                    503, f"model unavailable: {exc}", "model_unavailable", "server_error"
                ) from None
        return self._dimension

    async def report(self) -> dict[str, Any]:
        """The embedder's model report (where from, ONNX path, size, hash), cached."""
        if self._report is None:
            model_report = getattr(self.embedder, "model_report", None)
            report: dict[str, Any] = {}
            if callable(model_report):
                report = dict(await asyncio.to_thread(model_report))
            self._report = report
        return self._report

    async def details(self) -> dict[str, Any]:
        report = await self.report()
        return details(find_entry(self.name), str(report.get("variant") or "fp32"))

    async def memory(self) -> MemoryReport:
        return await asyncio.to_thread(self.embedder.memory_report)

    async def tag(self) -> dict[str, Any]:
        """Its ``/api/tags`` entry (the converted file's size, digest and time)."""
        report = await self.report()
        modified = datetime.now(timezone.utc)
        onnx_path = report.get("onnx_path")
        if onnx_path:
            with contextlib.suppress(OSError):
                modified = datetime.fromtimestamp(Path(onnx_path).stat().st_mtime, timezone.utc)
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": rfc3339(modified),
            "size": int(float(report.get("onnx_mb") or 0) * _MB),
            "digest": str(report.get("weights_sha256") or ""),
            "details": await self.details(),
        }


@dataclass(frozen=True)
class Available:
    """A catalogue model present here but not served yet (``any_model``)."""

    entry: CatalogueEntry
    weights: Path

    def tag(self) -> dict[str, Any]:
        """Its ``/api/tags`` entry: the weights as found (nothing converted yet)."""
        size, modified = 0, datetime.now(timezone.utc)
        with contextlib.suppress(OSError):
            stat = self.weights.stat()
            size, modified = stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc)
        name = self.entry.hub_id
        return {
            "name": name,
            "model": name,
            "modified_at": rfc3339(modified),
            "size": size,
            "digest": "",
            "details": details(self.entry, "fp32"),
        }


def _present_in_catalogue(served: set[str]) -> list[Available]:
    """Catalogue models found locally (never downloads), except those in ``served``."""
    found = []
    for entry in CATALOGUE:
        if entry.hub_id not in served and (resolved := locate(entry.hub_id)) is not None:
            found.append(Available(entry, resolved.weights))
    return found


def details(entry: CatalogueEntry | None, variant: str) -> dict[str, Any]:
    """Ollama's ``details`` object for a model."""
    family = entry.architecture if entry is not None else "bert"
    return {
        "format": "onnx",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": variant.upper(),
    }


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class ServedModels:
    """The table of served models (module docstring); ``default`` answers unnamed requests."""

    def __init__(
        self,
        source: EmbedderLike | Models,
        *,
        models: tuple[str, ...],
        any_model: bool,
        make_batcher: Callable[[EmbedderLike], Batcher],
    ) -> None:
        self._make_batcher = make_batcher
        self._table: dict[str, ServedModel] = {}
        self._all: tuple[ServedModel, ...] = ()  # replaced whole: worker threads read it
        self.closed = False
        embedders: list[tuple[str, EmbedderLike]]
        if isinstance(source, Models):
            self.registry: Models | None = source
            self.any_model = any_model
            names = [canonical_name(source.settings.model), *map(canonical_name, models)]
            embedders = [(name, source.get(name)) for name in dict.fromkeys(names)]
        else:
            self.registry = None
            self.any_model = False  # one Embedder serves its one model
            embedders = [(source.model_name, source)]
        self.configured = [name for name, _ in embedders]
        for name, embedder in embedders:
            self._add(name, embedder)
        self.default = self._table[self.configured[0]]

    def all(self) -> list[ServedModel]:
        """Every model served so far: the configured ones first, then those on demand."""
        return list(self._all)

    def batchers(self) -> list[Batcher]:
        return [served.batcher for served in self._all]

    def get(self, requested: str | None) -> ServedModel:
        """The model a request names (absent or empty: the default), or 404."""
        if requested is None or not requested.strip():
            return self.default
        for served in self._all:
            if served.answers_to(requested):
                return served
        if self.any_model and (spec := self._present(requested)) is not None:
            known = self._table.get(spec)
            return known if known is not None else self._on_demand(spec)
        raise ApiError(404, self._not_served(requested), "model_not_found")

    async def available(self) -> list[Available]:
        """With ``any_model``: catalogue models present here and not served yet."""
        if not self.any_model:
            return []
        return await asyncio.to_thread(_present_in_catalogue, set(self._table))

    def _present(self, requested: str) -> str | None:
        """The spec to load for ``requested`` if it is here (or may be downloaded)."""
        assert self.registry is not None
        entry = find_entry(requested)
        if entry is not None:
            allowed = self.registry.settings.allow_download or locate(entry.hub_id) is not None
            return entry.hub_id if allowed else None
        resolved = locate(requested.strip())
        if resolved is None:
            return None
        return str(resolved.directory) if resolved.source == "path" else resolved.spec

    def _on_demand(self, spec: str) -> ServedModel:
        assert self.registry is not None
        if self.closed:
            raise BatcherClosedError("the server is shutting down")
        return self._add(spec, self.registry.get(spec))

    def _add(self, name: str, embedder: EmbedderLike) -> ServedModel:
        served = ServedModel(name, embedder, self._make_batcher(embedder))
        self._table[name] = served
        self._all = (*self._all, served)
        return served

    def _not_served(self, requested: str) -> str:
        served = []
        for model in self._all:
            aliases = model.aliases()
            served.append(
                repr(model.name) + (f" (aliases: {', '.join(aliases)})" if aliases else "")
            )
        more = ""
        if self.any_model:
            more = "; any catalogue model or model folder present on this machine can be named"
        return (
            f"model {echo(requested)} is not served here; this server serves "
            f"{', '.join(served)}{more}"
        )
