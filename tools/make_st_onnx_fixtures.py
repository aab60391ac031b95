"""Write tests/fixtures/models/<name>-st-onnx: sentence-transformers' own ONNX export of fixtures.

The hub's ONNX files mostly come from sentence-transformers' ONNX backend
(``SentenceTransformer(folder, backend="onnx")``, which exports the transformer through
optimum, then ``export_optimized_onnx_model`` / ``export_dynamic_quantized_onnx_model`` for
the ``onnx/model_O2.onnx`` and ``onnx/model_qint8_avx2.onnx`` variants). This script makes
such exports of existing safetensors fixtures (tools/make_model_fixtures.py) so that tests
run lazyembed on graphs made the way the hub makes them, not only by our own
``torch.onnx.export`` calls.

It needs a venv of its own: optimum-onnx 0.1.0 requires transformers < 4.58, while the
reference venv of tools/make_model_fixtures.py has transformers 5 (whose config.json and
module layout the fixtures are written in; the work copy exported here is rewritten into
the forms transformers 4.57 and sentence-transformers' classic modules read):

    python3 -m venv /work/venv-optimum
    /work/venv-optimum/bin/pip install torch==2.13.0      # CPU build, first; never plain `torch`
    /work/venv-optimum/bin/pip install "transformers<4.58" sentence-transformers optimum-onnx onnx
    /work/venv-optimum/bin/python tools/make_st_onnx_fixtures.py
    .venv-ref/bin/python tools/make_model_fixtures.py --manifest-only   # the manifest entries

Each new folder holds the export(s) under onnx/ and no model.safetensors; every other file,
reference.json included, is copied from its source fixture. So the reference vectors are
the torch model's, computed by sentence-transformers in the reference venv; this script
computes none. It writes st_onnx.json (source, exports, versions), which the manifest
writer of tools/make_model_fixtures.py reads.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "models"
RECORD = "st_onnx.json"  # tools/make_model_fixtures.py's ST_ONNX_RECORD
#: Source fixtures; the first also gets the O2 and int8 (avx2) variants.
SOURCES = ("mpnet-mean-norm", "modernbert-cls", "qwen3-lasttoken-left", "gemma3-mean-dense")
VARIANTS_OF = "mpnet-mean-norm"
#: Folder size above which the script complains (fixtures are checked in).
MAX_FOLDER_BYTES = 660_000
#: Classic module types (what sentence-transformers of every version reads).
CLASSIC_MODULES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}
POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def config_for_transformers_4(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as transformers 4.57 reads it: rope_parameters back to the 4.x keys
    (set explicitly, defaults or not), no dtype (so the weights load in fp32)."""
    out = {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype", "rope_parameters")}
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    elif rope:
        full = rope["full_attention"]["rope_theta"]
        local = rope["sliding_attention"]["rope_theta"]
        if config["model_type"] == "modernbert":
            out.update(global_rope_theta=full, local_rope_theta=local)
        elif config["model_type"] == "gemma3_text":
            out.update(rope_theta=full, rope_local_base_freq=local)
        else:
            raise SystemExit(f"no transformers 4 rope keys known for {config['model_type']}")
    return out


def classic_work_copy(source: Path, work: Path, ref: dict[str, Any]) -> None:
    """A copy of the fixture that sentence-transformers' classic modules and transformers
    4.57 load into the same model: classic module types and configs, 4.x config.json, the
    tokenizer read from tokenizer.json as it is."""
    shutil.copytree(source, work)
    modules = read_json(work / "modules.json")
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        module["type"] = CLASSIC_MODULES[kind]
        folder = work / module["path"]
        if kind == "Pooling":
            flags = {flag: mode == ref["pooling"] for mode, flag in POOLING_FLAGS.items()}
            write_json(
                folder / "config.json",
                {
                    "word_embedding_dimension": ref["hidden_size"],
                    **flags,
                    "include_prompt": ref["include_prompt"],
                },
            )
        elif kind == "Dense":
            dense = read_json(folder / "config.json")
            keys = ("in_features", "out_features", "bias", "activation_function")
            write_json(folder / "config.json", {k: dense[k] for k in keys})
    write_json(work / "modules.json", modules)
    write_json(
        work / "sentence_bert_config.json",
        {"max_seq_length": ref["max_seq_length"], "do_lower_case": ref["do_lower_case"]},
    )
    st = read_json(work / "config_sentence_transformers.json")
    write_json(
        work / "config_sentence_transformers.json",
        {
            "prompts": st.get("prompts", {}),
            "default_prompt_name": st.get("default_prompt_name"),
            "similarity_fn_name": "cosine",
        },
    )
    write_json(work / "config.json", config_for_transformers_4(read_json(work / "config.json")))
    tokenizer = read_json(work / "tokenizer_config.json")
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(work / "tokenizer_config.json", tokenizer)


def min_cosine(got: np.ndarray, want: np.ndarray) -> float:
    got, want = got.astype(np.float64), want.astype(np.float64)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    return float(((got * want).sum(axis=1) / np.maximum(norms, 1e-30)).min())


def versions() -> dict[str, str]:
    names = (
        "sentence-transformers",
        "optimum-onnx",
        "optimum",
        "transformers",
        "torch",
        "onnx",
        "onnxruntime",
    )
    out = {name: importlib.metadata.version(name) for name in names}
    out["python"] = sys.version.split()[0]
    return out


def export(name: str, tmp: Path) -> None:
    """Export one source fixture into OUT/<name>-st-onnx (replacing an earlier one)."""
    from sentence_transformers import (
        SentenceTransformer,
        export_dynamic_quantized_onnx_model,
        export_optimized_onnx_model,
    )

    source = OUT / name
    ref = read_json(source / "reference.json")
    work = tmp / name
    classic_work_copy(source, work, ref)
    model = SentenceTransformer(str(work), backend="onnx", device="cpu")
    # A check only: the tests compare lazyembed's vectors of the export with reference.json.
    # (sentence-transformers cannot run every export it writes: for a decoder, optimum's
    # graph asks for position_ids, which its ONNX backend does not feed.)
    try:
        got = model.encode(ref["texts"], convert_to_numpy=True)
        check = (
            f"min cosine to the torch reference {min_cosine(got, np.asarray(ref['vectors'])):.7f}"
        )
    except Exception as error:  # the export is kept all the same
        check = f"cannot encode with it: {type(error).__name__}: {error}"
    print(f"{name}: sentence-transformers' ONNX backend: {check}", flush=True)
    saved = tmp / f"{name}-saved"
    model.save(str(saved))
    how = ['SentenceTransformer(folder, backend="onnx").save(out)']
    if name == VARIANTS_OF:
        export_optimized_onnx_model(model, "O2", str(saved))
        export_dynamic_quantized_onnx_model(model, "avx2", str(saved))
        how += [
            'export_optimized_onnx_model(model, "O2", out)',
            'export_dynamic_quantized_onnx_model(model, "avx2", out)',
        ]
    found = sorted(p for p in saved.rglob("*") if p.is_file() and ".onnx" in p.name)
    default = [p for p in found if p.name == "model.onnx"]
    if not default:
        raise SystemExit(f"{name}: no model.onnx among {[str(p) for p in found]}")
    target = OUT / f"{name}-st-onnx"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    (target / "model.safetensors").unlink()  # the transformer's (Dense modules keep theirs)
    (target / "onnx").mkdir()
    exports = []
    for path in default + [p for p in found if p not in default]:
        shutil.copyfile(path, target / "onnx" / path.name)
        exports.append(f"onnx/{path.name}")
    write_json(
        target / RECORD,
        {"source": name, "exports": exports, "how": how, "versions": versions()},
    )
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"{target.name}: {exports}, folder {size / 1000:.0f} kB", flush=True)
    if size > MAX_FOLDER_BYTES:
        print(f"{target.name}: larger than {MAX_FOLDER_BYTES / 1000:.0f} kB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SOURCES, help="source fixtures to export")
    args = parser.parse_args()
    failed = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or SOURCES:
            try:
                export(name, Path(tmp))
            except Exception as error:  # each source: report why, go on
                failed[name] = f"{type(error).__name__}: {error}"
                print(f"{name}: not exported: {failed[name]}", flush=True)
    if failed:
        raise SystemExit(f"not exported: {sorted(failed)}")


if __name__ == "__main__":
    main()
