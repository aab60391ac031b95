"""``lazyembed daemon start | stop | status | run``: the shared per-user daemon.

``run`` serves in the foreground (systemd, launchd; a socket passed by systemd is used);
``start`` makes sure one runs (spawning it detached); ``stop`` asks it to exit;
``status`` prints what it reports (``--json`` for the raw answer).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from lazyembed.cli.common import stdout
from lazyembed.daemon.paths import daemon_paths
from lazyembed.daemon.spawn import call, connect, ensure_daemon
from lazyembed.errors import CLIError


def cmd_daemon(args: argparse.Namespace) -> int:
    paths = daemon_paths()
    action: str = args.action
    if action == "run":
        from lazyembed.daemon.server import run_daemon  # the heavy imports: only here

        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        return run_daemon(paths)
    if action == "start":
        ensure_daemon(paths, timeout=args.timeout)
        status = call(paths.socket, "status", timeout=args.timeout)
        if args.json:
            _print_json(status)
        else:
            print(f"lazyembed daemon running: pid {status['pid']}, socket {status['socket']}")
        return 0
    if action == "stop":
        return _stop(args)
    return _status(args)


def _stop(args: argparse.Namespace) -> int:
    paths = daemon_paths()
    try:
        status = call(paths.socket, "status", timeout=args.timeout)
        call(paths.socket, "stop", timeout=args.timeout)
    except OSError:
        print("lazyembed daemon: not running")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        sock = connect(paths.socket, timeout=1.0)
        if sock is None:
            print(f"lazyembed daemon stopped (pid {status['pid']})")
            return 0
        sock.close()
        time.sleep(0.05)
    raise CLIError(f"the daemon (pid {status['pid']}) did not stop within {args.timeout:g} s")


def _status(args: argparse.Namespace) -> int:
    paths = daemon_paths()
    try:
        status = call(paths.socket, "status", timeout=args.timeout)
    except OSError:
        if args.json:
            _print_json({"running": False, "socket": str(paths.socket)})
        else:
            print(f"lazyembed daemon: not running (socket {paths.socket})")
        return 3  # as `systemctl status` says "not running"
    if args.json:
        _print_json({"running": True, **status})
        return 0
    out = stdout()
    uptime = float(status["uptime_s"])
    lines = [
        f"lazyembed daemon {status['version']}: pid {status['pid']}, up {_duration(uptime)}",
        f"  socket:   {status['socket']}",
        f"  log:      {status['log']}",
        f"  memory:   RSS {_mb(status['rss_mb'])}, PSS {_mb(status['pss_mb'])}",
        f"  clients:  {status['clients']} now, {status['clients_served']} served; "
        f"{status['calls']} calls",
    ]
    exit_in = status.get("idle_exit_in_s")
    lines.append(
        "  idle exit: never"
        if exit_in is None
        else f"  idle exit: after {status['settings']['daemon_idle_exit']} idle "
        f"(in {_duration(float(exit_in))} if nothing loads)"
    )
    models = status["models"]
    lines.append(f"  models:   {len(models) or 'none'}")
    for m in models:
        opts = ", ".join(f"{k}={v}" for k, v in m["options"].items())
        extra = []
        if m["pinned"]:
            extra.append("pinned")
        if m["unload_in_s"] is not None:
            extra.append(f"unloads in {_duration(float(m['unload_in_s']))}")
        lines.append(
            f"    {m['model']}{f' ({opts})' if opts else ''}: {m['state']}, "
            f"{_mb(m['model_mb'])}, {len(m['leases'])} client lease(s), "
            f"{m['batches']} batches / {m['texts']} texts"
            + (f"; {', '.join(extra)}" if extra else "")
        )
    lines.append("  settings: " + ", ".join(f"{k}={v}" for k, v in status["settings"].items()))
    out.write("\n".join(lines) + "\n")
    return 0


def _print_json(value: Any) -> None:
    stdout().write(json.dumps(value, indent=2) + "\n")


def _mb(value: object) -> str:
    return "n/a" if value is None else f"{float(value):.1f} MB"  # type: ignore[arg-type]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
