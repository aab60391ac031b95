"""``lazyembed models`` and ``lazyembed cache``: what the settings' model and cache hold."""

from __future__ import annotations

import argparse
import json

from lazyembed.cli.common import make_embedder, settings_for
from lazyembed.errors import CLIError


def cmd_models(args: argparse.Namespace) -> int:
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
