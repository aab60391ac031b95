"""Several models under one budget (`Models`): LRU order, never mid-call, pins last,
a typed error when nothing can make room, and the budget unload events.

The models are copies of the real MiniLM folder under different names: real loads,
real measured memory, and each copy its own lifecycle.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import lazyembed
from helpers import model_copy, wait_until
from lazyembed import ModelBusyError, Models
from lazyembed.errors import ClosedError
from lazyembed.report import State


@pytest.fixture(scope="module")
def folders(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {name: str(model_copy(model_dir, root / name)) for name in ("a", "b", "c")}


@pytest.fixture
def models() -> Iterator[Models]:
    registry = Models(cache_memory_mb=0, idle_timeout="never", max_loaded_models=2)
    yield registry
    registry.close()


def unload_reasons(models: Models, folder: str) -> list[str]:
    events = models.get(folder).memory_report().lifecycle.events
    return [e["reason"] for e in events if e["kind"] == "unload"]


def test_the_least_recently_used_idle_model_makes_room(
    models: Models, folders: dict[str, str]
) -> None:
    a, b, c = folders["a"], folders["b"], folders["c"]
    models.embed("one", model=a)
    models.embed("two", model=b)
    models.embed("three", model=a)  # a is now the most recent
    models.embed("four", model=c)
    assert sorted(models.loaded()) == sorted([a, c])
    assert unload_reasons(models, b) == ["budget"]
    assert unload_reasons(models, a) == []


def test_every_model_gives_the_same_vectors_as_the_library(
    models: Models, folders: dict[str, str], shared_embedder: lazyembed.Embedder
) -> None:
    expected = shared_embedder.embed_numpy(["same vectors"])
    for folder in folders.values():  # three models through a budget of two
        assert np.allclose(models.embed_numpy(["same vectors"], model=folder), expected, atol=1e-6)


def test_a_model_with_a_call_in_flight_is_never_unloaded(
    models: Models, folders: dict[str, str]
) -> None:
    a, b, c = folders["a"], folders["b"], folders["c"]
    models.embed("x", model=a)
    models.embed("x", model=b)
    models.settings = dataclasses.replace(models.settings, load_timeout=0.2)
    with (
        models.get(a).lifecycle.acquire(),
        models.get(b).lifecycle.acquire(),
        pytest.raises(ModelBusyError) as info,  # both busy: nothing can make room
    ):
        models.embed("x", model=c)
    message = str(info.value)
    assert "1 call(s) in flight" in message and a in message and b in message
    assert "max_loaded_models=2" in message
    assert sorted(models.loaded()) == sorted([a, b])  # nothing was cut off mid-call


def test_a_waiting_load_proceeds_when_a_call_finishes(
    models: Models, folders: dict[str, str]
) -> None:
    a, b, c = folders["a"], folders["b"], folders["c"]
    models.embed("x", model=a)
    models.embed("x", model=b)
    errors: list[BaseException] = []

    def load_c() -> None:
        try:
            models.embed("x", model=c)
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    with models.get(b).lifecycle.acquire():
        with models.get(a).lifecycle.acquire():
            waiter = threading.Thread(target=load_c)
            waiter.start()
            assert wait_until(lambda: models._waiters > 0)  # both busy: c waits
        waiter.join(60)  # a's call ended: a is idle, so it makes room (b still runs)
        assert not errors and models.get(c).is_loaded
        assert unload_reasons(models, a) == ["budget"] and models.get(b).is_loaded


def test_two_loads_waiting_for_room_do_not_count_each_other(folders: dict[str, str]) -> None:
    # A load waiting for admission holds no memory: two of them waiting for one slot
    # must not each see the other as a holder (they would both wait out load_timeout).
    a, b, c = folders["a"], folders["b"], folders["c"]
    models = Models(cache_memory_mb=0, idle_timeout="never", max_loaded_models=1, load_timeout=20)
    errors: list[BaseException] = []

    def load(folder: str) -> None:
        try:
            models.embed("x", model=folder)
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    try:
        models.embed("x", model=a)
        with models.get(a).lifecycle.acquire():  # a busy: b and c both wait for its slot
            waiters = [threading.Thread(target=load, args=(f,)) for f in (b, c)]
            for waiter in waiters:
                waiter.start()
            assert wait_until(lambda: models._waiters == 2)
        for waiter in waiters:
            waiter.join(60)
        assert not errors, errors
        assert len(models.loaded()) == 1
        assert unload_reasons(models, a) == ["budget"]
    finally:
        models.close()


def test_pinned_models_go_last_and_the_event_says_so(folders: dict[str, str]) -> None:
    a, b, c = folders["a"], folders["b"], folders["c"]
    models = Models(cache_memory_mb=0, idle_timeout="never", max_loaded_models=2)
    try:
        models.embed("x", model=a, keep_alive=-1)  # pinned, and the least recent
        models.embed("x", model=b)
        models.embed("x", model=c)  # b goes, although a is older: a is pinned
        assert sorted(models.loaded()) == sorted([a, c])
        assert unload_reasons(models, b) == ["budget"]
        models.embed("x", model=c, keep_alive=-1)
        models.embed("x", model=b)  # everything pinned: the least recent pin goes
        assert sorted(models.loaded()) == sorted([b, c])
        events = models.get(a).memory_report().lifecycle.events
        unload = [e for e in events if e["kind"] == "unload"]
        assert unload[-1]["reason"] == "budget" and unload[-1]["note"] == "was pinned"
    finally:
        models.close()


def test_a_memory_budget_alternates_models_that_do_not_fit_together(
    folders: dict[str, str],
) -> None:
    a, b = folders["a"], folders["b"]
    models = Models(cache_memory_mb=0, idle_timeout="never", max_loaded_models=3)
    try:
        models.embed("x", model=a)
        size = models.footprint_mb(models.get(a))
        assert size >= models.get(a).memory_report().model_mb and size > 1
        # Room for one of these two (same size) but not both.
        models.settings = dataclasses.replace(models.settings, memory_budget_mb=size * 1.5)
        for _ in range(2):
            models.embed("y", model=b)
            models.embed("y", model=a)
        assert models.loaded() == [a]  # they alternated: each unloaded twice for the other
        assert unload_reasons(models, a) == unload_reasons(models, b) == ["budget", "budget"]
    finally:
        models.close()


def test_a_model_larger_than_the_whole_budget_fails_at_once(folders: dict[str, str]) -> None:
    models = Models(cache_memory_mb=0, memory_budget_mb=1, load_timeout=3600)
    try:
        with pytest.raises(ModelBusyError, match="more than memory_budget_mb=1 on its own"):
            models.embed("x", model=folders["a"])
        assert models.get(folders["a"]).memory_report().state is State.UNLOADED
    finally:
        models.close()


def test_module_functions_take_a_model(folders: dict[str, str]) -> None:
    vector = lazyembed.embed("module level", model=folders["a"])
    assert len(vector) == lazyembed.get_embedding_dimension(model=folders["a"])
    assert lazyembed.get_memory_usage(model=folders["a"])["model_loaded"] is True
    assert lazyembed.unload_model(folders["a"]) is True
    assert lazyembed.get_memory_usage(model=folders["a"])["model_loaded"] is False


def test_models_is_a_context_manager_and_refuses_work_once_closed(folders: dict[str, str]) -> None:
    with Models(cache_memory_mb=1, idle_timeout="never") as models:
        models.embed("kept", model=folders["a"])
        taken = models.get(folders["a"])
    assert models.loaded() == [] and not taken.is_loaded
    with pytest.raises(ClosedError):
        models.embed("kept", model=folders["a"])
    with pytest.raises(ClosedError):
        taken.embed("kept")  # an Embedder taken before the close: no silent reload
    models.close()  # idempotent


@pytest.mark.parametrize("share", ["never", "auto"])
def test_models_takes_its_default_model_as_a_keyword(
    folders: dict[str, str], share: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Models(model=...)`` names the default model (it once raised a TypeError while the
    share decision read the settings)."""
    monkeypatch.setenv("LAZYEMBED_SHARE", share)
    folder = next(iter(folders.values()))
    with Models(model=folder) as models:
        assert models.settings.model == folder
