"""The converted-model cache: one graph file, its weights file and a manifest per model.

``<stem>.onnx`` + ``<stem>.onnx.data`` + ``<stem>.json``, where the stem is derived from
everything that identifies a conversion (`Target`). The manifest records the size and
sha256 of both files; a model is used only when both match (`inspect`), so a truncated,
overwritten or half-written file is never loaded. A damaged model is removed (`discard`)
and rebuilt by the caller; when it cannot be removed, `ModelCacheError` says which file
and what to do.

Every change goes through ``files.py``: new versions are renamed over old ones and old
ones renamed aside before unlinking, never truncated or rewritten in place, because other
processes may have the weights file memory-mapped (in-place changes kill them with
SIGBUS).

Locks: the caller holds ``<stem>.onnx.lock`` around `discard` and `install`.
``_VERIFIED_LOCK`` (a ``threading.Lock``) guards ``_VERIFIED``, the file versions whose
sha256 already matched in this process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lazyembed.errors import ModelCacheError
from lazyembed.models.bert_graph import GraphKind
from lazyembed.models.files import (
    FileStamp,
    atomic_write_bytes,
    remove,
    remove_leftovers,
    sha256_file,
    stamp,
)

logger = logging.getLogger("lazyembed")

Variant = Literal["fp32", "int8"]

#: Directories a build writes into, beside the cache files (removed when left over).
BUILD_PREFIX = ".build-"


@dataclass(frozen=True)
class Target:
    """Everything that identifies one cached model."""

    variant: Variant
    graph: GraphKind
    weights_sha256: str
    config_sha256: str
    ort_version: str
    model_type: str
    converter_version: str

    @property
    def fingerprint(self) -> str:
        return (
            f"{self.model_type}-{self.variant}-{self.graph}"
            f";weights={self.weights_sha256}"
            f";config={self.config_sha256}"
            f";converter={self.converter_version}"
            f";onnxruntime={self.ort_version}"
        )

    @property
    def stem(self) -> str:
        key = hashlib.sha256(self.fingerprint.encode("utf-8")).hexdigest()[:24]
        return f"{self.model_type}-{self.variant}-{key}"


@dataclass(frozen=True)
class Damage:
    """Why a cached model cannot be used: the first bad (or missing) file, and what is wrong."""

    path: Path
    reason: str
    #: False when nothing of the model is on disk yet (a first conversion, not damage).
    anything_there: bool = True


def manifest_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def data_path(model_path: Path) -> Path:
    """The external weights file that belongs to the graph file ``model_path``."""
    return model_path.with_name(model_path.name + ".data")


def model_files(model_path: Path) -> tuple[Path, Path, Path]:
    """Manifest, graph, data: the order they are removed in (nobody validates a model
    whose manifest is gone) and the reverse of the order they are installed in."""
    return manifest_path(model_path), model_path, data_path(model_path)


# ---- verification -----------------------------------------------------------------------

_VERIFIED: set[tuple[FileStamp, str]] = set()
_VERIFIED_LOCK = threading.Lock()


def _file_problem(path: Path, size: object, sha: object) -> str | None:
    """Size always; sha256 once per process per file version (remembered in _VERIFIED)."""
    try:
        version = stamp(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if not isinstance(size, int) or not isinstance(sha, str):
        return "not described by the manifest"
    if version.size != size:
        return f"wrong size: {version.size} bytes, the manifest says {size}"
    with _VERIFIED_LOCK:
        if (version, sha) in _VERIFIED:
            return None
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if actual != sha:
        return "content does not match its sha256 in the manifest"
    with _VERIFIED_LOCK:
        _VERIFIED.add((version, sha))
    return None


def _read_manifest(path: Path) -> dict[str, Any] | str:
    """The manifest as a dict, or why it is unusable."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:
        return f"not a readable JSON manifest: {exc}"
    if not isinstance(manifest, dict):
        return "not a JSON object"
    return manifest


def inspect(model_path: Path, target: Target) -> Damage | None:
    """None if the graph and its data file are complete and match the manifest."""
    manifest_file = manifest_path(model_path)
    manifest = _read_manifest(manifest_file)
    if isinstance(manifest, str):
        there = any(path.exists() for path in model_files(model_path))
        return Damage(manifest_file, manifest, anything_there=there)
    if manifest.get("fingerprint") != target.fingerprint:
        return Damage(manifest_file, "describes another conversion")
    for path, size_key, sha_key in (
        (model_path, "size", "sha256"),
        (data_path(model_path), "data_size", "data_sha256"),
    ):
        problem = _file_problem(path, manifest.get(size_key), manifest.get(sha_key))
        if problem is not None:
            return Damage(path, problem)
    return None


# ---- changing the cache (under the model's lock) -----------------------------------------


