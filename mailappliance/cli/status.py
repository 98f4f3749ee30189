# -*- test-case-name: tests.test_cli -*-
"""
C{mailappliance status}: what the running server is doing (from the status
file it writes every two seconds, see L{mailappliance.status}). Exit status
3 when no server is running, as C{systemctl status} does.
"""

from __future__ import annotations

import time

from mailappliance.cli.main import CommandError
from mailappliance.queue.control import server_running
from mailappliance.status import STATUS_INTERVAL, read_status

NOT_RUNNING = 3


def add_parser(commands, common) -> None:
    parser = commands.add_parser("status", help="show what the running server is doing", parents=[common])
    parser.set_defaults(run=run)


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def run(config, args, stdin, stdout) -> int:
    if not server_running(config.queue_dir):
        raise CommandError(f"no server is running on {config.server.data_dir}", NOT_RUNNING)
    status = None
    deadline = time.monotonic() + 2 * STATUS_INTERVAL
    while status is None and time.monotonic() < deadline:
        status = read_status(config.queue_dir)
        if status is None:
            time.sleep(0.1)
    if status is None:
        raise CommandError("the server is running but has not written its status yet; try again")
    now = time.time()
    queue = status.get("queue", {})
    sessions = status.get("sessions", {})
    oldest = queue.get("oldest_arrival")
    lines = [
        f"running: pid {status.get('pid')}, up {_span(now - status.get('started', now))}",
        "sessions: " + (", ".join(f"{name} {count}" for name, count in sessions.items()) or "no services"),
        f"queue: {queue.get('queued', 0)} message(s)" + (f", oldest {_span(now - oldest)}" if oldest else ""),
        f"last hour: {queue.get('delivered_last_hour', 0)} delivered, {queue.get('failed_last_hour', 0)} failed",
    ]
    stdout.write("\n".join(lines) + "\n")
    return 0
