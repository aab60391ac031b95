"""``lazyembed models`` and ``lazyembed cache``: what the settings' model and cache hold."""

from __future__ import annotations

import argparse
import json

from lazyembed.cli.common import make_embedder, settings_for
from lazyembed.errors import CLIError
from lazyembed.models.catalogue import CATALOGUE
from lazyembed.models.resolve import locate


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
    embedder = make_embedder(settings_for(args))
    try:
        report = embedder.model_report()
    finally:
        embedder.close()
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _list_catalogue(*, as_json: bool) -> int:
    rows = []
    for entry in CATALOGUE:
        found = locate(entry.hub_id)
        rows.append(
            {
                "model": entry.hub_id,
                "aliases": list(entry.aliases),
                "architecture": entry.architecture,
                "dimension": entry.dimension,
                "pooling": entry.pooling,
                "max_seq_length": entry.max_seq_length,
                "prompts": dict(entry.prompts),
                "licence": entry.licence,
                "size_mb": entry.size_mb,
                "present": found.source if found is not None else None,
                "directory": str(found.directory) if found is not None else None,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<60} {'dim':>4} {'pool':<5} {'max':>4} {'MB':>5}  present")
    for row in rows:
        present = row["present"] or "-"
        print(
            f"{row['model']:<60} {row['dimension']:>4} {row['pooling']:<5} "
            f"{row['max_seq_length']:>4} {row['size_mb']:>5}  {present}"
        )
    print(
        "\nAny BERT or XLM-RoBERTa sentence-transformers folder works too, and any other "
        "architecture with its ONNX export (onnx/model.onnx): --model /path."
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