def cache_error(
    model_path: Path, damage: Damage, exc: OSError, culprit: Path | None = None
) -> ModelCacheError:
    """The error for a damaged model whose files lazyembed cannot remove or replace."""
    also = "" if culprit in (None, damage.path) else f"; {culprit} cannot be removed"
    return ModelCacheError(
        f"the converted model file {damage.path} is damaged ({damage.reason}) and cannot be "
        f"replaced{also}: {exc.strerror or exc}. Fix: make {model_path.parent} writable "
        f"(and the files not immutable: chattr -i), or delete "
        f"{model_path.parent / model_path.stem}.* by hand, or point model_cache_dir "
        "(LAZYEMBED_MODEL_CACHE_DIR) at a writable directory"
    )


def discard(model_path: Path, damage: Damage) -> None:
    """Remove every file of a damaged model (renamed aside, then unlinked)."""
    for path in model_files(model_path):
        try:
            remove(path)
        except OSError as exc:
            raise cache_error(model_path, damage, exc, path) from exc


def remove_stale_builds(model_path: Path) -> None:
    """Delete what a killed build or removal of this model left (the caller holds its lock)."""
    for stale in model_path.parent.glob(f"{BUILD_PREFIX}{model_path.stem}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for path in model_files(model_path):
        remove_leftovers(path.parent, path.name)


def _remember_verified(path: Path, sha: str) -> None:
    version = stamp(path)
    with _VERIFIED_LOCK:
        _VERIFIED.add((version, sha))


def install(built: Path, built_data: Path, model_path: Path, manifest: dict[str, Any]) -> None:
    """Move a finished build into place: data, graph, then the manifest.

    A reader that sees a new manifest with an old file fails validation and waits on the
    lock. A process that mapped the old data file keeps its (unlinked) inode: replacing
    never truncates it.
    """
    sha, data_sha = sha256_file(built), sha256_file(built_data)
    manifest = {
        **manifest,
        "file": model_path.name,
        "size": built.stat().st_size,
        "sha256": sha,
        "data_file": data_path(model_path).name,
        "data_size": built_data.stat().st_size,
        "data_sha256": data_sha,
        "created_unix": time.time(),
    }
    built_data.replace(data_path(model_path))
    built.replace(model_path)
    atomic_write_bytes(manifest_path(model_path), json.dumps(manifest, indent=2).encode("utf-8"))
    _remember_verified(model_path, sha)
    _remember_verified(data_path(model_path), data_sha)


def manifest_for(target: Target, source_dir: Path) -> dict[str, Any]:
    """The identifying part of a manifest (`install` adds the files' sizes and hashes)."""
    return {
        "fingerprint": target.fingerprint,
        "variant": target.variant,
        "graph": target.graph,
        "weights_sha256": target.weights_sha256,
        "config_sha256": target.config_sha256,
        "converter_version": target.converter_version,
        "onnxruntime_version": target.ort_version,
        "source_dir": str(source_dir.resolve()),
    }


# ---- pruning ------------------------------------------------------------------------------


def _version_key(converter: object, onnxruntime: object) -> tuple[int, tuple[int, ...]]:
    """Orders conversions: converter version first, then the ONNX Runtime version."""
    try:
        converter_number = int(str(converter))
    except ValueError:
        converter_number = -1
    return converter_number, tuple(int(part) for part in re.findall(r"\d+", str(onnxruntime)))


def _superseded(manifest_file: Path, target: Target) -> dict[str, Any] | None:
    """The manifest at ``manifest_file`` if it is an older conversion of ``target``'s model."""
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        same_model = (
            manifest["weights_sha256"] == target.weights_sha256
            and manifest["config_sha256"] == target.config_sha256
            and manifest["variant"] == target.variant
        )
        theirs = _version_key(manifest["converter_version"], manifest["onnxruntime_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a manifest of ours, or unreadable: leave it alone
    mine = _version_key(target.converter_version, target.ort_version)
    return manifest if same_model and theirs < mine else None


def prune_superseded(cache_dir: Path, target: Target, *, keep: Path) -> None:
    """Delete older conversions of the same weights and variant.

    A conversion is superseded when its (converter version, ONNX Runtime version) is
    strictly older than the one just built; nothing newer, or of other weights or another
    variant, is touched. Strictly older only: an older lazyembed installed elsewhere that
    reconverts its own copy never deletes ours, so two installs cannot take turns
    rebuilding. Only the files named after the manifest are removed (never names read
    from it). A session that has the old file mapped keeps its inode until it closes.
    Best effort: a file that cannot be removed stays (and is logged at debug).
    """
    for manifest_file in cache_dir.glob(f"{target.model_type}-{target.variant}-*.json"):
        if manifest_file == manifest_path(keep):
            continue
        manifest = _superseded(manifest_file, target)
        if manifest is None:
            continue
        freed = 0
        for path in model_files(manifest_file.with_suffix(".onnx")):
            try:
                size = path.stat().st_size
                if remove(path):
                    freed += size
            except OSError as exc:
                logger.debug("could not remove superseded %s: %s", path, exc)
        logger.info(
            "removed superseded conversion %s (converter %s, onnxruntime %s): %.0f MB",
            manifest_file.stem,
            manifest["converter_version"],
            manifest["onnxruntime_version"],
            freed / 2**20,
        )
