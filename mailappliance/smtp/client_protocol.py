# -*- test-case-name: tests.test_smtp_client_protocol -*-
"""
The wire side of the outbound SMTP client: reading replies, matching them
to the commands that wait for them, time-outs, STARTTLS.

L{SMTPClientChannel} knows nothing of the dialogue (that is
L{mailappliance.smtp.client_session}); it offers C{expect}/C{command}
Deferreds that fire with L{Reply} objects strictly in the order the
replies arrive, which is what PIPELINING (RFC 2920 section 3.1) needs: the
session writes several commands at once and takes their replies one after
the other.

Every wait for a reply has a time-out (RFC 5321 section 4.5.3.2); when one
expires, or the connection is lost, or the server sends something that is
not a reply, every pending wait fails with L{ConnectionProblem} and the
connection is aborted: after any of those the dialogue cannot be trusted
to be in step any more.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

# RFC 5321 section 4.5.3.1.5 limits a reply line to 512 octets; real
# servers exceed it (long EHLO keywords, verbose texts), so we allow more,
# but not without bound.
MAX_REPLY_LINE_LENGTH = 4096

# Lines in one multi-line reply (an EHLO reply has a few dozen at most).
MAX_REPLY_LINES = 200

_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.DOTALL)
_ENHANCED_STATUS = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=\s|$)")


@dataclass(frozen=True)
class Reply:
    """
    One (possibly multi-line) SMTP reply.

    @ivar code: the three-digit reply code.
    @ivar lines: the text of each line, after the code and separator.
    """

    code: int
    lines: tuple[str, ...]

    @property
    def positive(self) -> bool:
        """
        L{True} for 2xx and 3xx replies.
        """
        return self.code < 400

    @property
    def transient(self) -> bool:
        """
        L{True} for 4xx replies (RFC 5321 section 4.2.1).
        """
        return 400 <= self.code < 500

    @property
    def enhanced_status(self) -> str | None:
        """
        The RFC 3463 status code at the start of the first line, when there
        is one whose class agrees with the reply code; else L{None}.
        """
        if not self.lines:
            return None
        match = _ENHANCED_STATUS.match(self.lines[0])
        if match is None or match.group(1) != str(self.code)[0]:
            return None
        return match.group(0)

    def status_or(self, fallback: str | None = None) -> str:
        """
        @return: L{enhanced_status}, else C{fallback}, else the generic
            C{X.0.0} code of the reply's class.
        """
        return self.enhanced_status or fallback or f"{str(self.code)[0]}.0.0"

    def __str__(self) -> str:
        """
        The reply on one line: the code and the lines' texts joined by
        spaces, for logs and delivery status notifications.
        """
        text = " ".join(line.strip() for line in self.lines if line.strip())
        return f"{self.code} {text}" if text else str(self.code)


class ConnectionProblem(Exception):
    """
    The session cannot go on: the connection was lost or refused, a reply
    did not come in time, or the peer does not speak SMTP.

    @ivar reason: a description for logs and bounces.
    @ivar status: the enhanced status code we assign (temporary).
    @ivar tls_failure: L{True} when it happened during the TLS handshake.
    @ivar retry_elsewhere: L{False} when another host would fare no better
        (a local problem such as an unreadable spool file).
    @ivar reply: the server's L{Reply} when it was a reply that refused us
        (a 4xx greeting, say), else L{None}.
    """

    def __init__(
        self,
        reason: str,
        status: str = "4.4.2",
        tls_failure: bool = False,
        retry_elsewhere: bool = True,
        reply: Reply | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.tls_failure = tls_failure
        self.retry_elsewhere = retry_elsewhere
        self.reply = reply


def describe_failure(failure: Failure) -> str:
    """
    @return: a short, one-line text for a connection-level failure.
    """
    value = failure.value
    text = str(value).strip().replace("\r", " ").replace("\n", " ")
    name = type(value).__name__
    return f"{name}: {text}" if text and text != name else name


@implementer(IHandshakeListener)
class SMTPClientChannel(Protocol):
    """
    Reads SMTP replies and hands them, in order, to whoever waits for them.

    Replies that arrive while nobody waits are kept for the next
    L{expect}. After the connection is lost, waits fail once the replies
    received before the loss are used up.

    @ivar tls_started: L{True} once STARTTLS was accepted and the handshake
        began.
    @ivar tls_established: L{True} once the handshake completed.
    """

    def __init__(self, clock) -> None:
        """
        @param clock: an L{IReactorTime} for the reply time-outs.
        """
        self._clock = clock
        self._buffer = b""
        self._partial: list[str] = []
        self._waiting: deque[tuple[defer.Deferred, float, str]] = deque()
        self._received: deque[Reply] = deque()
        self._timer = None
        self._problem: ConnectionProblem | None = None
        self._tls_creator = None
        self._producer = None
        self._closing = False
        self.tls_started = False
        self.tls_established = False

    # IProtocol

    def connectionMade(self) -> None:
        """
        Turn Nagle's algorithm off: the dialogue is many small writes, each
        waiting for a reply.
        """
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        """
        Split replies into lines; hand each complete reply on.
        """
        if self._problem is not None:
            return
        self._buffer += data
        while self._problem is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE_LENGTH:
                    self._protocol_violation("reply line too long")
                return
            if end > MAX_REPLY_LINE_LENGTH:
                self._protocol_violation("reply line too long")
                return
            # RFC 5321 wants CRLF; a bare LF from a sloppy server is still
            # unambiguous on the reading side, so it is accepted.
            line = self._buffer[:end].rstrip(b"\r")
            self._buffer = self._buffer[end + 1 :]
            if self._line_received(line):
                # STARTTLS was accepted: what the server sent after its 220
                # and before the handshake is unauthenticated plaintext that
                # must not be taken as a reply (RFC 3207 section 4.2;
                # CVE-2011-0411).
                self._buffer = b""
                return

    def connectionLost(self, reason: Failure) -> None:
        """
        Fail all waits (after the replies already received are taken).
        """
        if self._problem is None:
            if self.tls_started and not self.tls_established:
                self._problem = ConnectionProblem(
                    f"TLS handshake failed: {describe_failure(reason)}", "4.7.5", tls_failure=True
                )
            else:
                self._problem = ConnectionProblem(f"connection lost: {describe_failure(reason)}")
        if self._producer is not None:
            self._producer.stopProducing()
        self._fail_waiting()

    # IHandshakeListener

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake finished (and, if verifying, the certificate was
        accepted).
        """
        self.tls_established = True

    # For the session

    def expect(self, timeout: float, what: str) -> defer.Deferred:
        """
        Wait for the next reply.

        @param timeout: seconds to wait, counted from when this is the
            oldest wait.
        @param what: what is awaited, for the time-out message
            (C{"greeting"}, C{"reply to RCPT"}, ...).
        @return: a L{Deferred} firing with the L{Reply}, or failing with
            L{ConnectionProblem}.
        """
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((d, timeout, what))
        if len(self._waiting) == 1:
            self._deliver_received()
            self._restart_timer()
        return d

    def send(self, *commands: bytes) -> None:
        """
        Write commands (without their CRLF) in one write.
        """
        if self._problem is None:
            self.transport.write(b"".join(c + b"\r\n" for c in commands))

    def command(self, command: bytes, timeout: float, what: str) -> defer.Deferred:
        """
        L{send} one command and L{expect} its reply.
        """
        self.send(command)
        return self.expect(timeout, what)

    def starttls(self, creator, timeout: float) -> defer.Deferred:
        """
        Send STARTTLS; on a 220 reply start TLS at once, discarding anything
        the server sent after the 220.

        @param creator: an L{IOpenSSLClientConnectionCreator}.
        @return: a L{Deferred} firing with the reply to STARTTLS. If it is
            220, the handshake is under way and the next command is sent
            over TLS; a failed handshake shows as a L{ConnectionProblem}
            with C{tls_failure} set on the next wait.
        """
        self._tls_creator = creator
        return self.command(b"STARTTLS", timeout, "reply to STARTTLS")

    def stream_body(self, producer) -> None:
        """
        Register a streaming producer for the message body; it is stopped
        if the connection is lost.
        """
        self._producer = producer
        self.transport.registerProducer(producer, True)

    def body_done(self) -> None:
        """
        The body producer finished.
        """
        if self._producer is not None:
            self._producer = None
            self.transport.unregisterProducer()

    def tls_description(self) -> tuple[str | None, str | None]:
        """
        @return: the negotiated TLS protocol version and cipher, or
            C{(None, None)} without TLS.
        """
        if not self.tls_established:
            return None, None
        try:
            connection = self.transport.getHandle()
            return connection.get_protocol_version_name(), connection.get_cipher_name()
        except (AttributeError, SSL.Error):
            # A transport without a TLS handle, or a connection gone.
            return None, None

    @property
    def idle(self) -> bool:
        """
        Whether a new command may start: connected and not closing,
        nothing awaited, nothing received that nobody asked for (say a
        C{421} sent before the server closed), no body being sent.
        """
        return (
            self._problem is None
            and not self._closing
            and not self._waiting
            and not self._received
            and not self._partial
            and not self._buffer
            and self._producer is None
        )

    def fail(self, problem: ConnectionProblem) -> None:
        """
        Give up on this connection: fail every wait with C{problem} and
        abort the connection.
        """
        if self._problem is None:
            self._problem = problem
        self._fail_waiting()
        self.transport.abortConnection()

    def close(self) -> None:
        """
        Close the connection after what was written is sent.
        """
        self._closing = True
        self.transport.loseConnection()

    # Internals

    def _line_received(self, line: bytes) -> bool:
        match = _REPLY_LINE.match(line)
        if match is None:
            self._protocol_violation(f"not an SMTP reply: {line[:80]!r}")
            return False
        code, separator, text = match.groups()
        self._partial.append((text or b"").decode("utf-8", "replace"))
        if separator == b"-":
            if len(self._partial) >= MAX_REPLY_LINES:
                self._protocol_violation("reply has too many lines")
            return False
        reply = Reply(int(code), tuple(self._partial))
        self._partial = []
        switching = self._tls_creator is not None and bool(self._waiting)
        if switching:
            creator, self._tls_creator = self._tls_creator, None
            if reply.code == 220:
                self.tls_started = True
                self.transport.startTLS(creator)
        self._received.append(reply)
        self._deliver_received()
        return switching and reply.code == 220

    def _deliver_received(self) -> None:
        while self._waiting and self._received:
            d, _, _ = self._waiting.popleft()
            reply = self._received.popleft()
            self._restart_timer()
            d.callback(reply)
        if self._problem is not None:
            self._fail_waiting()

    def _restart_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._waiting and self._problem is None:
            _, timeout, what = self._waiting[0]
            self._timer = self._clock.callLater(timeout, self._timed_out, timeout, what)

    def _timed_out(self, timeout: float, what: str) -> None:
        self._timer = None
        self.fail(ConnectionProblem(f"timed out after {timeout:g}s waiting for {what}"))

    def _protocol_violation(self, why: str) -> None:
        self.fail(ConnectionProblem(f"protocol error: {why}", "4.5.0"))

    def _fail_waiting(self) -> None:
        if self._received:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for d, _, _ in waiting:
            d.errback(self._problem)
