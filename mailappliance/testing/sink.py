# -*- test-case-name: tests.test_testing -*-
"""
Run L{FakeSMTPPeer} as a process on loopback::

    python -m mailappliance.testing sink --port 0 --spool DIR \\
        [--reject ADDR]... [--defer ADDR]... [--starttls CERT KEY] \\
        [--auth USER:PASS] [--no-pipelining] [--size N] ...

which prints C{READY <port>} once listening and writes each message it
accepts to C{DIR/<n>.eml} (the bytes) and C{DIR/<n>.json} (envelope and
session facts), each under a temporary name first and renamed, so a reader
never sees half a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from mailappliance.testing.certificates import server_tls_options
from mailappliance.testing.peer import FakeSMTPPeer, PeerSession

LOOPBACK_INTERFACES = ("127.0.0.1", "::1")


class MessageSink:
    """
    Writes each message a L{FakeSMTPPeer} accepts into a folder: C{<n>.eml}
    and C{<n>.json}, each written under a temporary name and renamed.
    Numbers continue after those already there.

    This is a test fake: it writes on the reactor thread, which the product
    itself never does.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        os.makedirs(directory, exist_ok=True)
        taken = [int(n.split(".")[0]) for n in os.listdir(directory) if n.split(".")[0].isdigit()]
        self._next = max(taken, default=0) + 1

    def __call__(self, session: PeerSession, message: bytes) -> None:
        number, self._next = self._next, self._next + 1
        facts = asdict(session)
        del facts["commands"], facts["arrivals"], facts["messages"]
        facts["size"] = len(message)
        self._write(f"{number}.eml", message)
        self._write(f"{number}.json", json.dumps(facts, indent=1).encode("utf-8"))

    def _write(self, name: str, data: bytes) -> None:
        path = os.path.join(self._directory, name)
        temporary = os.path.join(self._directory, f".{name}.tmp")
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, path)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mailappliance.testing")
    commands = parser.add_subparsers(dest="command", required=True)
    sink = commands.add_parser("sink", help="run a fake SMTP server that stores what it receives")
    sink.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
    sink.add_argument("--interface", default="127.0.0.1", choices=LOOPBACK_INTERFACES)
    sink.add_argument("--spool", required=True, help="folder for <n>.eml and <n>.json")
    sink.add_argument("--hostname", default="sink.test")
    sink.add_argument("--reject", action="append", default=[], metavar="ADDR", help="550 at RCPT")
    sink.add_argument("--defer", action="append", default=[], metavar="ADDR", help="450 at RCPT")
    sink.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"), help="offer STARTTLS with these PEM files")
    sink.add_argument("--auth", metavar="USER:PASS", help="offer AUTH PLAIN LOGIN and check these")
    sink.add_argument("--pipelining", action=argparse.BooleanOptionalAction, default=True)
    sink.add_argument("--8bitmime", dest="eight_bit_mime", action=argparse.BooleanOptionalAction, default=True)
    sink.add_argument("--smtputf8", action=argparse.BooleanOptionalAction, default=True)
    sink.add_argument("--size", type=int, default=None, help="advertise SIZE and refuse larger messages")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, reactor=None) -> None:
    """
    Run the command line (see the module docstring) until killed.
    """
    arguments = _arguments(sys.argv[1:] if argv is None else argv)
    if reactor is None:
        from twisted.internet import reactor
    tls_options = None
    if arguments.starttls:
        with open(arguments.starttls[0], "rb") as cert, open(arguments.starttls[1], "rb") as key:
            tls_options = server_tls_options(cert.read(), key.read())
    auth = tuple(arguments.auth.split(":", 1)) if arguments.auth else None
    peer = FakeSMTPPeer(
        hostname=arguments.hostname,
        pipelining=arguments.pipelining,
        size=arguments.size,
        eight_bit_mime=arguments.eight_bit_mime,
        smtputf8=arguments.smtputf8,
        tls_options=tls_options,
        auth=auth,
        on_message=MessageSink(arguments.spool),
    )
    for address in arguments.reject:
        peer.reject(address)
    for address in arguments.defer:
        peer.defer(address)
    port = reactor.listenTCP(arguments.port, peer, interface=arguments.interface)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()

