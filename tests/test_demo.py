"""`make demo` shows honest figures: its warm call reaches the model (new sentences, not
cache hits), and its cache-hit line really is served by the cache."""

from __future__ import annotations

import io
from typing import Any

import pytest

from lazyembed import demo
from lazyembed.embedder import Embedder


class _Recorder(io.StringIO):
    """stdout that logs each printed line into the same event list as the model calls."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.events = events
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        self.events.extend(("line", line) for line in lines)
        return len(text)


def test_demo_warm_call_reaches_the_model_and_the_cache_hit_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[str, Any]] = []
    encode = Embedder._encode

    def spy(self: Embedder, items: list[str], *args: Any) -> Any:
        events.append(("model", list(items)))
        return encode(self, items, *args)

    monkeypatch.setattr(Embedder, "_encode", spy)
    monkeypatch.setattr("sys.stdout", _Recorder(events))
    assert demo.main() == 0

    def model_calls_before(prefix: str) -> list[str]:
        """The texts the model embedded between the previous printed line and this one."""
        at = next(i for i, (k, v) in enumerate(events) if k == "line" and v.startswith(prefix))
        texts: list[str] = []
        for kind, value in reversed(events[:at]):
            if kind == "line" and value.strip():  # (blank lines only space the output)
                break
            texts.extend(value)
        return texts

    warm = model_calls_before("warm call")
    assert warm and not set(warm) & set(demo.SENTENCES)  # new sentences, computed now
    assert model_calls_before("cache hit") == []  # the cache answered, not the model
    lines = [value for kind, value in events if kind == "line"]
    (warm_line,) = [line for line in lines if line.startswith("warm call")]
    (hit_line,) = [line for line in lines if line.startswith("cache hit")]
    assert " ms " in warm_line and f"{len(warm)} new sentences" in warm_line
    assert f"{len(demo.SENTENCES)} cache hits" in hit_line and "model not called" in hit_line
