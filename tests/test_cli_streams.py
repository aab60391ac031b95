"""Closed standard streams, undecodable input files and broken config files each end
the CLI with one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazyembed import cli


def run_shell(script: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``python -m lazyembed.cli ARGS`` through sh so redirections like ``<&-`` apply."""
    return subprocess.run(
        ["sh", "-c", f'"$0" -m lazyembed.cli "$@" {script}', sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("lazyembed: error: ")
    return lines[0]


def test_closed_stdin_is_one_line() -> None:
    result = run_shell("<&-", "embed", "--file", "-")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "stdin is closed" in line and "AttributeError" not in line


def test_closed_stdout_is_one_line() -> None:
    result = run_shell(">&-", "embed", "hello")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "stdout is closed" in line and "-o FILE" in line and "AttributeError" not in line


def test_closed_stdout_fails_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lazyembed.embedder import Embedder

    def must_not_run(self: Embedder) -> None:
        raise AssertionError("the model was prepared although nothing can be written")

    monkeypatch.setattr(Embedder, "prepare", must_not_run)
    monkeypatch.setattr(sys, "stdout", None)
    for argv in (["embed", "x"], ["embed", "x", "--format", "npy"], ["models"]):
        assert cli.main(argv) == 1
        assert "stdout is closed" in one_error_line(capsys.readouterr().err)


def test_closed_stdout_is_fine_with_an_output_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_embedder: Any
) -> None:
    monkeypatch.setattr(sys, "stdout", None)
    target = tmp_path / "v.jsonl"
    assert cli.main(["embed", "x", "--format", "jsonl", "-o", str(target)]) == 0
    got = np.array([json.loads(target.read_text())], dtype=np.float32)
    assert np.allclose(got, shared_embedder.embed_numpy(["x"]), atol=1e-6)


def test_closed_stdin_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    assert cli.main(["embed", "--file", "-"]) == 1
    assert "stdin is closed" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "line 1"),
        ("first line\nsecond line\n".encode("utf-16"), "line 1"),  # with its BOM
        ("ok line\nzweite Zeile\n".encode("utf-16-le"), "line 1"),  # no BOM: NUL bytes
        (b"good line\nbad \xff line\n", "line 2"),
    ],
    ids=["binary", "utf-16", "utf-16-no-bom", "latin-1-byte"],
)
def test_input_file_that_is_not_utf8_is_one_clear_line(
    content: bytes, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(content)
    assert cli.main(["embed", "--file", str(source)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(source) in line and where in line and "expected UTF-8 text" in line
    assert "UnicodeDecodeError" not in line


def test_stdin_that_is_not_utf8_is_one_clear_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lazyembed.cli", "embed", "--file", "-"],
        input=b"caf\xe9\n",
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 1
    line = one_error_line(result.stderr.decode())
    assert "stdin" in line and "line 1" in line and "expected UTF-8 text" in line


def test_utf8_with_a_bom_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_embedder: Any
) -> None:
    texts = ["\u00e9t\u00e9 ensoleill\u00e9", "second line"]
    source = tmp_path / "bom.txt"
    source.write_bytes(("\n".join(texts) + "\n").encode("utf-8-sig"))
    assert cli.main(["embed", "--file", str(source), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert np.allclose(np.array(rows, dtype=np.float32), shared_embedder.embed_numpy(texts))


@pytest.mark.parametrize("argv", [["embed", "x"], ["status"]])
@pytest.mark.parametrize("problem", ["utf-16 file", "directory", "missing"])
def test_config_problems_are_one_line(problem: str, argv: list[str], tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    if problem == "utf-16 file":
        config.write_text('model = "all-MiniLM-L6-v2"\n', encoding="utf-16")
        expected = "is not UTF-8 text"
    elif problem == "directory":
        config.mkdir()
        expected = "is a directory"
    else:
        expected = "no such config file"
    env = {**os.environ, "LAZYEMBED_CONFIG": str(config)}
    result = subprocess.run(
        [sys.executable, "-m", "lazyembed.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert str(config) in line and expected in line
