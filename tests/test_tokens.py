"""Cut-then-tokenize (`encode_truncated`): the same tokens as the whole text, less read.

The tokenizer and the model are the real ones. Equality is checked against the plain
tokenizer on the whole text (which truncates only after tokenizing everything).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Encoding, Tokenizer

from lazyembed.models.tokenizer_class import TokenizerClass, tokenizer_class
from lazyembed.pooling import pool
from lazyembed.runtime import (
    OnnxRuntime,
    RuntimeSpec,
    char_budget,
    encode_truncated,
    load_tokenizer,
    padded_inputs,
)

LIMIT = 256

# Pieces a text is made of: ordinary words, words past WordPiece's 100-character limit
# (one [UNK] each), whitespace runs, CJK (one token per character), emoji (ZWJ
# sequences), combining marks (dropped or folded by the normaliser), control characters
# (dropped), punctuation runs.
_PIECES = [
    "embedding",
    "unbelievably",
    "Ünïcödé",
    "x" * 150,
    "supercalifragilisticexpialidocious" * 4,
    " " * 40,
    "\n\t \r\n",
    "\u3000" * 10,
    "日本語のテキスト",
    "中文字符",
    "👩‍👩‍👧‍👦",
    "🙂🙃",
    "e\u0301\u0302\u0303",
    "\u0301" * 30,
    "\x00\x01\x7f",
    "!!!???...",
    "1234567890",
    "a",
]


@pytest.fixture(scope="module")
def spec(shared_embedder: Any) -> RuntimeSpec:
    return cast(RuntimeSpec, shared_embedder.prepare().spec)


@pytest.fixture(scope="module")
def tokenizer(spec: RuntimeSpec) -> Tokenizer:
    return load_tokenizer(spec.tokenizer_path, spec.max_seq_length)


@pytest.fixture(scope="module")
def runtime(spec: RuntimeSpec, tokenizer: Tokenizer) -> Iterator[OnnxRuntime]:
    loaded = OnnxRuntime(spec, tokenizer)
    yield loaded
    loaded.close()


def _whole(tokenizer: Tokenizer, texts: Sequence[str]) -> list[Encoding]:
    return tokenizer.encode_batch(list(texts), add_special_tokens=True)


def _texts_near_the_limit(tokenizer: Tokenizer) -> list[str]:
    """Texts of exactly LIMIT - 3 … LIMIT + 3 tokens, cut by budgets around their ends."""
    return [" ".join(["word"] * (LIMIT - 2 + delta)) for delta in range(-3, 4)]


def _tricky_texts(tokenizer: Tokenizer) -> list[str]:
    rng = np.random.default_rng(11)
    texts = _texts_near_the_limit(tokenizer)
    budget = char_budget(tokenizer)
    for piece in _PIECES:  # each piece alone, repeated well past the budget
        texts.append((piece + " ") * (2 * budget // (len(piece) + 1) + 1))
        texts.append(piece * (2 * budget // len(piece) + 1))
    for _ in range(60):  # random mixtures, some far longer than the budget
        count = int(rng.integers(1, 2000))
        texts.append(" ".join(_PIECES[i] for i in rng.integers(0, len(_PIECES), count)))
    texts.append("word " * 20_000)  # a huge text
    texts.append(" " * 50_000 + "late words " * 300)  # the words come after a huge run
    texts.append("\u0301" * 60_000 + " then words")
    return texts


def test_cut_gives_the_whole_texts_ids(tokenizer: Tokenizer) -> None:
    texts = _tricky_texts(tokenizer)
    expected = [e.ids for e in _whole(tokenizer, texts)]
    assert [e.ids for e in encode_truncated(tokenizer, texts)] == expected
    for budget in (1, 7, 64, 300, 1000):  # small budgets force the growth path
        assert [e.ids for e in encode_truncated(tokenizer, texts, budget)] == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from(_PIECES) | st.text(min_size=1, max_size=12), max_size=400),
    separator=st.sampled_from(["", " ", "\n", "  "]),
    budget=st.integers(min_value=1, max_value=3000),
)
def test_cut_property(tokenizer: Tokenizer, pieces: list[str], separator: str, budget: int) -> None:
    text = separator.join(pieces)
    counting = load_tokenizer_once(tokenizer)
    for tok in (tokenizer, counting):
        assert encode_truncated(tok, [text], budget)[0].ids == _whole(tok, [text])[0].ids


_COUNTING: dict[int, Tokenizer] = {}


def load_tokenizer_once(tokenizer: Tokenizer) -> Tokenizer:
    """The counting tokenizer (one past the limit), reusing the model's tokenizer file."""
    if not _COUNTING:
        _COUNTING[0] = Tokenizer.from_str(tokenizer.to_str())
        _COUNTING[0].enable_truncation(max_length=LIMIT + 1)
    return _COUNTING[0]


