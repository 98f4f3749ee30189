# -*- test-case-name: tests.test_pop3_tls,tests.test_pop3_server -*-
"""
STLS (RFC 2595 section 4) for the POP3 server: whether it can be offered,
and the switch to TLS. L{POP3STLSHandler} is this part of the session, a
mixin of L{mailappliance.pop3.server.POP3Protocol}; the certificate is the
factory's C{tls} (L{mailappliance.tls}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import ITLSTransport

from mailappliance.pop3.commands import AUTHORIZATION
from mailappliance.pop3.lines import LineReader


class POP3STLSHandler:
    """
    The STLS command and the TLS facts the command handlers ask for, a
    mixin of L{mailappliance.pop3.server.POP3Protocol}.

    Uses the protocol's C{factory} (C{tls}), C{transport}, C{state},
    C{_reader}, C{_user}, C{_tls_active} (set when the connection is
    made: an implicit-TLS session has TLS from the start) and its method
    C{send_line}.
    """

    factory: Any
    transport: Any
    state: str
    _reader: LineReader
    _user: bytes | None
    _tls_active: bool
    send_line: Callable[[bytes], None]

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    def tls_available(self) -> bool:
        """
        @return: whether STLS can be offered now: TLS is configured, the
            transport can start it and it is not active yet.
        """
        return (
            self.factory.tls is not None
            and not self._tls_active
            and ITLSTransport.providedBy(self.transport)
            and self.state == AUTHORIZATION
        )

    def start_tls(self) -> None:
        """
        Answer STLS and switch to TLS (RFC 2595 section 4): whatever the
        client sent after the STLS line is dropped unread, and the login
        state is reset.
        """
        self.send_line(b"+OK Begin TLS negotiation")
        self._reader.clear()
        self._user = None
        self._tls_active = True
        self.transport.startTLS(self.factory.tls)
