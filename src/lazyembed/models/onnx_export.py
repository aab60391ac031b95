"""A model folder's own ONNX export of its transformer, run instead of a conversion.

sentence-transformers publishes ``onnx/model.onnx`` (and optimised or quantised variants
beside it) for most hub models, and onnx-community publishes exports of decoder models.
Such a file runs whatever its architecture: lazyembed feeds what the graph asks for
(`read_graph` checks its inputs and outputs once) and applies its own pooling and
Normalize from ``modules.json`` to the graph's token vectors.

Which transformer a folder runs (`choose_transformer`): ``onnx_file`` (setting or
argument) forces that export; otherwise a folder of an architecture lazyembed converts
(``architectures.py``) with ``model.safetensors`` is converted natively (``convert.py``:
smaller, optimised once, memory-mapped), even when it also has exports, and any other
folder runs ``onnx/model.onnx`` when present. A folder with neither is refused with
`UnsupportedModelError` saying what would make it run, before any heavy work.

The export is used in place (never copied): ONNX Runtime memory-maps its external data
file (``model.onnx_data``) as it does a converted model's. The fingerprint carries the
sha256 of the graph and of each external data file (``hash_index.py`` remembers them per
file version). `read_graph` runs in a short-lived child process (it imports onnx and
reads the whole protobuf); what it found is kept in the model cache directory
(``export-<sha>-<version>.json``), so a later process needs neither a child nor a parse.
No locks: the JSON is written atomically and identical for every writer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from lazyembed.errors import ModelConversionError, ModelNotFoundError, UnsupportedModelError
from lazyembed.models.checkpoint import INDEX_FILE, WEIGHTS_FILE
from lazyembed.models.convert import ConvertedModel, Variant, _ort_version
from lazyembed.models.convert_child import (
    CONVERSION_ERROR_EXIT,
    UNSUPPORTED_EXIT,
    child_env,
    ensure_onnx_in_child,
    last_line,
)
from lazyembed.models.encoder_config import read_config
from lazyembed.models.files import atomic_write_bytes
from lazyembed.models.hash_index import cached_sha256
from lazyembed.models.info import ModelInfo
from lazyembed.models.resolve import list_exports

logger = logging.getLogger("lazyembed")

#: Where sentence-transformers (and optimum) put a folder's export.
DEFAULT_EXPORT = "onnx/model.onnx"
#: Identifies how lazyembed runs an export (feeds, outputs); part of the fingerprint.
EXPORT_VERSION = "export-1"
#: Inputs lazyembed fills; decoder exports' ``past_key_values.*`` are fed empty too.
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
PAST_PREFIX = "past_key_values"
#: Outputs of token vectors, by preference; ``sentence_embedding`` alone is used as is.
HIDDEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
POOLED_OUTPUT = "sentence_embedding"


@dataclass(frozen=True)
class GraphInfo:
    """What an export's graph takes and gives, as lazyembed uses it."""

    inputs: tuple[str, ...]
    #: The output lazyembed reads: token vectors, or ``sentence_embedding`` (pooled).
    output: str
    #: The output's last dimension when the graph fixes it.
    width: int | None
    #: External data files (relative to the graph's folder), in first-use order.
    data_files: tuple[str, ...]

    @property
    def pooled(self) -> bool:
        """The graph pools itself: lazyembed skips its pooling (Normalize still applies)."""
        return self.output == POOLED_OUTPUT


@dataclass(frozen=True)
class TransformerChoice:
    """How a folder's transformer runs: converted natively (``export`` None) or an export."""

    export: Path | None
    #: Why (for logs and ``lazyembed models --describe``).
    reason: str


