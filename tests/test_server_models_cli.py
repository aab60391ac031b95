"""``lazyembed serve`` builds one `Models` registry from the flags or the settings.

uvicorn's ``run`` is replaced by a recorder, so each command stops where the server would
start serving; the app it would serve is inspected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from lazyembed import cli
from lazyembed.registry import Models
from lazyembed.server.context import ServerContext
from server_helpers import SERVED, free_port, uvicorn_runs_recorded

PORT = str(free_port())
FIXTURE = str(Path(__file__).parent / "fixtures" / "models" / "bert-mean-norm")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ServerContext]]:
    """The server context of every app `lazyembed serve` would have served."""
    contexts: list[ServerContext] = []

    def record(config: uvicorn.Config) -> None:
        app = config.app
        assert isinstance(app, FastAPI)
        contexts.append(app.state.server)

    try:
        with uvicorn_runs_recorded(monkeypatch, record):
            yield contexts
    finally:
        for srv in contexts:
            assert isinstance(srv.source, Models)
            srv.source.close()


def test_repeated_model_flags_serve_several_models(served: list[ServerContext]) -> None:
    argv = ["serve", "--port", PORT, "--model", "all-minilm", "--model", FIXTURE]
    flags = ["--any-model", "--memory-budget-mb", "900", "--max-loaded-models", "1"]
    assert cli.main([*argv, *flags, "--load-timeout", "2m"]) == 0
    (srv,) = served
    assert isinstance(srv.source, Models)
    settings = srv.source.settings
    assert (settings.memory_budget_mb, settings.max_loaded_models) == (900.0, 1)
    assert settings.load_timeout == 120.0
    assert srv.models.configured == [SERVED, FIXTURE]
    assert srv.models.default.name == SERVED and srv.models.any_model
    assert not srv.source.loaded()  # prepared (converted) at start, loaded on first use


def test_the_settings_give_the_same_models(
    served: list[ServerContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAZYEMBED_MODEL", FIXTURE)
    monkeypatch.setenv("LAZYEMBED_SERVE_MODELS", "all-minilm")
    monkeypatch.setenv("LAZYEMBED_MEMORY_BUDGET_MB", "700")
    assert cli.main(["serve", "--port", PORT]) == 0
    assert cli.main(["serve", "--port", PORT, "--memory-budget-mb", "unlimited"]) == 0
    assert cli.main(["serve", "--port", PORT, "--model", "all-minilm"]) == 0  # flags name all
    first, unlimited, named = served
    assert first.models.configured == [FIXTURE, SERVED] and not first.models.any_model
    assert first.models.default.name == FIXTURE
    assert isinstance(first.source, Models) and first.source.settings.memory_budget_mb == 700
    assert (
        isinstance(unlimited.source, Models) and unlimited.source.settings.memory_budget_mb is None
    )
    assert named.models.configured == [SERVED]


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-loaded-models", "0"), ("--memory-budget-mb", "-5"), ("--load-timeout", "never")],
)
def test_bad_budget_flags_are_refused_by_name(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", flag, value])
    assert exited.value.code == 2
    assert (
        f"argument {flag}: invalid {flag}={value!r} from the command line"
        in capsys.readouterr().err
    )


def test_a_missing_model_fails_at_start(
    served: list[ServerContext], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (
        cli.main(["serve", "--port", PORT, "--model", "all-minilm", "--model", str(tmp_path)]) == 1
    )
    assert str(tmp_path) in capsys.readouterr().err
    assert served == []