def test_cut_gives_the_whole_texts_vectors(tokenizer: Tokenizer, runtime: OnnxRuntime) -> None:
    texts = _tricky_texts(tokenizer)[::4]
    got = runtime.encode(texts)
    whole = _whole(tokenizer, texts)
    assert got.token_counts == [len(e.ids) for e in whole]
    session = runtime._session
    assert session is not None
    for i, encoding in enumerate(whole):  # one text per run: the reference path
        ids, mask = padded_inputs([encoding], [0], len(encoding.ids))
        hidden = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})
        expected = pool(hidden[0], mask, ("mean",), normalize=True)[0]
        np.testing.assert_allclose(got.vectors[i], expected, atol=2e-6)


class _Recorder:
    """A real tokenizer that records the longest text it was handed."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.longest = 0
        self.truncation = tokenizer.truncation

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=with_added_tokens)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[Encoding]:
        self.longest = max([self.longest, *map(len, texts)])
        return self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
        self.longest = max(self.longest, len(text))
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)


def test_the_runtime_never_hands_the_tokenizer_a_whole_long_text(
    tokenizer: Tokenizer, spec: RuntimeSpec
) -> None:
    recorder = _Recorder(tokenizer)
    loaded = OnnxRuntime(spec, cast(Tokenizer, recorder))
    try:
        prose = "The quick brown fox jumps over the lazy dog. " * 2300  # ~100k characters
        result = loaded.encode([prose] * 4 + ["short"])
    finally:
        loaded.close()
    assert result.token_counts == [LIMIT] * 4 + [3]
    assert 0 < recorder.longest <= char_budget(cast(Tokenizer, recorder)) < len(prose) // 10


def test_counts_never_hand_the_tokenizer_a_whole_long_text(shared_embedder: Any) -> None:
    counting = shared_embedder._counting_tokenizer()
    recorder = _Recorder(counting)
    shared_embedder._tokenizer = recorder
    try:
        prose = "The quick brown fox jumps over the lazy dog. " * 2300
        spaced = " " * 30_000 + "words " * 10  # a cut of it holds no tokens: grows
        assert shared_embedder.count_tokens([prose, spaced, "hi"]) == [LIMIT, 12, 3]
        assert shared_embedder.count_tokens([prose, spaced], truncate=False) == [LIMIT + 1, 12]
        assert recorder.longest <= 2 * len(spaced)
        recorder.longest = 0
        shared_embedder.count_tokens([prose], truncate=False)
        assert 0 < recorder.longest <= char_budget(cast(Tokenizer, recorder)) < len(prose) // 10
    finally:
        shared_embedder._tokenizer = counting


def test_counts_at_the_limit(shared_embedder: Any) -> None:
    exact, one_more = " ".join(["word"] * (LIMIT - 2)), " ".join(["word"] * (LIMIT - 1))
    assert shared_embedder.count_tokens([exact, one_more]) == [LIMIT, LIMIT]
    assert shared_embedder.count_tokens([exact, one_more], truncate=False) == [LIMIT, LIMIT + 1]


def test_one_tokenizer_per_file_while_held(spec: RuntimeSpec, tmp_path: Any) -> None:
    first = load_tokenizer(spec.tokenizer_path, LIMIT)
    assert load_tokenizer(spec.tokenizer_path, LIMIT) is first
    assert load_tokenizer(spec.tokenizer_path, LIMIT + 1) is not first
    copy = tmp_path / "tokenizer.json"
    copy.write_text(Path(spec.tokenizer_path).read_text(encoding="utf-8"), encoding="utf-8")
    assert load_tokenizer(str(copy), LIMIT) is not first


def test_a_reload_reuses_the_embedders_tokenizer(shared_embedder: Any) -> None:
    kept = shared_embedder._counting_tokenizer()
    runtime = shared_embedder._load()
    try:
        assert runtime.tokenizer is kept
    finally:
        runtime.close()


# ---- the tokenizer class transformers would load (XLM-R's pre-tokenizer) -------------------

XLMR_FIXTURE = Path(__file__).parent / "fixtures" / "models" / "xlmr-classic-fast-class"


def _folder(tmp_path: Path, tokenizer_config: dict[str, Any] | None, **config: Any) -> Path:
    """A copy of an XLM-R fixture's tokenizer.json with the given configs beside it."""
    import json
    import shutil

    shutil.copyfile(XLMR_FIXTURE / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if tokenizer_config is not None:
        (tmp_path / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config), encoding="utf-8"
        )
    return tmp_path