def _named_export(directory: Path, onnx_file: str) -> Path:
    relative = PurePosixPath(onnx_file.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise ModelNotFoundError(
            f"onnx_file={onnx_file!r} must be a path inside the model folder {directory}, "
            f"like {DEFAULT_EXPORT!r}"
        )
    path = directory / relative
    if not path.is_file():
        present = ", ".join(list_exports(directory)) or "none"
        raise ModelNotFoundError(
            f"onnx_file={onnx_file!r}: {path} does not exist; exports in {directory}: {present}"
        )
    return path


def choose_transformer(directory: Path, onnx_file: str | None = None) -> TransformerChoice:
    """Native conversion or which export (see the module docstring); cheap (no parsing
    beyond config.json), raises before any heavy work."""
    directory = Path(directory)
    if onnx_file:
        return TransformerChoice(_named_export(directory, onnx_file), f"onnx_file={onnx_file}")
    default = directory / DEFAULT_EXPORT
    try:
        read_config(directory)
    except UnsupportedModelError as exc:
        if default.is_file():
            return TransformerChoice(default, f"{DEFAULT_EXPORT} (not converted natively: {exc})")
        others = [name for name in list_exports(directory) if name != DEFAULT_EXPORT]
        hint = f" (or set onnx_file to one of: {', '.join(others)})" if others else ""
        raise UnsupportedModelError(
            f"{exc}. To run it, add its ONNX export at {directory / DEFAULT_EXPORT}{hint} "
            "(the hub's onnx/ folder, or sentence-transformers' "
            'SentenceTransformer(path, backend="onnx").save(path)), or use a model of a '
            "supported architecture"
        ) from exc
    if not any((directory / name).is_file() for name in (WEIGHTS_FILE, INDEX_FILE)):
        if default.is_file():
            return TransformerChoice(default, f"{DEFAULT_EXPORT} (no {WEIGHTS_FILE})")
        others = list_exports(directory)
        if others:
            raise ModelNotFoundError(
                f"{directory} has no {WEIGHTS_FILE} to convert and no {DEFAULT_EXPORT}; "
                f"set onnx_file to one of: {', '.join(others)}"
            )
    return TransformerChoice(None, f"converted from {WEIGHTS_FILE}")


# ---- the graph ---------------------------------------------------------------------------


def _graph_problem(path: Path, inputs: list[str], outputs: list[str]) -> str | None:
    unknown = [n for n in inputs if n not in KNOWN_INPUTS and not n.startswith(PAST_PREFIX)]
    if unknown:
        return (
            f"its graph takes input {', '.join(map(repr, unknown))}, which lazyembed cannot "
            f"fill (it feeds {', '.join(KNOWN_INPUTS)} and empty {PAST_PREFIX}.*)"
        )
    if "input_ids" not in inputs:
        return f"its graph takes no input_ids (inputs: {', '.join(inputs) or 'none'})"
    if not any(n in outputs for n in (*HIDDEN_OUTPUTS, POOLED_OUTPUT)):
        return (
            f"its graph gives none of {', '.join((*HIDDEN_OUTPUTS, POOLED_OUTPUT))} "
            f"(outputs: {', '.join(outputs) or 'none'})"
        )
    return None


def read_graph(path: Path) -> GraphInfo:
    """Parse the graph (not its external data) and check lazyembed can feed and read it.

    `UnsupportedModelError` names an input lazyembed cannot fill (a ``task_id``) or the
    outputs when none carries token or sentence vectors.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a damaged file
        raise ModelConversionError(f"{path} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    initialized = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initialized]
    outputs = [o.name for o in graph.output]
    problem = _graph_problem(path, inputs, outputs)
    if problem is not None:
        raise UnsupportedModelError(f"{path}: {problem}")
    output = next((n for n in HIDDEN_OUTPUTS if n in outputs), POOLED_OUTPUT)
    dims = next(o for o in graph.output if o.name == output).type.tensor_type.shape.dim
    width = int(dims[-1].dim_value) if dims and dims[-1].dim_value > 0 else None
    data_files: list[str] = []
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in init.external_data if e.key == "location"), "")
            if location and location not in data_files:
                data_files.append(location)
    return GraphInfo(tuple(inputs), output, width, tuple(data_files))


def _read_graph_in_child(path: Path) -> GraphInfo:
    """`read_graph` in a short-lived child process: parsing imports onnx and reads the
    whole protobuf (a hub export without external data is hundreds of MB), and neither
    should stay in a long-running process. In this process when no child can start."""
    command = [sys.executable, "-m", __name__, str(path)]
    try:
        if not sys.executable:
            raise OSError("sys.executable is empty")
        child = subprocess.run(
            command,
            env=child_env(),
            cwd=path.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        logger.warning("reading %s in this process (cannot start a child: %s)", path, exc)
        return read_graph(path)
    message = last_line(child.stderr)
    if child.returncode == UNSUPPORTED_EXIT:
        raise UnsupportedModelError(message or f"{path} cannot be run")
    if child.returncode == CONVERSION_ERROR_EXIT:
        raise ModelConversionError(message or f"{path} is not a readable ONNX model")
    try:
        if child.returncode != 0:
            raise ValueError(f"exit status {child.returncode}: {message}")
        raw = json.loads(child.stdout)
        return GraphInfo(
            tuple(raw["inputs"]), raw["output"], raw["width"], tuple(raw["data_files"])
        )
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("reading %s in this process (the child failed: %s)", path, exc)
        return read_graph(path)


def _graph_info(path: Path, sha: str, cache_dir: Path) -> GraphInfo:
    """`read_graph`, remembered in the cache directory by the graph's sha256."""
    memo = cache_dir / f"export-{sha[:32]}-{EXPORT_VERSION}.json"
    try:
        raw = json.loads(memo.read_text(encoding="utf-8"))
        return GraphInfo(
            tuple(raw["inputs"]), raw["output"], raw["width"], tuple(raw["data_files"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    info = _read_graph_in_child(path)
    try:
        atomic_write_bytes(memo, json.dumps(asdict(info)).encode("utf-8"))
    except OSError as exc:  # a read-only cache costs a parse per process, nothing else
        logger.debug("cannot keep the graph description in %s: %s", memo, exc)
    return info


def ensure_export(path: Path, *, cache_dir: Path) -> tuple[ConvertedModel, GraphInfo]:
    """The export at ``path`` as a ready-to-load model, and what its graph takes and gives.

    Nothing is copied or converted: the fingerprint hashes the graph and its external
    data (a stat per file once hashed).
    """
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelConversionError(f"cannot create cache directory {cache_dir}: {exc}") from exc
    sha = cached_sha256(path, cache_dir)
    info = _graph_info(path, sha, cache_dir)
    data_parts = []
    for name in info.data_files:
        data = path.parent / name
        if not data.is_file():
            raise ModelNotFoundError(f"{path} keeps its weights in {data}, which is missing")
        data_parts.append(f"{name}={cached_sha256(data, cache_dir)}")
    fingerprint = (
        f"{EXPORT_VERSION}-{info.output};onnx={sha};data={','.join(data_parts) or 'none'}"
        f";onnxruntime={_ort_version()}"
    )
    data_path = (
        path.parent / info.data_files[0] if info.data_files else path.with_name(path.name + "_data")
    )
    converted = ConvertedModel(
        path=path,
        data_path=data_path,
        variant="fp32",
        weights_sha256=sha,
        converter_version=EXPORT_VERSION,
        fingerprint=fingerprint,
        converted=False,
        seconds=time.perf_counter() - start,
    )
    return converted, info


def fit_info(info: ModelInfo, graph: GraphInfo, path: Path) -> ModelInfo:
    """The model's facts with what the export's graph says: its width is the vectors'
    unless Dense modules follow (then it must be what the first one takes).

    A graph that pools itself while modules.json has Dense modules is refused: nothing
    tells whether its ``sentence_embedding`` already went through them.
    """
    if info.dense:
        if graph.pooled:
            raise UnsupportedModelError(
                f"{path} gives only {POOLED_OUTPUT} and modules.json adds Dense modules: "
                "lazyembed cannot tell whether the graph applied them already; use an export "
                f"that gives {HIDDEN_OUTPUTS[0]}"
            )
        first = info.dense[0]
        if graph.width and first.in_features != graph.width:
            raise ModelConversionError(
                f"{first.weights_path}: in_features {first.in_features} does not match the "
                f"width {graph.width} of {path}'s {graph.output}"
            )
        return info
    if graph.width and graph.width != info.dimension:
        return dataclasses.replace(info, dimension=graph.width)
    return info


@dataclass(frozen=True)
class PreparedTransformer:
    """A folder's transformer, ready to load: the ONNX file, how it was chosen, and (for
    an export) what its graph takes and gives."""

    converted: ConvertedModel
    choice: TransformerChoice
    graph: GraphInfo | None


def ensure_transformer(
    directory: Path, choice: TransformerChoice, *, variant: Variant, cache_dir: Path
) -> PreparedTransformer:
    """The chosen transformer as a ready-to-load ONNX file: a native conversion (in a
    child process, cached) or the export itself (hashed, its graph checked)."""
    if choice.export is None:
        converted = ensure_onnx_in_child(directory, variant=variant, cache_dir=cache_dir)
        return PreparedTransformer(converted, choice, None)
    if variant != "fp32":
        logger.warning(
            "variant=%s applies to converted models; %s runs as exported (a quantised "
            "export, if the folder has one, is chosen with onnx_file)",
            variant,
            choice.export,
        )
    converted, graph = ensure_export(choice.export, cache_dir=cache_dir)
    if graph.pooled:
        logger.info(
            "%s gives only %s: its vectors are used as they are (no pooling; Normalize "
            "still applies when modules.json has it)",
            choice.export,
            POOLED_OUTPUT,
        )
    return PreparedTransformer(converted, choice, graph)


def main(argv: Sequence[str] | None = None) -> int:
    """The child of `_read_graph_in_child`: the graph's description as JSON on stdout,
    or an error as one stderr line (exit status as ``convert_child``'s)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m lazyembed.models.onnx_export GRAPH.onnx", file=sys.stderr)
        return 2
    try:
        info = read_graph(Path(args[0]))
    except UnsupportedModelError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return UNSUPPORTED_EXIT
    except ModelConversionError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return CONVERSION_ERROR_EXIT
    print(json.dumps(asdict(info)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
