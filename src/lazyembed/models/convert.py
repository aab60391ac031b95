"""Torch-free conversion of a model's ``model.safetensors`` into a cached ONNX model.

`ensure_onnx` returns a verified ONNX model for a model folder, converting it on first
use: ``encoder_config.py`` reads and vets ``config.json`` (refusing what no builder in
``architectures.py`` emits), the architecture's ``*_graph.py`` reads the tensors
(``checkpoint.py``) and emits the graph, ``onnx_build.py`` quantizes and optimizes it,
and ``onnx_store.py`` keeps the result (keyed by the source hashes, the architecture's
converter version, the variant and the onnxruntime version, written atomically and
verified by a manifest). A damaged cached model is removed and rebuilt by the next
call, in this process or any other.

Locks: ``<cache_dir>/<stem>.onnx.lock`` (a ``filelock.FileLock``) guards building,
replacing and removing one cached model and its manifest; ``hash_index.py`` and
``onnx_store.py`` describe their own.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from lazyembed.errors import ModelConversionError
from lazyembed.models import onnx_store
from lazyembed.models.architectures import converter_version
from lazyembed.models.bert_graph import CONVERTER_VERSION, DEFAULT_GRAPH, INT8_GRAPH, GraphKind
from lazyembed.models.checkpoint import weight_files
from lazyembed.models.encoder_config import CONFIG_FILE, read_config
from lazyembed.models.files import sha256_file
from lazyembed.models.hash_index import cached_sha256
from lazyembed.models.onnx_build import build_into, build_onnx_model
from lazyembed.models.onnx_store import Damage, Target, Variant

__all__ = [
    "CONVERTER_VERSION",
    "ConvertedModel",
    "GraphKind",
    "Variant",
    "build_onnx_model",
    "ensure_onnx",
    "find_converted",
]

logger = logging.getLogger("lazyembed")

_LOCK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ConvertedModel:
    """A ready-to-load ONNX model file and where it came from."""

    path: Path
    #: The weights beside the graph (ONNX external data), memory-mapped by ONNX Runtime.
    data_path: Path
    variant: Variant
    weights_sha256: str
    converter_version: str
    #: Identifies the numbers this model produces; changes with any input of the build.
    fingerprint: str
    #: False when the model was taken from the cache.
    converted: bool
    seconds: float


def _ort_version() -> str:
    """The installed onnxruntime's version, read without importing it if possible.

    A cache hit then costs an isolated parent no onnxruntime at all.
    """
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:  # another build (onnxruntime-gpu, ...)
        import onnxruntime

        return str(onnxruntime.__version__)


def _weights_sha256(files: list[Path], cache_dir: Path) -> str:
    """The checkpoint's identity: its file's sha256, or for shards the sha256 of their
    names and digests in order."""
    digests = [cached_sha256(path, cache_dir) for path in files]
    if len(files) == 1:
        return digests[0]
    joined = "\n".join(f"{path.name} {digest}" for path, digest in zip(files, digests, strict=True))
    return hashlib.sha256(joined.encode()).hexdigest()


def _plan(model_dir: Path, variant: Variant, cache_dir: Path) -> tuple[Target, Path]:
    """Check the inputs and name the cached model they map to (no conversion)."""
    if variant not in ("fp32", "int8"):
        raise ModelConversionError(f"unknown variant {variant!r}; expected 'fp32' or 'int8'")
    weights = weight_files(model_dir)
    config = model_dir / CONFIG_FILE
    for required in (*weights, config):
        if not required.is_file():
            raise ModelConversionError(f"{required} is missing; cannot convert {model_dir}")
    model_type = read_config(model_dir).model_type  # UnsupportedModelError before any work
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelConversionError(f"cannot create cache directory {cache_dir}: {exc}") from exc
    target = Target(
        variant=variant,
        graph=DEFAULT_GRAPH if variant == "fp32" else INT8_GRAPH,
        weights_sha256=_weights_sha256(weights, cache_dir),
        config_sha256=sha256_file(config),
        ort_version=_ort_version(),
        model_type=model_type,
        converter_version=converter_version(model_type),
    )
    return target, cache_dir / f"{target.stem}.onnx"


def _converted_model(
    target: Target, model_path: Path, *, converted: bool, start: float
) -> ConvertedModel:
    return ConvertedModel(
        path=model_path,
        data_path=onnx_store.data_path(model_path),
        variant=target.variant,
        weights_sha256=target.weights_sha256,
        converter_version=target.converter_version,
        fingerprint=target.fingerprint,
        converted=converted,
        seconds=time.perf_counter() - start,
    )


def find_converted(
    model_dir: Path, *, variant: Variant = "fp32", cache_dir: Path
) -> ConvertedModel | None:
    """The verified cached conversion of ``model_dir``, or None if it must be built."""
    start = time.perf_counter()
    target, model_path = _plan(Path(model_dir), variant, Path(cache_dir))
    damage = onnx_store.inspect(model_path, target)
    if damage is None:
        return _converted_model(target, model_path, converted=False, start=start)
    _report(damage)
    return None


def _report(damage: Damage) -> None:
    if damage.anything_there:
        logger.warning("cached model file %s: %s; rebuilding", damage.path, damage.reason)


def _rebuild(model_dir: Path, target: Target, model_path: Path, damage: Damage) -> None:
    """Under the model's lock: remove what is there, build, install, prune older ones."""
    onnx_store.discard(model_path, damage)
    onnx_store.remove_stale_builds(model_path)
    logger.info("converting %s to ONNX (%s) in %s", model_dir, target.variant, model_path.parent)
    prefix = f"{onnx_store.BUILD_PREFIX}{model_path.stem}-"
    with tempfile.TemporaryDirectory(dir=model_path.parent, prefix=prefix) as tmp:
        built, built_data = build_into(
            model_dir, target.variant, target.graph, Path(tmp), model_path.name
        )
        manifest = onnx_store.manifest_for(target, model_dir)
        onnx_store.install(built, built_data, model_path, manifest)
    onnx_store.prune_superseded(model_path.parent, target, keep=model_path)