XLMR = "XLMRobertaTokenizer"


@pytest.mark.parametrize(
    ("tokenizer_config", "config", "expected"),
    [
        (
            {"tokenizer_class": XLMR},
            {"model_type": "xlm-roberta"},
            TokenizerClass(XLMR, True, XLMR),
        ),
        ({"tokenizer_class": XLMR + "Fast"}, {}, TokenizerClass(XLMR, True, None)),
        (
            {"tokenizer_class": "TokenizersBackend"},
            {"model_type": "xlm-roberta"},
            TokenizerClass("TokenizersBackend", True, XLMR),
        ),
        (None, {"model_type": "xlm-roberta"}, TokenizerClass(XLMR, True, XLMR)),
        (
            {},
            {"model_type": "xlm-roberta", "tokenizer_class": "TokenizersBackend"},
            TokenizerClass("TokenizersBackend", True, XLMR),
        ),
        (
            {"add_prefix_space": False},
            {"model_type": "xlm-roberta"},
            TokenizerClass(XLMR, False, XLMR),
        ),
        ({}, {"model_type": "bert"}, TokenizerClass("BertTokenizer", True, "BertTokenizer")),
        (None, {}, TokenizerClass(None, True, None)),
    ],
)
def test_the_tokenizer_class_is_the_one_autotokenizer_picks(
    tmp_path: Path,
    tokenizer_config: dict[str, Any] | None,
    config: dict[str, Any],
    expected: TokenizerClass,
) -> None:
    assert tokenizer_class(_folder(tmp_path, tokenizer_config, **config)) == expected


@pytest.mark.parametrize(
    ("tokenizer_config", "pieces"),
    [
        ({"tokenizer_class": "XLMRobertaTokenizerFast"}, ["▁x"]),  # whitespace split first
        ({"tokenizer_class": "TokenizersBackend"}, ["▁x", "▁"]),  # tokenizer.json as is
        ({"tokenizer_class": "XLMRobertaTokenizer", "add_prefix_space": False}, ["x"]),
    ],
)
def test_xlmr_pre_tokenizer_follows_the_class(
    tmp_path: Path, tokenizer_config: dict[str, Any], pieces: list[str]
) -> None:
    folder = _folder(tmp_path, tokenizer_config, model_type="xlm-roberta")
    tokenizer = load_tokenizer(str(folder / "tokenizer.json"), LIMIT)
    assert tokenizer.pre_tokenizer is not None
    got = [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(" x ")]
    assert got == pieces


def test_padded_inputs_pad_on_the_left_when_asked() -> None:
    class Encoding:
        def __init__(self, ids: list[int]) -> None:
            self.ids = ids

    encodings = [Encoding([5, 6]), Encoding([7, 8, 9])]
    ids, mask = padded_inputs(encodings, [0, 1], 3, left=True)
    assert ids.tolist() == [[0, 5, 6], [7, 8, 9]] and mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    ids, mask = padded_inputs(encodings, [0, 1], 3)
    assert ids.tolist() == [[5, 6, 0], [7, 8, 9]] and mask.tolist() == [[1, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize(
    "mode", ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
)
@pytest.mark.parametrize("prompt", [0, 1])
def test_pooling_gives_the_same_vectors_for_either_padding_side(mode: str, prompt: int) -> None:
    """Positions (weighted mean, an excluded prompt) count from each text's first token."""
    rng = np.random.default_rng(3)
    lengths = [2, 4, 3]
    width, dim = 4, 5
    tokens = [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]
    right = np.zeros((3, width, dim), dtype=np.float32)
    left = np.zeros((3, width, dim), dtype=np.float32)
    right_mask = np.zeros((3, width), dtype=np.int64)
    left_mask = np.zeros((3, width), dtype=np.int64)
    for row, values in enumerate(tokens):
        n = len(values)
        right[row, :n], right_mask[row, :n] = values, 1
        left[row, width - n :], left_mask[row, width - n :] = values, 1
        left[row, : width - n] = 100.0  # padding's hidden states must not count
        right[row, n:] = 100.0
    prompts = np.full(3, prompt) if prompt else None
    a = pool(right, right_mask, [mode], normalize=False, prompt_lengths=prompts)
    b = pool(left, left_mask, [mode], normalize=False, prompt_lengths=prompts)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
