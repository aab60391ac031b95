"""``lazyembed status`` and ``lazyembed unload``: ask a running server over HTTP.

The server's address and key come from the settings (``url``, else ``http://host:port``;
``api_key``), so the client finds the server that the same settings started.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from lazyembed.cli.common import settings_for
from lazyembed.errors import CLIError

if TYPE_CHECKING:
    import httpx


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    """The server's URL and bearer key: flags over the settings."""
    server = settings_for(args, url=args.url, api_key=args.api_key).server
    return server.client_url, server.api_key


def _client(url: str, api_key: str | None, timeout: float) -> httpx.Client:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def _check(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a 2xx response, or a CLIError with the server's message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    message = body.get("error") if isinstance(body, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    raise CLIError(
        f"{response.request.url} answered {response.status_code}: {message or response.text[:200]}"
    )


def _fmt_mb(value: object) -> str:
    return f"{value:.1f} MB" if isinstance(value, (int, float)) else "-"


def _fmt_s(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if value == float("inf"):
        return "never"
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def cmd_status(args: argparse.Namespace) -> int:
    url, api_key = _target(args)
    with _client(url, api_key, args.timeout) as client:
        body = _check(client.get("/api/ps"))
    if args.json:
        print(json.dumps(body, indent=2, default=str))
        return 0
    memory: dict[str, Any] = body.get("lazyembed") or {}
    reports: dict[str, Any] = body.get("lazyembed_models") or {}
    print(f"server     {url}")
    print(f"state      {memory.get('state', '-')} (the default model)")
    if len(reports) > 1:  # several models served: each one's state and measured size
        for name, report in reports.items():
            print(
                f"model      {name}: {report.get('state', '-')}, {_fmt_mb(report.get('model_mb'))}"
            )
    print(f"in flight  {memory.get('in_flight', '-')}")
    print(
        f"memory     model {_fmt_mb(memory.get('model_mb'))}, process RSS "
        f"{_fmt_mb(memory.get('process_rss_mb'))}, USS {_fmt_mb(memory.get('process_uss_mb'))}"
    )
    unload_in = memory.get("unload_in_s")
    countdown = (
        f"unloads in {_fmt_s(unload_in)}" if unload_in is not None else "no unload scheduled"
    )
    print(
        f"idle       {_fmt_s(memory.get('idle_seconds'))} idle, {countdown} "
        f"(idle timeout {_fmt_s(memory.get('idle_timeout_s'))})"
    )
    print(
        f"loads      {memory.get('loads', '-')} (last {memory.get('last_load_ms', '-')} ms), "
        f"unloads {memory.get('unloads', '-')}"
    )
    _print_events(list(memory.get("events") or []), args.events)
    return 0


def _print_events(events: list[Any], count: int) -> None:
    shown = events[max(0, len(events) - count) :]  # (not [-n:]: [-0:] is all of them)
    if shown:
        print("events")
        for event in shown:
            if isinstance(event, dict):
                print("  " + "  ".join(f"{k}={v}" for k, v in event.items()))
            else:
                print(f"  {event}")


def cmd_unload(args: argparse.Namespace) -> int:
    url, api_key = _target(args)
    with _client(url, api_key, args.timeout) as client:
        body = _check(client.post("/api/unload"))
    if args.json:
        print(json.dumps(body, indent=2, default=str))
    else:
        memory = body.get("memory") or {}
        what = "unloaded" if body.get("unloaded") else "was not loaded"
        print(f"model {what}; process RSS {_fmt_mb(memory.get('process_rss_mb'))}")
    return 0
