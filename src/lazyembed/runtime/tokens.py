"""Tokenisation that never reads more of a text than its kept tokens need.

A tokenizer truncates only after it has tokenized the whole text: a 100k-character text
becomes ~25k tokens (ids, offsets, strings, overflow pieces) to keep 256 of them.
`encode_truncated` cuts each text to a character budget first, and checks that the cut
could not have changed the kept tokens; when it could, that text is tokenized again with
twice the budget (up to the whole text). The runtime and the Embedder's token counts
(`token_counts`) both go through it, with one shared tokenizer, so a vector and its usage
count always see the same tokens.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyembed.models.tokenizer_class import tokenizer_class

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

_BUDGETS: weakref.WeakKeyDictionary[Tokenizer, int] = weakref.WeakKeyDictionary()
_LOADED: weakref.WeakValueDictionary[tuple[Any, ...], Tokenizer] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()  # guards _BUDGETS and _LOADED

#: The classes whose pre-tokenizer transformers 5 builds itself, whatever tokenizer.json
#: says: a whitespace split, then Metaspace (models/xlm_roberta/tokenization_xlm_roberta.py).
_WORDS_FIRST_CLASSES = frozenset({"XLMRobertaTokenizer"})


def load_tokenizer(path: str, max_seq_length: int) -> Tokenizer:
    """The fast tokenizer, truncating where sentence-transformers does and never padding.

    tokenizer.json of all-MiniLM-L6-v2 says truncate and pad to 128; sentence-transformers
    overrides that with max_seq_length (256) and pads per batch, so we do the same. The
    pre-tokenizer follows the tokenizer class of the folder around ``path``
    (`lazyembed.models.tokenizer_class`), as transformers builds it for
    sentence-transformers. While anyone holds it, the same file (unchanged) and length
    give the same object, never mutated after this: the Embedder keeps one for counting,
    and a model (re)load then takes it instead of parsing tokenizer.json again.
    """
    from tokenizers import Tokenizer

    stat = os.stat(path)
    named = tokenizer_class(Path(path).parent)
    key = (
        os.path.abspath(path),
        max_seq_length,
        stat.st_mtime_ns,
        stat.st_size,
        named.name,
        named.add_prefix_space,
    )
    with _LOCK:
        loaded = _LOADED.get(key)
    if loaded is not None:
        return loaded
    tokenizer = Tokenizer.from_file(path)
    _follow_transformers(tokenizer, named.name, named.add_prefix_space)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_seq_length)
    with _LOCK:
        return _LOADED.setdefault(key, tokenizer)


def _follow_transformers(tokenizer: Tokenizer, name: str | None, add_prefix_space: bool) -> None:
    """Pre-tokenize as transformers 5 does for the folder's tokenizer class.

    XLMRobertaTokenizer(Fast) rebuilds the pre-tokenizer from its vocabulary: a whitespace
    split, then Metaspace ("always" prepends "▁", or "never" with ``add_prefix_space:
    false``), whatever tokenizer.json says; hub XLM-R files carry a bare Metaspace, which
    alone turns whitespace-only text and a leading or trailing space into a lone "▁".
    Any other class (TokenizersBackend, which transformers 5 writes for a tokenizer it
    loaded that way) takes tokenizer.json as it is, so it is left alone here. (The class
    also keeps only the Precompiled part of the file's normaliser; after a whitespace
    split, the hub's other part, collapsing runs of spaces, changes no token.)
    """
    from tokenizers import pre_tokenizers
    from tokenizers.models import Unigram

    if name in _WORDS_FIRST_CLASSES and isinstance(tokenizer.model, Unigram):
        scheme = "always" if add_prefix_space else "never"
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme),
            ]
        )


def truncation_length(tokenizer: Tokenizer) -> int | None:
    """The number of tokens the tokenizer keeps (None: it does not truncate)."""
    truncation = tokenizer.truncation
    return None if truncation is None else int(truncation["max_length"])


def char_budget(tokenizer: Tokenizer) -> int:
    """Characters that almost always hold the kept tokens: (kept + 1) x (longest piece + 1).

    The longest vocabulary entry bounds the characters of one piece (plus one for the
    space or punctuation between words). Pieces can cover more (an unknown word, text
    the normaliser drops), which `encode_truncated` detects and handles by growing.
    Computed once per tokenizer (reading the vocabulary is not free).
    """
    budget = _BUDGETS.get(tokenizer)
    if budget is None:
        kept = truncation_length(tokenizer)
        if kept is None:
            return 0
        longest = max(map(len, tokenizer.get_vocab(with_added_tokens=True)), default=1)
        budget = (kept + 1) * (longest + 1)
        with _LOCK:
            _BUDGETS[tokenizer] = budget
    return budget


def _cut_is_exact(encoding: Encoding) -> bool:
    """True if the kept tokens all come from words before the cut text's last word.

    Only the last word of a cut text can differ from the whole text (it may be cut in
    the middle), and only if the text overflowed are there tokens past the kept ones.
    """
    overflow = encoding.overflowing
    if not overflow:
        return False
    last_word = max((w for w in overflow[-1].word_ids if w is not None), default=None)
    kept_word = max((w for w in encoding.word_ids if w is not None), default=None)
    return last_word is not None and kept_word is not None and kept_word < last_word


def encode_truncated(
    tokenizer: Tokenizer, texts: Sequence[str], budget: int | None = None
) -> list[Encoding]:
    """`tokenizer.encode_batch(texts)` with special tokens, reading at most what is kept.

    Gives exactly the encodings of the whole texts (same ids, same truncation), but hands
    the tokenizer each text cut to `budget` characters (default `char_budget`), doubled
    for the texts whose cut might have changed the kept tokens.
    """
    size = char_budget(tokenizer) if budget is None else budget
    if size <= 0:  # a tokenizer that does not truncate reads every text whole anyway
        return tokenizer.encode_batch(list(texts), add_special_tokens=True)
    out: list[Encoding | None] = [None] * len(texts)
    pending = list(range(len(texts)))
    while pending:
        cut = [texts[i][:size] for i in pending]
        if len(cut) == 1:  # the commonest call: no hand-off to the tokenizer's thread pool
            encodings = [tokenizer.encode(cut[0], add_special_tokens=True)]
        else:
            encodings = tokenizer.encode_batch(cut, add_special_tokens=True)
        retry: list[int] = []
        for index, encoding in zip(pending, encodings, strict=True):
            if len(texts[index]) <= size or _cut_is_exact(encoding):
                out[index] = encoding
            else:
                retry.append(index)
        pending = retry
        size *= 2
    return out  # type: ignore[return-value]  # every slot was filled above


def token_counts(
    tokenizer: Tokenizer, texts: Sequence[str], *, past_limit: bool = False
) -> list[int]:
    """Real token counts with special tokens, after truncation at the tokenizer's limit.

    With ``past_limit``, a text longer than the limit counts limit + 1, so "too long" is
    visible from the same tokenisation (its encoding overflowed).
    """
    encodings = encode_truncated(tokenizer, texts)
    if not past_limit:
        return [len(e.ids) for e in encodings]
    return [len(e.ids) + 1 if e.overflowing else len(e.ids) for e in encodings]
