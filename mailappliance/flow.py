# -*- test-case-name: tests.test_flow -*-
"""
Output flow control and closing for the server sessions (SMTP and POP3).

A client that sends commands but never reads the replies must not make
the server buffer them without limit (a CAPA or RETR costs a few bytes to
send and can be answered with kilobytes), and a client that neither reads
nor ends its TLS handshake must not hold its connection, and its place in
the connection limits, for ever:

  - L{OutputFlow} is the transport's streaming producer for the whole
    session. The transport pauses it when its send buffer is over its
    limit (64 KiB for TCP) and resumes it when the buffer has drained;
    the session answers no further command while it is paused, so the
    input waiting behind stays in the session's bounded input buffer and
    reading stops when that is full. A producer that streams a long
    response (a POP3 RETR) is attached to it and gets the same pauses.
  - L{OutputFlow.close} ends the session after what was written, as
    C{loseConnection} does, but aborts the connection if that has not
    happened within L{CLOSE_TIMEOUT}: C{loseConnection} waits for the send
    buffer to drain and for a TLS handshake to end, which a client can
    put off for ever.

Twisted's own transports move a registered producer across C{startTLS}
(STARTTLS, STLS), so the registration holds for the whole session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

# How long a closing session may take to hand what it has written (its
# last reply, the end of a message: at most about the transport's 64 KiB
# buffer, given the flow control above) to the kernel, which sends it
# after the close, before the connection is aborted.
CLOSE_TIMEOUT = 10.0


@implementer(IPushProducer)
class OutputFlow:
    """
    The flow of one session's output (see the module docstring).

    @ivar blocked: whether the transport has asked to stop writing.
    """

    def __init__(self, transport: Any, clock: Any, changed: Callable[[], None]) -> None:
        """
        @param transport: the session's transport.
        @param clock: an L{IReactorTime}, for the close deadline.
        @param changed: called after L{blocked} changes (the session goes
            on answering commands when it becomes false).
        """
        self.blocked = False
        self._transport = transport
        self._clock = clock
        self._changed = changed
        self._registered = False
        self._attached: Any = None
        self._deadline: Any = None

    def start(self) -> None:
        """
        Register with the transport; call once, when the connection is made.
        """
        self._transport.registerProducer(self, True)
        self._registered = True

    def attach(self, producer: Any) -> None:
        """
        Let C{producer} (an L{IPushProducer} writing to the transport) have
        the transport's pauses until L{detach}; it is paused at once if
        the transport is.
        """
        self._attached = producer
        if self.blocked:
            producer.pauseProducing()

    def detach(self) -> None:
        self._attached = None

    @property
    def attached(self) -> Any:
        """
        The producer attached, or L{None}.
        """
        return self._attached

    def close(self) -> None:
        """
        Close the connection after what was written; abort it if that takes
        more than L{CLOSE_TIMEOUT}.
        """
        if self._deadline is not None:
            return
        self._attached = None
        if self._registered:
            # A TLS transport does not begin to close while a producer is
            # registered.
            self._registered = False
            self._transport.unregisterProducer()
        self._deadline = self._clock.callLater(CLOSE_TIMEOUT, self._transport.abortConnection)
        self._transport.loseConnection()

    def connection_lost(self) -> None:
        """
        The connection is gone: forget the deadline and any producer.
        """
        self._attached = None
        self._registered = False
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    # IPushProducer, called by the transport

    def pauseProducing(self) -> None:
        self.blocked = True
        if self._attached is not None:
            self._attached.pauseProducing()
        self._changed()

    def resumeProducing(self) -> None:
        self.blocked = False
        if self._attached is not None:
            self._attached.resumeProducing()
        self._changed()

    def stopProducing(self) -> None:
        attached, self._attached = self._attached, None
        if attached is not None:
            attached.stopProducing()
