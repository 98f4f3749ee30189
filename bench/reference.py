"""
The unsafe reference of the issue: Twisted's own ESMTP server
(C{twisted.mail.smtp.ESMTP}) delivering into a Maildir with no fsync, all
on the reactor thread.

    python -m bench.reference --port N --maildir DIR

prints C{READY <port>} once it listens. Each message is collected line by
line (Twisted's C{IMessage} model), written to C{tmp/}, renamed into
C{new/} and acknowledged: no fsync of file or folder, so a crash after the
250 can lose it. It is what "Twisted's own (unsafe, no fsync) maildir
server" of the issue measures (about 2,000 msg/s for W1 there); running it
in the same invocation turns that absolute figure into a same-run ratio.
C{twisted.mail.maildir}'s own delivery cannot stand in: it crashes on
Python 3 (see the twisted.mail audit).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

from twisted.internet import defer
from twisted.mail import smtp
from zope.interface import implementer

_names = itertools.count()


@implementer(smtp.IMessage)
class MaildirMessage:
    def __init__(self, maildir: str) -> None:
        self.maildir = maildir
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred:
        name = f"{next(_names)}.P{os.getpid()}.reference"
        tmp = os.path.join(self.maildir, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(b"\n".join(self.lines) + b"\n")
        os.rename(tmp, os.path.join(self.maildir, "new", name))
        self.lines = []
        return defer.succeed(None)

    def connectionLost(self) -> None:
        self.lines = []


@implementer(smtp.IMessageDelivery)
class MaildirDelivery:
    def __init__(self, maildir: str) -> None:
        self.maildir = maildir

    def receivedHeader(self, helo, origin, recipients) -> bytes:
        return b"Received: from " + (helo[0] or b"unknown") + b" by reference.example.test"

    def validateFrom(self, helo, origin):
        return origin

    def validateTo(self, user):
        return lambda: MaildirMessage(self.maildir)


class ReferenceFactory(smtp.SMTPFactory):
    protocol = smtp.ESMTP
    domain = b"reference.example.test"

    def __init__(self, delivery: MaildirDelivery) -> None:
        super().__init__()
        self.delivery = delivery

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        p.delivery = self.delivery
        return p


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reference")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--maildir", required=True)
    arguments = parser.parse_args(argv)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(arguments.maildir, sub), exist_ok=True)
    from twisted.internet import reactor

    port = reactor.listenTCP(arguments.port, ReferenceFactory(MaildirDelivery(arguments.maildir)),
                             interface="127.0.0.1")
    sys.stdout.write(f"READY {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
