"""Bad input gets a typed error naming the problem and position, before any model work."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lazyembed.errors import InputTypeError, InvalidInputError, LazyEmbedError
from lazyembed.inputs import normalize_inputs


def test_single_string_is_marked_single() -> None:
    assert normalize_inputs("hello") == (["hello"], True)


def test_list_tuple_and_generator_are_accepted() -> None:
    assert normalize_inputs(["a", "b"]) == (["a", "b"], False)
    assert normalize_inputs(("a", "b")) == (["a", "b"], False)
    assert normalize_inputs(t for t in ["a", "b"]) == (["a", "b"], False)


def test_empty_and_whitespace_strings_are_valid() -> None:
    assert normalize_inputs(["", "  ", "\n\t"]) == (["", "  ", "\n\t"], False)


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (None, InputTypeError, "got None"),
        (42, InputTypeError, "got int"),
        (b"bytes", InputTypeError, "decode it first"),
        ({"a": 1}, InputTypeError, "got dict"),
        (["ok", None], InputTypeError, "input 1 is None"),
        (["ok", "ok", 3.5], InputTypeError, "input 2 is float"),
        (["ok", b"x"], InputTypeError, "input 1 is bytes"),
        (["ok", ["nested"]], InputTypeError, "input 1 is a nested list"),
        ([], InvalidInputError, "empty list"),
        (["fine", "bad \ud800 surrogate"], InvalidInputError, "input 1 is not valid Unicode"),
    ],
)
def test_bad_inputs_raise_typed_errors(value: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words) as info:
        normalize_inputs(value)
    assert isinstance(info.value, LazyEmbedError)


def test_type_errors_are_also_builtin_type_errors() -> None:
    with pytest.raises(TypeError):
        normalize_inputs(None)
    with pytest.raises(ValueError):
        normalize_inputs([])


def test_failing_generator_names_how_far_it_got() -> None:
    def texts() -> Iterator[str]:
        yield "one"
        yield "two"
        raise OSError("disk went away")

    with pytest.raises(
        InvalidInputError, match=r"raised OSError \(disk went away\) after 2"
    ) as info:
        normalize_inputs(texts())
    assert isinstance(info.value.__cause__, OSError)
