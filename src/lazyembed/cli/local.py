"""``lazyembed models`` and ``lazyembed cache``: what the settings' model and cache hold."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lazyembed.cli.common import make_embedder, settings_for
from lazyembed.errors import CLIError
from lazyembed.models.catalogue import (
    CATALOGUE,
    DEFAULT_EXPORT,
    CatalogueEntry,
    RunStatus,
    find_entry,
    run_status,
)
from lazyembed.models.resolve import ResolvedModel, locate


def cmd_models(args: argparse.Namespace) -> int:
    """The catalogue with what is present here; with --model or --describe, one model."""
    if isinstance(args.describe, str):  # --describe MODEL
        if args.model is not None and args.model != args.describe:
            raise CLIError(
                f"--describe {args.describe} and --model {args.model} name different models"
            )
        args.model = args.describe
    elif args.model is None and not args.describe:
        return _list_catalogue(as_json=args.json)
    settings = settings_for(args)
    entry = find_entry(settings.model)
    found = locate(entry.hub_id) if entry is not None else None
    report: dict[str, Any]
    if entry is not None and found is None and not settings.allow_download:
        report = catalogue_row(entry, None)  # absent: what the catalogue knows, no error
    else:
        embedder = make_embedder(settings)
        try:
            report = embedder.model_report()
        finally:
            embedder.close()
        if entry is not None:
            status = _status(entry, Path(report["directory"]))
            report.update(runs=status.runs, runs_why=status.why)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _status(entry: CatalogueEntry, directory: Path | None) -> RunStatus:
    local = directory is not None and (directory / DEFAULT_EXPORT).is_file()
    return run_status(entry, local_export=local)


def catalogue_row(entry: CatalogueEntry, found: ResolvedModel | None) -> dict[str, Any]:
    """One catalogue model as ``lazyembed models --json`` lists it."""
    status = _status(entry, found.directory if found is not None else None)
    return {
        "model": entry.hub_id,
        "ollama": entry.ollama,
        "aliases": list(entry.aliases),
        "model_type": entry.model_type,
        "runs": status.runs,
        "runs_why": status.why,
        "dimension": entry.dimension,
        "pooling": entry.pooling,
        "normalize": entry.normalize,
        "max_seq_length": entry.max_seq_length,
        "prompts": dict(entry.prompts),
        "licence": entry.licence,
        "parameters_m": entry.parameters_m,
        "size_mb": entry.size_mb,
        "onnx_export": entry.onnx_export,
        "export_elsewhere": entry.export_elsewhere,
        "present": found.source if found is not None else None,
        "directory": str(found.directory) if found is not None else None,
    }


def _list_catalogue(*, as_json: bool) -> int:
    rows = [catalogue_row(entry, locate(entry.hub_id)) for entry in CATALOGUE]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(row["model"]) for row in rows)
    print(
        f"{'model':<{width}} {'dim':>4} {'pool':<9} {'max':>5} {'params':>6} {'MB':>5}  "
        f"{'runs':<7}  present"
    )
    for row in rows:
        params = f"{row['parameters_m']}M" if row["parameters_m"] else "-"
        print(
            f"{row['model']:<{width}} {row['dimension']:>4} {row['pooling']:<9} "
            f"{row['max_seq_length']:>5} {params:>6} {row['size_mb'] or '-':>5}  "
            f"{row['runs']:<7}  {row['present'] or '-'}"
        )
    print(
        "\nruns: native = converted by lazyembed; export = through its ONNX export "
        "(onnx/model.onnx); not yet: see --json (runs_why) or --describe MODEL."
    )
    print(
        "Any sentence-transformers folder of an architecture lazyembed converts works too, "
        "and any other architecture with its ONNX export (onnx/model.onnx): --model /path."
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Stats or clear of the embedding cache the settings describe (hook: Embedder.prepare)."""
    embedder = make_embedder(settings_for(args))
    try:
        cache = embedder.prepare().cache
        if cache is None:
            raise CLIError("the embedding cache is disabled in the settings")
        if args.action == "clear":
            cache.clear(all_fingerprints=True)
            print("cache cleared")
            return 0
        stats = cache.stats()
    finally:
        embedder.close()
    print(json.dumps(stats, indent=2, default=str))
    return 0
