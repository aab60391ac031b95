"""Benchmark corpus: real English prose that no one on this project wrote.

The text comes from CPython's ``pydoc_data.topics`` (the reference manual's topics that
``help()`` shows), which ships with every CPython, so the corpus needs no download and
no data file. It is deterministic for a given Python version (the topics change between
CPython releases, so record ``source_description()`` next to any figure).

Only the standard library is used: the benchmark runner imports this before it decides
which peer (torch or not) to load.
"""

from __future__ import annotations

import pydoc_data.topics
import re
import sys
from collections.abc import Iterator

MIN_WORDS = 5
MAX_WORDS = 60
# Every whitespace-separated word is at least one word piece for a BERT tokenizer, so a
# text of this many words is certainly longer than the model's 256-piece window.
LONG_MIN_WORDS = 300

_HEADING_RULE = re.compile(r"^\s*([*=\-~^\"'`#+])\1{2,}\s*$")
_TABLE_LINE = re.compile(r"^\s*[+|]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“(]?[A-Z])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Dr.", "Mr.")
# Interactive sessions and grammar rules; inline code in prose ("__init__()") stays.
_CODE_MARKERS = (">>>", "::=")
_WORD_PUNCTUATION = '"\u201c\u201d\u2018\u2019(),.;:!?*'  # straight and curly quotes


def topic_texts() -> dict[str, str]:
    """The topics keyed by name, in sorted order (dict order is not a guarantee)."""
    return {name: pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics)}


def source_description() -> str:
    """Where the text came from, for the benchmark's output."""
    version = ".".join(str(part) for part in sys.version_info[:3])
    return f"CPython {version} pydoc_data.topics ({len(pydoc_data.topics.topics)} topics)"


def _prose_paragraphs(text: str) -> Iterator[str]:
    """Yield the prose paragraphs of one topic, joined to single lines.

    Literal blocks (the paragraph after one ending in ``::``), grammar, tables, headings
    and interactive examples are skipped: they are code, not sentences.
    """
    literal_next = False
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        is_literal = literal_next
        literal_next = block.rstrip().endswith("::")
        if is_literal:
            # A literal block continues while it stays indented deeper than its intro.
            literal_next = True if lines[0].startswith("      ") else literal_next
            continue
        if any(_HEADING_RULE.match(line) or _TABLE_LINE.match(line) for line in lines):
            continue
        joined = " ".join(line.strip() for line in lines)
        # Bullets and footnote marks are layout, not words.
        joined = re.sub(r"^(\*|-|\[\d+\]|\d+\.)\s+", "", joined)
        yield re.sub(r"\s+", " ", joined)


def _split_sentences(paragraph: str) -> Iterator[str]:
    pieces = _SENTENCE_END.split(paragraph)
    buffer = ""
    for piece in pieces:
        buffer = f"{buffer} {piece}".strip() if buffer else piece
        if buffer.endswith(_ABBREVIATIONS):
            continue
        yield buffer
        buffer = ""
    if buffer:
        yield buffer


def _looks_like_prose(sentence: str) -> bool:
    if not sentence[0].isupper() or sentence[-1] not in ".!?:":
        return False
    if any(marker in sentence for marker in _CODE_MARKERS):
        return False
    words = sentence.split()
    alphabetic = sum(1 for word in words if word.strip(_WORD_PUNCTUATION).isalpha())
    return alphabetic >= 0.6 * len(words)


def all_sentences(min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """Every distinct prose sentence of min_words..max_words words, in topic order."""
    seen: set[str] = set()
    result: list[str] = []
    for text in topic_texts().values():
        for paragraph in _prose_paragraphs(text):
            for sentence in _split_sentences(paragraph):
                if not min_words <= len(sentence.split()) <= max_words:
                    continue
                if sentence in seen or not _looks_like_prose(sentence):
                    continue
                seen.add(sentence)
                result.append(sentence)
    return result


def sentences(n: int | None = 2000) -> list[str]:
    """n sentences spread evenly over the whole manual (all of them when n is None).

    Even spacing rather than the first n keeps every topic (and so the manual's mix of
    short and long sentences) represented.
    """
    pool = all_sentences()
    if n is None or n >= len(pool):
        if n is not None and n > len(pool):
            raise ValueError(f"asked for {n} sentences, the manual has {len(pool)}")
        return pool
    return [pool[(i * len(pool)) // n] for i in range(n)]


def long_documents(n: int | None = 100, min_words: int = LONG_MIN_WORDS) -> list[str]:
    """Documents of at least min_words words: runs of consecutive paragraphs of a topic.

    Each topic is cut at paragraph boundaries into chunks of about min_words words (a
    short tail joins the previous chunk), so the texts look like the pages a tool would
    embed and every one is longer than the model's 256-piece window. Spread evenly over
    the manual when there are more than n.
    """
    documents: list[str] = []
    for text in topic_texts().values():
        chunk: list[str] = []
        words = 0
        topic_documents: list[str] = []
        for paragraph in re.split(r"\n\s*\n", text):
            chunk.append(paragraph)
            words += len(paragraph.split())
            if words >= min_words:
                topic_documents.append("\n\n".join(chunk))
                chunk, words = [], 0
        if chunk:
            if topic_documents:
                topic_documents[-1] += "\n\n" + "\n\n".join(chunk)
            elif words >= min_words:
                topic_documents.append("\n\n".join(chunk))
        documents.extend(topic_documents)
    if n is None or n >= len(documents):
        return documents
    return [documents[(i * len(documents)) // n] for i in range(n)]


if __name__ == "__main__":
    pool = all_sentences()
    longs = long_documents(None)
    print(source_description())
    print(f"{len(pool)} sentences of {MIN_WORDS}-{MAX_WORDS} words, {len(longs)} long documents")
    for sentence in sentences(12):
        print(" -", sentence)
