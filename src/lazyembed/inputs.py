"""Check what callers pass to embed() before any of it reaches the tokenizer or ONNX Runtime.

A bad item gets a typed error naming its position; nothing half-valid runs. Empty and
whitespace-only strings are valid: like sentence-transformers they embed as the bare
[CLS] [SEP] sequence, a real (and always the same) unit vector.
"""

from __future__ import annotations

from collections.abc import Iterable

from lazyembed.errors import InputTypeError, InvalidInputError


def _describe(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _check_item(item: object, position: int) -> str:
    if type(item) is str:  # the common case first: one type check, no isinstance walk
        text = item
    elif isinstance(item, str):
        text = str(item)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        raise InputTypeError(
            f"input {position} is {_describe(item)}, not str: decode it first "
            "(e.g. data.decode('utf-8'))"
        )
    elif isinstance(item, (list, tuple)):
        raise InputTypeError(
            f"input {position} is a nested {_describe(item)}; pass a flat list of str"
        )
    else:
        raise InputTypeError(f"input {position} is {_describe(item)}, not str")
    if text.isascii():  # O(1) for CPython's compact strings: the usual fast exit
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"input {position} is not valid Unicode text (lone surrogate at character "
            f"{exc.start}); fix its decoding (e.g. errors='replace')"
        ) from exc
    return text


def check_text(text: str) -> str:
    """One str argument, validated like an item of a list (lone surrogates rejected)."""
    return _check_item(text, 0)


def normalize_inputs(texts: object) -> tuple[list[str], bool]:
    """Return (list of str, was_single). Raises InputTypeError / InvalidInputError."""
    if isinstance(texts, str):
        return [_check_item(texts, 0)], True
    if texts is None:
        raise InputTypeError("embed() needs a str or a list of str, got None")
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise InputTypeError(
            f"embed() needs str, got {_describe(texts)}: decode it first "
            "(e.g. data.decode('utf-8'))"
        )
    if isinstance(texts, dict) or not isinstance(texts, Iterable):
        raise InputTypeError(f"embed() needs a str or a list of str, got {_describe(texts)}")
    result: list[str] = []
    iterator = iter(texts)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            break
        except Exception as exc:
            raise InvalidInputError(
                f"the input iterable raised {type(exc).__name__} ({exc}) "
                f"after {len(result)} item(s)"
            ) from exc
        result.append(_check_item(item, len(result)))
    if not result:
        raise InvalidInputError("embed() got an empty list: nothing to embed")
    return result, False
