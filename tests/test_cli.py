"""The ``lazyembed`` command: output equals the library's, errors are one line, and
``serve`` drains in-flight requests and exits 0 on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lazyembed import cli

TEXTS = ["The cat sits on the mat.", "A quick brown fox."]


def wait_until_healthy(process: subprocess.Popen[str], url: str, limit: float = 120) -> None:
    """Poll /healthz until the server answers; fail with its stderr if it exits first."""
    deadline = time.monotonic() + limit
    while True:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "server did not come up"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    "argv",
    [[], ["embed"], ["serve"], ["status"], ["unload"], ["models"], ["cache"]],
)
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lazyembed" in capsys.readouterr().out


def test_embed_texts_as_json_equal_the_library(
    capsys: pytest.CaptureFixture[str], shared_embedder: Any
) -> None:
    assert cli.main(["embed", *TEXTS]) == 0
    got = np.array(json.loads(capsys.readouterr().out), dtype=np.float32)
    assert np.allclose(got, shared_embedder.embed_numpy(TEXTS), atol=1e-6)


def test_embed_file_as_jsonl_and_npy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_embedder: Any
) -> None:
    lines = [f"line {i} of the file" for i in range(7)] + [""]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = shared_embedder.embed_numpy(lines)
    assert cli.main(["embed", "--file", str(source), "--format", "jsonl", "--batch-size", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert np.allclose(np.array(rows, dtype=np.float32), expected, atol=1e-6)
    target = tmp_path / "vectors.npy"
    assert cli.main(["embed", "-f", str(source), "--format", "npy", "-o", str(target)]) == 0
    np.testing.assert_allclose(np.load(target), expected, atol=1e-6)


def test_npy_refuses_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["embed", "x", "--format", "npy"]) == 1
    assert "-o FILE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "--file", "/nonexistent/texts.txt"],
        ["embed"],
        ["status", "--url", "http://127.0.0.1:9"],
        ["unload", "--url", "http://127.0.0.1:9"],
        ["embed", "x", "--model", "/nonexistent/model-dir"],
    ],
)
def test_errors_are_one_line_without_traceback(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lazyembed.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lazyembed: error: ")


def test_debug_shows_the_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lazyembed.cli", "--debug", "embed", "-f", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.fixture
def only_bert_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A converter that knows BERT and XLM-R only: every other status is then shown."""
    from lazyembed.models import architectures

    bert = {k: v for k, v in architectures._BUILDERS.items() if k in architectures.BERT_TYPES}
    monkeypatch.setattr(architectures, "_BUILDERS", bert)


