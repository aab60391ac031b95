"""Every architecture given only as its ONNX export, the way the hub ships exports.

The manifest's ``onnx_export`` fixtures are tiny random-weight models whose folder has
no model.safetensors: our own ``torch.onnx.export`` of MPNet, Qwen3 (onnx-community's
decoder inputs), hub-form NomicBert, ModernBERT and EmbeddingGemma-style Gemma3
(tools/make_model_fixtures.py), and sentence-transformers' ONNX backend export through
optimum, with its O2 and int8 variants for one (``-st-onnx``,
tools/make_st_onnx_fixtures.py; same reference.json as their source fixture).
tests/test_model_fixtures.py checks each one's vectors and prompts; here: either padding
side, the variants ``onnx_file`` picks, and the folders' size.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazyembed import Embedder
from lazyembed.runtime import load_runtime

FIXTURES = Path(__file__).parent / "fixtures" / "models"
MANIFEST: list[dict[str, Any]] = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]
EXPORTS = [f["path"] for f in MANIFEST if "onnx_export" in f]
#: Architectures whose positions are rotary (relative), so that padding on either side
#: gives the same vectors; MPNet's are not (sentence-transformers' own MPNet gives other
#: vectors padded left), so it is checked on its tokenizer's side only.
ROTARY = ("qwen3", "nomic_bert", "modernbert", "gemma3_text")
EITHER_SIDE = [f["path"] for f in MANIFEST if "onnx_export" in f and f["architecture"] in ROTARY]
VARIANTS = [(f["path"], v) for f in MANIFEST for v in f.get("onnx_variants", [])]
MIN_COSINE = 0.99999
#: int8 weights: sentence-transformers' own quantized export is this close, not closer (a
#: bound that random or wrongly fed vectors miss by far).
MIN_COSINE_INT8 = 0.998
#: Checked-in fixture folders stay small.
MAX_FOLDER_BYTES = 660_000  # the largest: model.onnx, O2 and int8 side by side


def reference(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / "reference.json").read_text())
    return data


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got, want = got.astype(np.float64), want.astype(np.float64)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    return np.asarray((got * want).sum(axis=1) / np.maximum(norms, 1e-30))


def embedder(name: str, cache: Path, **settings: Any) -> Embedder:
    return Embedder(str(FIXTURES / name), model_cache_dir=str(cache), cache_memory_mb=0, **settings)


def test_every_2026_architecture_has_an_export_only_fixture() -> None:
    architectures = {f["architecture"] for f in MANIFEST if "onnx_export" in f}
    assert {"mpnet", "nomic_bert", "modernbert", "qwen3", "gemma3_text"} <= architectures
    for name in EXPORTS:
        assert not (FIXTURES / name / "model.safetensors").exists(), name
    assert any(name.endswith("-st-onnx") for name in EXPORTS)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", EITHER_SIDE)
def test_exports_give_the_reference_on_either_padding_side(
    name: str, side: str, tmp_path: Path
) -> None:
    """Padded on either side in one batch, each rotary export gives sentence-transformers'
    vectors (position_ids fed from the kept tokens, or positions that are relative)."""
    ref = reference(name)
    with embedder(name, tmp_path / "cache") as e:
        spec = dataclasses.replace(e.prepare().spec, padding_side=side)
    runtime = load_runtime(spec)
    try:
        got = runtime.encode(ref["texts"]).vectors
    finally:
        runtime.close()
    worst = cosines(got, np.asarray(ref["vectors"]))
    assert worst.min() >= MIN_COSINE, f"{name} {side}: text {worst.argmin()} {worst.min():.7f}"


@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_onnx_file_runs_the_named_variant(name: str, variant: str, tmp_path: Path) -> None:
    """``onnx_file`` runs sentence-transformers' O2 or int8 export instead of model.onnx:
    the O2 graph gives the reference, the int8 one vectors of its own, close to it."""
    ref = reference(name)
    want = np.asarray(ref["vectors"])
    with embedder(name, tmp_path / "cache") as default:
        plain = default.embed_numpy(ref["texts"])
    with embedder(name, tmp_path / "cache", onnx_file=variant) as e:
        got = e.embed_numpy(ref["texts"])
        report = e.model_report()
    assert Path(report["onnx_path"]).resolve() == (FIXTURES / name / variant).resolve()
    assert variant in report["onnx_exports"] and "onnx/model.onnx" in report["onnx_exports"]
    if "int8" in variant:
        assert not np.allclose(got, plain, atol=1e-4)  # the int8 graph ran, not model.onnx
        assert cosines(got, want).min() >= MIN_COSINE_INT8
    else:
        assert cosines(got, want).min() >= MIN_COSINE


@pytest.mark.parametrize("name", EXPORTS)
def test_export_fixtures_are_small(name: str) -> None:
    size = sum(p.stat().st_size for p in (FIXTURES / name).rglob("*") if p.is_file())
    assert size < MAX_FOLDER_BYTES, f"{name}: {size} bytes"
