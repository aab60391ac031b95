"""``lazyembed embed`` output: ``-o FILE`` is replaced only by a complete result (a
failure, Ctrl-C, SIGTERM or a full disk keeps the old FILE and leaves no temporary
file), stdout gets nothing before the first vector, an empty ``--file`` is an empty
result; ``--batch-size`` is checked as the setting is; error messages keep their lines;
``models --describe MODEL``."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from lazyembed import cli
from lazyembed.cli import embed as embed_command
from lazyembed.config import load_settings
from lazyembed.errors import ConfigError

OLD = '["old"]\n'


def lazyembed(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lazyembed", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **options,
    )


def leftovers(folder: Path) -> list[str]:
    """Temporary files of lazyembed in ``folder``."""
    return [p.name for p in folder.iterdir() if embed_command.TEMP_MARK in p.name]


# ---- -o FILE: replaced on success only ----------------------------------------------------


def test_a_failed_run_keeps_the_old_file_and_prints_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text(OLD)
    result = lazyembed("embed", "--model", "no-such-model", "-o", str(target), "hi")
    assert result.returncode == 1 and "no-such-model" in result.stderr
    assert target.read_text() == OLD
    assert leftovers(tmp_path) == []
    # On stdout: nothing before the first vector (it used to print "[" then the error).
    result = lazyembed("embed", "--model", "no-such-model", "hi")
    assert result.returncode == 1 and result.stdout == ""


@pytest.mark.parametrize("fmt", ["json", "jsonl", "npy"])
def test_a_successful_run_replaces_the_file_keeping_its_permissions(
    fmt: str, tmp_path: Path, shared_embedder: Any
) -> None:
    target = tmp_path / f"out.{fmt}"
    target.write_text(OLD)
    target.chmod(0o640)
    assert cli.main(["embed", "--format", fmt, "-o", str(target), "a", "b"]) == 0
    expected = shared_embedder.embed_numpy(["a", "b"])
    if fmt == "npy":
        got = np.load(target)
    elif fmt == "json":
        got = np.array(json.loads(target.read_text()), dtype=np.float32)
    else:
        got = np.array([json.loads(line) for line in target.read_text().splitlines()])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert target.stat().st_mode & 0o777 == 0o640
    assert leftovers(tmp_path) == []


def test_a_new_file_honours_the_umask(tmp_path: Path, shared_embedder: Any) -> None:
    target = tmp_path / "new.json"
    previous = os.umask(0o027)
    try:
        assert cli.main(["embed", "-o", str(target), "a"]) == 0
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o640
    assert len(json.loads(target.read_text())) == 1


def test_a_symlink_stays_a_symlink(tmp_path: Path, shared_embedder: Any) -> None:
    real = tmp_path / "real.json"
    real.write_text(OLD)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert cli.main(["embed", "-o", str(link), "a"]) == 0
    assert link.is_symlink() and len(json.loads(real.read_text())) == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_keeps_the_old_file(
    sig: signal.Signals, tmp_path: Path, shared_embedder: Any
) -> None:
    """A real Ctrl-C (or SIGTERM) once the output has started: the old file is kept and
    the temporary file removed."""
    big = tmp_path / "big.txt"
    big.write_text("".join(f"line number {i} of a long file\n" for i in range(50_000)))
    target = tmp_path / "out.json"
    target.write_text(OLD)
    process = subprocess.Popen(
        [sys.executable, "-m", "lazyembed", "embed", "-q", "-f", str(big), "-o", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not any((tmp_path / name).stat().st_size > 0 for name in leftovers(tmp_path)):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the output never started"
            time.sleep(0.05)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == (130 if sig == signal.SIGINT else 143), stderr
    assert "Traceback" not in stderr
    assert target.read_text() == OLD
    assert leftovers(tmp_path) == []


def test_a_full_device_is_a_clear_error() -> None:
    """FILE that is no regular file (here /dev/full) is written directly."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    result = lazyembed("embed", "-o", "/dev/full", "a")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "lazyembed: error: cannot write /dev/full: No space left on device"
    )


class FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, inner: IO[Any], room: int) -> None:
        self.inner = inner
        self.room = room

    def write(self, data: Any) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return int(self.inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "npy"])
def test_a_full_disk_keeps_the_old_file(
    fmt: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shared_embedder: Any,
) -> None:
    opened = embed_command._Output._open
    monkeypatch.setattr(
        embed_command._Output, "_open", lambda self, fd: FullDisk(opened(self, fd), 1000)
    )
    target = tmp_path / "out.data"
    target.write_text(OLD)
    assert cli.main(["embed", "--format", fmt, "-o", str(target), "a", "b", "c"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (
        f"lazyembed: error: cannot write {target}: No space left on device; "
        f"{target} was left as it was"
    )
    assert target.read_text() == OLD
    assert leftovers(tmp_path) == []


def test_a_file_size_limit_keeps_the_old_file(tmp_path: Path, shared_embedder: Any) -> None:
    """A real write error from the kernel (EFBIG under RLIMIT_FSIZE), in a subprocess."""
    target = tmp_path / "out.json"
    target.write_text(OLD)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = lazyembed(
        "embed", "-o", str(target), *[f"text {i}" for i in range(50)], preexec_fn=limit
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot write {target}: File too large" in result.stderr
    assert target.read_text() == OLD
    assert leftovers(tmp_path) == []


# ---- an empty --file ---------------------------------------------------------------------


def test_an_empty_file_is_an_empty_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_embedder: Any
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert cli.main(["embed", "-f", str(empty)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["embed", "-f", str(empty), "--format", "jsonl"]) == 0
    assert capsys.readouterr().out == ""
    target = tmp_path / "empty.npy"
    assert cli.main(["embed", "-f", str(empty), "--format", "npy", "-o", str(target)]) == 0
    array = np.load(target)
    assert array.shape == (0, 384) and array.dtype == np.float32


def test_no_texts_and_no_file_is_still_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["embed"]) == 1
    assert "nothing to embed" in capsys.readouterr().err


# ---- --batch-size: the setting's validation ----------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "100000", "many"])
def test_batch_size_is_checked_as_the_setting_is(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["embed", f"--batch-size={value}", "a"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    with pytest.raises(ConfigError) as setting_error:
        load_settings(encode_batch_size=value)
    why = str(setting_error.value).rsplit(": ", 1)[1]  # "must be between 1 and 4096"
    assert f"--batch-size={value!r}" in error and why in error


def test_batch_size_at_the_bounds_is_accepted(
    capsys: pytest.CaptureFixture[str], shared_embedder: Any
) -> None:
    for value in ("1", "4096"):
        assert cli.main(["embed", "--batch-size", value, "a", "b"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2


# ---- error messages and models --describe ------------------------------------------------


def test_multi_line_errors_keep_their_lines() -> None:
    result = lazyembed("embed", "x", "--model", "no-such-model")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.rstrip("\n").splitlines()
    assert lines[0] == "lazyembed: error: model 'no-such-model' not found. Looked in:"
    assert lines[1].startswith("  - Hugging Face hub cache: ")
    assert lines[2].startswith("  - download from the hub: ")
    assert lines[3].startswith("To fix, ")


def test_a_folder_missing_files_names_each_once(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = lazyembed("embed", "x", "--model", str(tmp_path))
    assert result.returncode == 1
    message = result.stderr.strip()
    assert message.count("model.safetensors") == 1 and message.count("tokenizer.json") == 1
    assert "config.json" not in message, message  # it is there


def test_models_describe_takes_the_model_as_its_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["models", "--describe", "all-MiniLM-L6-v2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dimension"] == 384 and "all-MiniLM-L6-v2" in json.dumps(report)
    # The old forms still work.
    assert cli.main(["models", "--describe", "--model", "all-MiniLM-L6-v2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == report
    assert cli.main(["models", "--model", "all-MiniLM-L6-v2", "--describe", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == report


def test_models_describe_and_model_naming_two_models_is_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["models", "--describe", "bge-small", "--model", "all-MiniLM-L6-v2"]) == 1
    assert "name different models" in capsys.readouterr().err
