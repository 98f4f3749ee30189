# -*- test-case-name: tests.test_smtp_server,tests.test_smtp_server_flow -*-
"""
The ESMTP server protocol (RFC 5321) of both SMTP services, C{smtp} and
C{submission}: one session. What the sessions of a service share is kept
by their factory, L{mailappliance.smtp.factory.SMTPFactory}.

Everything a session may do is decided by its
L{mailappliance.smtp.policy.SessionPolicy}; what each command does is in
L{mailappliance.smtp.handlers}; this module is the I/O around them.

Pipelining (RFC 2920) is handled by never running two commands at once:
received bytes are held by the L{CommandLineReader}, and the next command
is taken from it only once the reply to the previous one has been sent. A
command that needs an answer from elsewhere (a recipient lookup, the
commit of a message) stops the loop until its L{Deferred} fires, so
replies always come in the order of the commands, and the bytes after
C{354} are never read as commands. While a decision is pending and too
much input is waiting, the transport is paused.

After C{354}, the body goes to the spool as it arrives (see
L{mailappliance.smtp.receiver}); the C{250} is sent only when the spool
has made the message durable. After C{BDAT <size>}, exactly C{<size>}
octets are taken from the input, in bulk, before anything is read as a
command again (L{mailappliance.smtp.chunking}).

STARTTLS (L{mailappliance.smtp.starttls}) and AUTH
(L{mailappliance.smtp.auth}) are mixins like the other commands; during
an AUTH exchange the input loop hands lines to the SASL mechanism instead
of the command parser, with the longer line limit of RFC 4954 section 4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.flow import OutputFlow
from mailappliance.immediate import write_now
from mailappliance.logtext import next_session_id, quote
from mailappliance.smtp import replies
from mailappliance.smtp.auth import SMTPAuthHandlers
from mailappliance.smtp.chunking import Chunk, SMTPChunkingHandlers
from mailappliance.smtp.commands import CommandRefused, is_http_request, parse_command
from mailappliance.smtp.events import log_event
from mailappliance.smtp.handlers import SMTPCommandHandlers
from mailappliance.smtp.lines import (
    BARE_LF,
    MAX_AUTH_LINE,
    OVERLONG,
    CommandLineReader,
    limit_for_command,
)
from mailappliance.smtp.policy import (
    TOO_MANY_CONNECTIONS,
    SessionFacts,
    SessionPolicy,
    SMTPSettings,
    peer_address,
)
from mailappliance.smtp.receiver import MessageReceiver
from mailappliance.smtp.replies import Reply
from mailappliance.smtp.starttls import SMTPStartTLSHandler, can_start_tls, tls_active
from mailappliance.smtp.transaction import Transaction
from mailappliance.tls import tls_error_text

if TYPE_CHECKING:
    from mailappliance.smtp.factory import SMTPFactory

# Replies of code 500 and above a session may earn before it is closed
# with 421 (Postfix's smtpd_hard_error_limit, and its default): a client
# that keeps failing is broken or probing for addresses. Unknown
# recipients count, so this is also how many stale addresses one message
# may carry before its good recipients cannot be reached (10 was too few
# for a mailing with an old list).
MAX_ERRORS = 20

# Bytes of input held while a command's decision is pending; beyond this
# the transport is paused until the decision is made (RFC 2920 section
# 3.1 lets a client send a whole transaction at once, but not without
# bound).
MAX_PENDING_INPUT = 64 * 1024

# Verbs of RFC 5321 and its extensions that this server knows but does not
# offer (502 rather than 500, RFC 5321 section 4.2.4).
NOT_IMPLEMENTED_VERBS = frozenset(
    {"ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML", "VERB", "XCLIENT", "XFORWARD"}
)


@implementer(IHalfCloseableProtocol)
class SMTPServerProtocol(SMTPCommandHandlers, SMTPChunkingHandlers, SMTPStartTLSHandler, SMTPAuthHandlers, Protocol):
    """
    One SMTP session.

    @ivar policy: the L{SessionPolicy} of this session (set when the
        connection is made).
    """

    policy: SessionPolicy

    def __init__(self, factory: SMTPFactory) -> None:
        self.factory = factory
        self._settings: SMTPSettings = factory.settings
        self._clock: IReactorTime = factory.clock
        self._log: Logger = factory.log
        self._lines = CommandLineReader(self._line_limit)
        self._receiver: MessageReceiver | None = None
        # The BDAT chunk whose octets are being read, and the reply the
        # rest of a failed transaction's chunks get.
        self._chunk: Chunk | None = None
        self._chunks_refused: Reply | None = None
        # The Deferred the session is waiting for (lookup, commit, disk),
        # during which no further input is processed.
        self._waiting: Deferred | None = None
        self._waiting_for_disk = False
        self._paused = False
        self._input_ended = False
        self._closing = False
        self._connected = False
        self._admitted = False
        self._timer: Any = None
        self._flow: OutputFlow | None = None
        self._helo: str | None = None
        self._esmtp = False
        self._transaction: Transaction | None = None
        self._errors = 0
        self._peer_ip: Any = None
        self._peer_key = "unknown"
        self._session = next_session_id()
        self._context: dict[str, str] = {}
        self._sasl = None
        self._auth_failures = 0

    def _line_limit(self, prefix: bytes) -> int:
        """
        The length limit of the next line: a SASL response may be as long
        as an AUTH command (RFC 4954 section 4).
        """
        if self.in_sasl_exchange:
            return MAX_AUTH_LINE
        return limit_for_command(prefix)

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        self._flow = OutputFlow(self.transport, self._clock, self._output_changed)
        self._flow.start()
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            # Replies are small and the client waits for each one (or for
            # each group, with pipelining): do not let Nagle delay them.
            no_delay(True)
        self._peer_ip = peer_address(getattr(self.transport.getPeer(), "host", ""))
        self._peer_key = str(self._peer_ip) if self._peer_ip is not None else "unknown"
        # An implicit-TLS listener (RFC 8314) wraps us in TLS from the start.
        facts = SessionFacts(
            peer=self._peer_ip,
            tls=tls_active(self.transport),
            starttls_possible=self.factory.tls is not None and can_start_tls(self.transport),
            auth_possible=self.factory.checker is not None,
        )
        self.policy = SessionPolicy(self._settings, facts)
        refusal = self.factory.connections.admit(self._peer_key)
        if refusal is not None:
            if refusal == TOO_MANY_CONNECTIONS:
                reply = replies.too_many_connections(self.policy.hostname)
            else:
                reply = replies.too_many_connections_from_ip(self.policy.hostname)
            self._send(reply)
            self._close()
            return
        self._admitted = True
        self.factory.sessions.add(self)
        if self.factory.draining:
            self._send(replies.shutting_down(self.policy.hostname))
            self._close()
            return
        self._log_event(LogLevel.info, event="connect", peer=self._peer_key)
        self._send(replies.greeting(self.policy.hostname))
        self._arm_timer()

    @property
    def busy(self) -> bool:
        """
        Whether a mail transaction is under way (after MAIL, during DATA
        or a BDAT chunk, or while a decision is pending): shutting down
        waits for it.
        """
        return (
            self._transaction is not None
            or self._receiver is not None
            or self._chunk is not None
            or self._waiting is not None
        )

    def shut_down(self) -> None:
        """
        The service is stopping: close now if idle, else after the reply
        that ends the transaction in flight (see
        L{mailappliance.smtp.factory.SMTPFactory.drain}).
        """
        if not self.busy and not self._closing:
            self._send_shutting_down()
            self._close()

    def _send_shutting_down(self) -> None:
        # Unsolicited: the last command's fields (cmd=, qid=) are not logged
        # with it.
        self._context = {}
        self._send(replies.shutting_down(self.policy.hostname))

    def abort_session(self) -> None:
        """
        The drain's grace period is over: say so with C{421 4.3.2} (RFC
        5321 section 3.8), discard the message in progress now (so that its
        partial file is removed while the disk pool still runs: it is not
        acknowledged, the client sends it again) and drop the connection.
        """
        if self._connected and not self._closing:
            self._send_shutting_down()
        self._closing = True
        self._abandon_message("dropped at shutdown")
        if self._flow is not None:
            # Closed after the 421 (a TLS transport would drop it on an
            # abort), aborted if that takes long; the reactor's stop ends
            # it anyway.
            self._flow.close()
        else:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.sessions.discard(self)
        self._connected = False
        self._closing = True
        if self._flow is not None:
            self._flow.connection_lost()
        self._disarm_timer()
        self._lines.clear()
        self._abandon_message("lost")
        if self._admitted:
            self._admitted = False
            self.factory.connections.release(self._peer_key)
            tls_error = tls_error_text(reason)
            if tls_error is not None:
                self._log_event(LogLevel.info, event="tls-error", peer=self._peer_key, reason=quote(tls_error))
            self._log_event(LogLevel.info, event="disconnect", peer=self._peer_key, errors=str(self._errors))

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._arm_timer()
            if self._receiver is not None and self._waiting is None and not self._lines.buffered:
                # The body, arriving while nothing else is held: straight
                # to the DATA reader, without a copy.
                self._data_chunk(data)
            elif (
                self._chunk is not None
                and self._waiting is None
                and not self._lines.buffered
                and len(data) <= self._chunk.remaining
            ):
                # Likewise the octets of a BDAT chunk.
                self._chunk_data(data)
            else:
                self._lines.feed(data)
            self._process()
        except Exception:
            self._crashed(Failure())

    def readConnectionLost(self) -> None:
        """
        The client half-closed the connection (C{printf ... | nc -N} does,
        after pipelining a whole transaction): answer everything it sent,
        in order, then close. A message whose data did not end is not
        queued, as when the connection is lost.
        """
        self._input_ended = True
        self._process_safely()

    def writeConnectionLost(self) -> None:
        # Only our side could close it, and it never does half-way.
        pass

    # -- the input loop ----------------------------------------------------

    def _process(self) -> None:
        """
        Act on held input, in order, until it runs out or a decision is
        pending.
        """
        while not self._closing and self._waiting is None and not self._flow.blocked:
            if self._receiver is not None:
                chunk = self._lines.take_all()
                if not chunk:
                    break
                self._data_chunk(chunk)
            elif self._chunk is not None:
                octets = self._lines.take(self._chunk.remaining)
                if not octets and self._chunk.remaining:
                    break
                self._chunk_data(octets)
            else:
                line = self._lines.next_line()
                if line is None:
                    break
                self._command(line)
        if self._input_ended and not self._closing and self._waiting is None and not self._flow.blocked:
            self._input_exhausted()
            return
        self._flow_control()

    def _input_exhausted(self) -> None:
        """
        Everything the half-closed client sent is answered: close. Data
        that did not end is not queued.
        """
        self._abandon_message("closed")
        self._close()

    def _abandon_message(self, how: str) -> None:
        """
        The connection was lost or closed by the client in the middle of a
        message: nothing may be queued (RFC 5321 section 4.1.1.4, RFC 3030
        section 3); say so in the log.

        @param how: C{"lost"} or C{"closed"}, for the log line.
        """
        if self._receiver is not None:
            self._log_event(LogLevel.info, event="abort", qid=self._receiver.queue_id, peer=self._peer_key,
                            reason=quote(f"connection {how} during DATA"))
            self._receiver.abort()
            self._receiver = None
        self._abort_chunks(f"connection {how} during BDAT")

    def _flow_control(self) -> None:
        """
        Pause the transport while a decision is pending and either the disk
        asked for it or too much input is held, or while the client does
        not read its replies and too much input is held; resume otherwise.
        """
        pause = (
            self._connected
            and not self._closing
            and (
                (self._waiting is not None and self._waiting_for_disk)
                or ((self._waiting is not None or self._flow.blocked) and self._lines.buffered > MAX_PENDING_INPUT)
            )
        )
        if pause and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not pause and self._paused:
            self._paused = False
            if self._connected:
                self.transport.resumeProducing()

    def _output_changed(self) -> None:
        """
        The transport's send buffer went over its limit or drained (see
        L{mailappliance.flow}): hold the commands or go on answering them.
        """
        if not (self._closing or self._flow.blocked):
            self._process_safely()

    def _process_safely(self) -> None:
        # From the reactor (not from dataReceived): a bug ends this session
        # only.
        try:
            self._process()
        except Exception:
            self._crashed(Failure())

    def _respond(self, result: Reply | Deferred | None) -> None:
        """
        Send a command's reply now, or when its L{Deferred} fires (with a
        L{Reply}); input waits until then.
        """
        if result is None:
            return
        if isinstance(result, Reply):
            self._send(result)
            if self.factory.draining and not self.busy and not self._closing:
                # Shutting down: the transaction in flight has its answer.
                self._send_shutting_down()
                self._close()
            return
        self._wait(result, self._respond)

    def _wait(self, deferred: Deferred, then: Callable[[Any], None], disk: bool = False) -> None:
        """
        Stop processing input until C{deferred} fires, then call C{then}
        with its result and go on. A result that is already there is used
        at once, without recursion (a pipelined batch of commands whose
        lookups answer at once must not grow the stack).
        """
        immediate: list[Any] = []
        running = True

        def fired(result: Any) -> None:
            if running:
                immediate.append(result)
                return
            if self._waiting is not deferred:
                return
            self._waiting = None
            self._waiting_for_disk = False
            if self._closing:
                return
            then(result)
            self._arm_timer()
            self._process()

        self._waiting = deferred
        self._waiting_for_disk = disk
        deferred.addCallback(fired).addErrback(self._crashed)
        running = False
        if immediate:
            self._waiting = None
            self._waiting_for_disk = False
            then(immediate[0])
        else:
            self._disarm_timer()

    def _send(self, reply: Reply) -> None:
        """
        Write a reply. Refusals (4xx, 5xx) are logged with this command's
        context; the L{MAX_ERRORS}th reply of 500 or above also ends the
        session with 421 4.7.0.
        """
        if not self._connected:
            return
        if self._lines.buffered:
            # Replies to pipelined commands gather in the transport and go
            # out together (RFC 2920 section 3.2).
            self.transport.write(reply.to_bytes())
        else:
            write_now(self.transport, reply.to_bytes())
        if reply.code >= 400:
            self._log_event(
                LogLevel.info,
                event="reject",
                peer=self._peer_key,
                **self._context,
                code=str(reply.code),
                status=reply.status or "",
                reason=quote(reply.text),
            )
        if reply.code >= 500 and not self._closing:
            self._errors += 1
            if self._errors >= MAX_ERRORS:
                self._send(replies.too_many_errors(self.policy.hostname))
                self._close()

    def _close(self) -> None:
        """
        End the session after what was written (after a 221 or 421).
        """
        self._closing = True
        self._disarm_timer()
        if self._receiver is not None:
            self._receiver.abort()
            self._receiver = None
        self._abort_chunks()
        self._lines.clear()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._flow.close()

    def _crashed(self, reason: Failure) -> None:
        """
        An unexpected exception: log it with its traceback and end this
        session only.
        """
        self._log.failure(
            "service={service} event=error peer={peer} session={session} reason=unexpected-exception",
            reason,
            service=self._settings.service,
            peer=self._peer_key,
            session=self._session,
        )
        if self._closing:
            return
        self._context = {}
        try:
            self._send(replies.internal_error(self._settings.hostname))
        finally:
            self._close()

    # -- timers --------------------------------------------------------------

    def _arm_timer(self) -> None:
        """
        (Re)start the idle timer; it runs only while the session waits
        for the client.
        """
        if self._closing or self._waiting is not None:
            self._disarm_timer()
        elif self._timer is not None and self._timer.active():
            self._timer.reset(self._settings.idle_timeout)
        else:
            self._timer = self._clock.callLater(self._settings.idle_timeout, self._timed_out)

    def _disarm_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._log_event(LogLevel.info, event="timeout", peer=self._peer_key)
        self._context = {}
        self._send(replies.timeout(self.policy.hostname))
        self._close()

    # -- commands ------------------------------------------------------------

    def _command(self, line: bytes | object) -> None:
        """
        Answer one command line (or L{OVERLONG}, or L{BARE_LF}). An HTTP
        request line ends the session at once: a browser or proxy was made
        to talk to us (cross-protocol attacks), and nothing it sends is
        meant as SMTP.
        """
        self._context = {}
        if self.in_sasl_exchange:
            self._respond(self._sasl_response(line))
            return
        if line is OVERLONG:
            self._send(replies.LINE_TOO_LONG)
            return
        if line is BARE_LF:
            # Not acted on (see mailappliance.smtp.lines), but answered at
            # once, so that a client ending its lines with LF alone is not
            # left waiting for the idle time-out; counted as an error like
            # every 500. Only after a BDAT line can the session not stay
            # in step: the chunk's octets follow without a reply awaited.
            self._send(replies.BARE_LF_RECEIVED)
            if self._lines.dropped_prefix.upper() in (b"BDAT", b"BDAT ") and not self._closing:
                self._send(replies.bare_lf_after_bdat(self.policy.hostname))
                self._close()
            return
        assert isinstance(line, bytes)
        if is_http_request(line):
            self._send(replies.http_request(self.policy.hostname))
            self._close()
            return
        if b"\r" in line or b"\n" in line:
            self._send(replies.BARE_LINE_END_IN_COMMAND)
            return
        try:
            command = parse_command(line)
        except CommandRefused as e:
            self._send(e.reply)
            return
        self._context = {"cmd": command.verb}
        handler = self.handler_for(command.verb)
        if handler is None:
            known = command.verb in NOT_IMPLEMENTED_VERBS
            self._send(replies.NOT_IMPLEMENTED if known else replies.UNRECOGNISED)
            return
        try:
            result = handler(command.argument)
        except CommandRefused as e:
            result = e.reply
        self._respond(result)

    # -- the message body ----------------------------------------------------

    def _data_chunk(self, chunk: bytes) -> None:
        """
        Give body bytes to the message receiver; wait if the spool asks
        for it; at the end of the data, give back what followed it (to be
        read as commands) and answer the message.
        """
        receiver = self._receiver
        assert receiver is not None
        rest, wait = receiver.feed(chunk)
        if rest is None:
            if wait is not None:
                self._wait(wait, lambda _: None, disk=True)
            return
        self._receiver = None
        self._lines.unread(rest)
        self._respond(self._end_of_data(receiver))

    # -- logging -------------------------------------------------------------

    def _log_event(self, level: LogLevel, **fields: str | None) -> None:
        # The session id follows the peer (or ends the line): it tells
        # apart sessions from one address.
        with_session: dict[str, str | None] = {}
        for key, value in fields.items():
            with_session[key] = value
            if key == "peer":
                with_session["session"] = self._session
        with_session.setdefault("session", self._session)
        log_event(self._log, level, self._settings.service, **with_session)
