# -*- test-case-name: tests.test_testing -*-
"""
Fakes for testing code that uses mailappliance, shipped with it as
C{treq.testing} ships with treq (DESIGN.md: the product's own fakes live
here). One module per kind of fake; the names below are the public ones:

  - L{mailappliance.testing.peer}: L{FakeSMTPPeer}, a fake remote SMTP
    server that can accept, defer or reject each recipient, advertise or
    not each extension, fail at any step, and records every session in a
    L{PeerSession};
  - L{mailappliance.testing.connections}: L{connect_pending} joins a
    connection attempt made on a L{MemoryReactorClock} to a server factory
    over transports whose STARTTLS runs real TLS, and L{refuse_pending}
    fails one;
  - L{mailappliance.testing.certificates}: L{make_certificate},
    L{write_certificate} (the files a C{[tls]} section names),
    L{server_tls_options}, L{trust_root};
  - L{mailappliance.testing.sink}: the peer as a process on loopback,
    C{python -m mailappliance.testing sink --port 0 --spool DIR ...}, with
    L{MessageSink} writing what it accepts;
  - L{mailappliance.testing.smtp_server}: fakes around our SMTP server (a
    resolver whose answers can be held back, a spool whose writers record
    and fail on demand, a credentials checker, a transport that can start
    TLS) and L{SMTPHarness}, one session wired to them.
"""

from mailappliance.testing.certificates import (
    make_certificate,
    server_tls_options,
    trust_root,
    write_certificate,
)
from mailappliance.testing.connections import (
    TLSFakeTransport,
    connect_pending,
    refuse_pending,
)
from mailappliance.testing.peer import (
    DEFAULT_RCPT_REPLY,
    DEFER_REPLY,
    REJECT_REPLY,
    STEPS,
    FakeSMTPPeer,
    FakeSMTPServer,
    PeerSession,
)
from mailappliance.testing.sink import LOOPBACK_INTERFACES, MessageSink, main
from mailappliance.testing.smtp_server import (
    FakeChecker,
    FakeResolver,
    FakeSpool,
    FakeWriter,
    RecordingTransport,
    SMTPHarness,
    TLSCapableTransport,
)

__all__ = [
    "DEFAULT_RCPT_REPLY",
    "DEFER_REPLY",
    "LOOPBACK_INTERFACES",
    "REJECT_REPLY",
    "STEPS",
    "FakeChecker",
    "FakeResolver",
    "FakeSMTPPeer",
    "FakeSMTPServer",
    "FakeSpool",
    "FakeWriter",
    "MessageSink",
    "PeerSession",
    "RecordingTransport",
    "SMTPHarness",
    "TLSCapableTransport",
    "TLSFakeTransport",
    "connect_pending",
    "main",
    "make_certificate",
    "refuse_pending",
    "server_tls_options",
    "trust_root",
    "write_certificate",
]