def ensure_onnx(model_dir: Path, *, variant: Variant = "fp32", cache_dir: Path) -> ConvertedModel:
    """Return a verified ONNX model for ``model_dir``, converting it on first use.

    Safe against concurrent callers in other processes (file lock + double check) and
    against damaged cache files (size and sha256 checked against a manifest; a bad model
    is removed and rebuilt, never loaded; `ModelCacheError` when it cannot be removed).
    Converts in this process: ``lazyembed.models.convert_child.ensure_onnx_in_child``
    keeps the conversion's memory out of a long-running one.
    """
    start = time.perf_counter()
    model_dir = Path(model_dir)
    cache_dir = Path(cache_dir)
    target, model_path = _plan(model_dir, variant, cache_dir)
    damage = onnx_store.inspect(model_path, target)
    if damage is None:
        return _converted_model(target, model_path, converted=False, start=start)
    _report(damage)
    try:
        with FileLock(str(model_path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            again = onnx_store.inspect(model_path, target)
            if again is None:  # another process built it meanwhile
                return _converted_model(target, model_path, converted=False, start=start)
            _rebuild(model_dir, target, model_path, again)
    except ModelConversionError:
        raise
    except OSError as exc:
        if damage.anything_there:
            raise onnx_store.cache_error(model_path, damage, exc) from exc
        raise ModelConversionError(
            f"could not write the converted model to {cache_dir}: {exc}"
        ) from exc
    except Exception as exc:  # onnx / onnxruntime failures surface as many types
        raise ModelConversionError(f"converting {model_dir} failed: {exc}") from exc
    converted = _converted_model(target, model_path, converted=True, start=start)
    logger.info("converted %s -> %s in %.2f s", model_dir, model_path, converted.seconds)
    return converted
