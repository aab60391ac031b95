"""The CLI takes every default from the settings (file ← env ← flags) and parses every
duration flag with the one duration parser."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lazyembed import cli
from server_helpers import uvicorn_runs_recorded


class _StubHandler(BaseHTTPRequestHandler):
    """Answers /api/ps and /api/unload like a lazyembed server; records what it was sent."""

    seen: list[tuple[str, str | None]]

    def _answer(self, body: dict[str, Any]) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer({"models": [], "lazyembed": {"state": "unloaded", "in_flight": 0}})

    def do_POST(self) -> None:
        self._answer({"unloaded": False, "memory": {"process_rss_mb": 1.0}})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[tuple[int, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (_StubHandler,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("source", ["env port", "env url", "file port", "file url"])
def test_client_commands_find_the_server_the_settings_describe(
    source: str,
    stub_server: tuple[int, list[tuple[str, str | None]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, seen = stub_server
    url = f"http://127.0.0.1:{port}"
    if source == "env port":
        monkeypatch.setenv("LAZYEMBED_PORT", str(port))
    elif source == "env url":
        monkeypatch.setenv("LAZYEMBED_URL", url)
    elif source == "file port":
        monkeypatch.setenv("LAZYEMBED_CONFIG", _config(tmp_path, f"[server]\nport = {port}\n"))
    else:
        monkeypatch.setenv("LAZYEMBED_CONFIG", _config(tmp_path, f'url = "{url}"\n'))
    monkeypatch.setenv("LAZYEMBED_API_KEY", "secret-from-env")
    assert cli.main(["status"]) == 0
    assert f"server     {url}" in capsys.readouterr().out
    assert cli.main(["unload"]) == 0
    bearer = "Bearer secret-from-env"
    assert seen == [("/api/ps", bearer), ("/api/unload", bearer)]


def test_client_flags_override_the_settings(
    stub_server: tuple[int, list[tuple[str, str | None]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, seen = stub_server
    monkeypatch.setenv("LAZYEMBED_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("LAZYEMBED_API_KEY", "from-env")
    argv = ["status", "--url", f"http://127.0.0.1:{port}", "--api-key", "from-flag"]
    assert cli.main(argv) == 0
    assert seen == [("/api/ps", "Bearer from-flag")]


def test_lazyembed_url_is_a_setting_not_an_unknown_variable(
    stub_server: tuple[int, list[tuple[str, str | None]]],
) -> None:
    port, _ = stub_server
    env = {**os.environ, "LAZYEMBED_URL": f"http://127.0.0.1:{port}"}
    for argv in (["status"], ["embed", "hello", "-q"]):
        result = subprocess.run(
            [sys.executable, "-m", "lazyembed.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""


def test_an_unreachable_server_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAZYEMBED_URL", "http://127.0.0.1:9")
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "http://127.0.0.1:9" in err and "lazyembed serve" in err


@pytest.fixture
def recorded_serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """`lazyembed serve` up to uvicorn's run, which records its config instead of serving."""
    ran: list[Any] = []
    with uvicorn_runs_recorded(monkeypatch, ran.append):
        yield ran


def test_graceful_timeout_comes_from_the_settings(
    recorded_serve: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = str(free_port())
    assert cli.main(["serve", "--port", port]) == 0
    monkeypatch.setenv("LAZYEMBED_CONFIG", _config(tmp_path, "[server]\ngraceful_timeout = 5\n"))
    assert cli.main(["serve", "--port", port]) == 0
    monkeypatch.setenv("LAZYEMBED_GRACEFUL_TIMEOUT", "7")
    assert cli.main(["serve", "--port", port]) == 0
    assert cli.main(["serve", "--port", port, "--graceful-timeout", "3"]) == 0  # flag wins
    got = [config.timeout_graceful_shutdown for config in recorded_serve]
    assert got == [30, 5, 7, 3]


def test_graceful_timeout_flag_takes_a_duration(recorded_serve: list[Any]) -> None:
    assert cli.main(["serve", "--port", str(free_port()), "--graceful-timeout", "2m"]) == 0
    assert recorded_serve[0].timeout_graceful_shutdown == 120


def test_serve_host_and_port_come_from_the_settings(
    recorded_serve: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("LAZYEMBED_CONFIG", _config(tmp_path, f"port = {port}\n"))
    assert cli.main(["serve"]) == 0
    assert (recorded_serve[0].host, recorded_serve[0].port) == ("127.0.0.1", port)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--graceful-timeout", "0"], "--graceful-timeout"),
        (["serve", "--graceful-timeout", "never"], "--graceful-timeout"),
        (["serve", "--idle-timeout", "5 parsecs"], "--idle-timeout"),
        (["serve", "--idle-timeout", "1e309"], "--idle-timeout"),
        (["status", "--timeout", "-1"], "--timeout"),
    ],
)
def test_duration_flags_use_the_duration_parser(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {expected}" in err and "Traceback" not in err


def test_idle_timeout_flag_reaches_the_embedder(
    recorded_serve: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazyembed.embedder import Embedder

    seen: list[Any] = []
    prepare = Embedder.prepare

    def spy(self: Embedder) -> Any:
        seen.append(self.settings.idle_timeout)
        return prepare(self)

    monkeypatch.setattr(Embedder, "prepare", spy)
    assert cli.main(["serve", "--port", str(free_port()), "--idle-timeout", "90s"]) == 0
    assert [str(value) for value in seen[:1]] == ["90s"]


def test_body_timeout_comes_from_the_settings_and_the_flag(
    recorded_serve: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = str(free_port())
    monkeypatch.setenv("LAZYEMBED_SERVER_BODY_TIMEOUT", "4")
    assert cli.main(["serve", "--port", port]) == 0
    assert cli.main(["serve", "--port", port, "--body-timeout", "1m"]) == 0  # flag wins
    got = [config.app.state.server.config.body_timeout for config in recorded_serve]
    assert got == [4.0, 60.0]