def test_models_lists_the_catalogue_and_marks_what_is_here(
    capsys: pytest.CaptureFixture[str], only_bert_converted: None
) -> None:
    assert cli.main(["models", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert len(rows) >= 11 and "BAAI/bge-small-en-v1.5" in rows
    assert rows["sentence-transformers/all-MiniLM-L6-v2"]["present"] == "package"
    assert rows["intfloat/multilingual-e5-small"]["model_type"] == "xlm-roberta"
    assert rows["sentence-transformers/all-MiniLM-L6-v2"]["runs"] == "native"
    gemma = rows["google/embeddinggemma-300m"]
    assert gemma["ollama"] == "embeddinggemma" and gemma["present"] is None
    assert gemma["runs"] == "not yet" and "onnx-community" in gemma["runs_why"]
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if "/" in line[:40]}
    assert lines["sentence-transformers/all-MiniLM-L6-v2"][-2:] == ["native", "package"]
    assert lines["nomic-ai/nomic-embed-text-v1.5"][-2:] == ["export", "-"]
    assert lines["Qwen/Qwen3-Embedding-0.6B"][-3:] == ["not", "yet", "-"]


def test_models_marks_a_local_export_as_what_runs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    only_bert_converted: None,
) -> None:
    """A catalogue model in the hub cache with its export runs that export, whatever the
    catalogue records of its hub repo."""
    snapshot = tmp_path / "models--Qwen--Qwen3-Embedding-0.6B" / "snapshots" / "abc"
    fixture = Path(__file__).parent / "fixtures" / "models" / "qwen3-onnx-lasttoken-left"
    shutil.copytree(fixture, snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert cli.main(["models", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    qwen = rows["Qwen/Qwen3-Embedding-0.6B"]
    assert qwen["present"] == "hub-cache" and qwen["directory"] == str(snapshot)
    assert qwen["runs"] == "export" and "local folder's onnx/model.onnx" in qwen["runs_why"]
    assert rows["google/embeddinggemma-300m"]["runs"] == "not yet"  # absent: as published


def test_models_describe_says_how_a_model_runs_and_why(
    capsys: pytest.CaptureFixture[str], only_bert_converted: None
) -> None:
    # Absent here and no download allowed: the catalogue's facts, not an error.
    assert cli.main(["models", "--describe", "qwen3-embedding:0.6b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "Qwen/Qwen3-Embedding-0.6B" and report["present"] is None
    assert report["runs"] == "not yet" and "does not convert qwen3" in report["runs_why"]
    assert report["pooling"] == "lasttoken" and report["dimension"] == 1024
    assert cli.main(["models", "--describe", "nomic-embed-text"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^runs +export$", out, re.M), out
    assert re.search(r"^prompts .*'query': 'search_query: '", out, re.M), out


def test_models_reports_source_path_size_and_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "--describe", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert Path(report["onnx_path"]).is_file()
    assert report["onnx_mb"] > 1 and len(report["weights_sha256"]) == 64
    assert report["source"] and report["dimension"] == 384
    # The CLI's default idle timeout: a model that reloads, so auto pre-packs when busy.
    assert report["backend"] == "onnxruntime" and report["prepack_weights"] == "when_busy"
    assert report["runs"] == "native" and "converts bert" in report["runs_why"]


def test_loopback_detection() -> None:
    assert cli._is_loopback("127.0.0.1") and cli._is_loopback("::1")
    assert cli._is_loopback("localhost")
    assert not cli._is_loopback("0.0.0.0") and not cli._is_loopback("192.168.1.10")


def test_serve_warns_on_a_public_address_without_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    ran: list[tuple[str, int, Any]] = []

    def fake_run(self: uvicorn.Server, sockets: Any = None) -> None:
        ran.append((self.config.host, self.config.port, sockets[0].getsockname()[:2]))

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    port = free_port()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        cli.main(["serve", "--host", "0.0.0.0", "--port", str(port)])
        assert "without an API key" in capsys.readouterr().err
        cli.main(["serve", "--host", "0.0.0.0", "--port", str(port), "--api-key", "k"])
        assert "without an API key" not in capsys.readouterr().err
        cli.main(["serve", "--port", str(port)])
        assert "without an API key" not in capsys.readouterr().err
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    public, loopback = ("0.0.0.0", port), ("127.0.0.1", port)
    assert ran == [(*public, public), (*public, public), (*loopback, loopback)]


def test_serve_on_a_taken_port_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_serve_status_unload_and_sigterm_drains(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lazyembed.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LAZYEMBED_IDLE_TIMEOUT": "1h"},
    )
    try:
        wait_until_healthy(process, url)

        assert httpx.post(f"{url}/api/embed", json={"input": "warm up"}, timeout=60).is_success
        capsys.readouterr()
        assert cli.main(["status", "--url", url]) == 0
        out = capsys.readouterr().out
        assert "state      loaded" in out and "MB" in out and "unloads in" in out
        assert cli.main(["unload", "--url", url]) == 0
        assert "model unloaded" in capsys.readouterr().out

        # A long request is in flight when SIGTERM arrives: it must still be answered.
        texts = [f"sentence {i} with a few more words to embed" for i in range(2000)]
        answer: dict[str, Any] = {}

        def long_request() -> None:
            answer["r"] = httpx.post(f"{url}/api/embed", json={"input": texts}, timeout=300)

        thread = threading.Thread(target=long_request)
        thread.start()
        seen_in_flight = False
        while thread.is_alive() and not seen_in_flight:
            ps = httpx.get(f"{url}/api/ps", timeout=30).json()
            seen_in_flight = ps["lazyembed"]["in_flight"] > 0
        assert seen_in_flight
        process.send_signal(signal.SIGTERM)
        thread.join(300)
        assert answer["r"].status_code == 200
        assert len(answer["r"].json()["embeddings"]) == len(texts)
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_status_events_shows_the_last_n(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from lazyembed import Embedder
    from lazyembed.cli import remote
    from lazyembed.server import create_app

    embedder = Embedder(cache_memory_mb=0, idle_timeout="never")
    app = create_app(embedder)
    monkeypatch.setattr(remote, "_client", lambda *_: TestClient(app))  # the real app, in-process

    def shown(count: int) -> list[str]:
        assert cli.main(["status", "--events", str(count)]) == 0
        lines = capsys.readouterr().out.splitlines()
        events = [line for line in lines if line.startswith("  ")]
        assert ("events" in lines) == bool(events)
        return events

    try:
        with TestClient(app) as client:
            assert client.post("/api/embed", json={"input": "load it"}).status_code == 200
            assert client.post("/api/unload").json()["unloaded"] is True
        assert shown(0) == []  # not all of them
        (last,) = shown(1)
        assert "kind=unload" in last
        both = shown(5)  # more than there are: all of them, oldest first
        assert len(both) == 2 and "kind=load" in both[0] and "kind=unload" in both[1]
    finally:
        embedder.close()


# A server whose model call never ends (patched in the child): SIGTERM must still end the
# process soon after --graceful-timeout, without waiting for that call.
_STUCK_SERVER = """
import sys
import threading
from pathlib import Path

from lazyembed import cli
from lazyembed.embedder import Embedder

marker = Path(sys.argv[1])


def stuck(self, texts, *, keep_alive=None):
    marker.touch()
    threading.Event().wait()


Embedder.embed_numpy = stuck
sys.exit(cli.main(sys.argv[2:]))
"""


def test_sigterm_does_not_wait_for_a_model_call_past_the_graceful_timeout(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    marker = tmp_path / "model-call-started"
    process = subprocess.Popen(
        [
            *(sys.executable, "-c", _STUCK_SERVER, str(marker)),
            *("serve", "--port", str(port), "--graceful-timeout", "1", "--log-level", "warning"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_healthy(process, url)
        answer: dict[str, Any] = {}

        def request() -> None:
            try:
                answer["r"] = httpx.post(f"{url}/api/embed", json={"input": "x"}, timeout=300)
            except httpx.TransportError as exc:
                answer["r"] = exc

        thread = threading.Thread(target=request)
        thread.start()
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "the model call did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        # Generous: before the fix the process waited for the call, i.e. forever here.
        assert process.wait(120) == 0
        stderr = process.communicate()[1]
        assert "not waiting for the model call still running" in stderr
        thread.join(60)
        assert "r" in answer  # the client was not left hanging either
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
