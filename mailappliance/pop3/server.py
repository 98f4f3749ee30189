# -*- test-case-name: tests.test_pop3_server,tests.test_pop3_server_retr -*-
"""
The POP3 service: RFC 1939 with CAPA, RESP-CODES and PIPELINING
(RFC 2449), STLS (RFC 2595), AUTH PLAIN (RFC 5034, RFC 4616) and the
response codes of RFC 3206. This module is the session's core and its
factory: the connection, the command loop, the timers, the replies.

A session reads command lines with L{LineReader} and answers them strictly
in order: while a command waits for something asynchronous (a password
check, a failed-login delay, the disk pool, a message being streamed), the
session is I{busy} and later lines wait in the reader's buffer (reading
from the connection is paused when that buffer grows), then run once the
reply has gone out. The commands are checked and answered by
L{mailappliance.pop3.commands}; what takes more than a reply is in the
mixins L{POP3Protocol} is composed of: login and the opening of the
mailbox (L{mailappliance.pop3.login}), STLS (L{mailappliance.pop3.stls}),
RETR and TOP (L{mailappliance.pop3.retrieval}), and QUIT with the UPDATE
state (L{mailappliance.pop3.update}). The mailbox side lives in
L{mailappliance.pop3.mailbox} and runs in the disk pool; messages are read
there one job per message, and read ahead in batches while earlier ones
travel (L{mailappliance.pop3.readahead}); what is common to all sessions
(limits, locks, login throttling) lives in L{POP3Factory}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, INegotiated, ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.flow import OutputFlow
from mailappliance.immediate import write_now
from mailappliance.logtext import next_session_id, quote
from mailappliance.pop3 import commands
from mailappliance.pop3.commands import AUTHORIZATION, TRANSACTION, UPDATE
from mailappliance.pop3.lines import (
    MAX_COMMAND_LINE,
    MAX_SASL_LINE,
    OVERLONG,
    LineReader,
)
from mailappliance.pop3.locks import PROCESS_MAILBOX_LOCKS, MailboxLocks
from mailappliance.pop3.login import LoginThrottle, POP3LoginHandlers
from mailappliance.pop3.mailbox import MessageInfo
from mailappliance.pop3.readahead import MessageReader
from mailappliance.pop3.retrieval import POP3RetrievalHandlers
from mailappliance.pop3.settings import POP3Settings, parse_peer_ip
from mailappliance.pop3.stls import POP3STLSHandler
from mailappliance.pop3.transfer import MessageSender
from mailappliance.pop3.update import POP3UpdateHandler
from mailappliance.smtp.commands import is_http_request
from mailappliance.tls import tls_error_text

# Stop reading from a client whose pipelined input waiting behind a busy
# command exceeds this; resume once it has been worked through.
MAX_PENDING_INPUT = 64 * 1024
# Unknown, misplaced or overlong commands in a row before the session is
# closed (Dovecot's CLIENT_MAX_BAD_COMMANDS).
MAX_BAD_COMMANDS = 20

_KEYWORD = re.compile(rb"[A-Za-z]{1,8}")


@implementer(IHalfCloseableProtocol)
class POP3Protocol(POP3LoginHandlers, POP3STLSHandler, POP3RetrievalHandlers, POP3UpdateHandler, Protocol):
    """
    One POP3 session. Created by L{POP3Factory}.

    The commands that do more than reply at once are in the mixins:
    L{POP3LoginHandlers}, L{POP3STLSHandler}, L{POP3RetrievalHandlers}
    and L{POP3UpdateHandler}.

    @ivar state: L{AUTHORIZATION}, L{TRANSACTION} or L{UPDATE}.
    @ivar snapshot: the messages of the mailbox at login (message number
        N is C{snapshot[N - 1]}).
    @ivar deleted: indexes into C{snapshot} marked deleted.
    @ivar retrieved: indexes into C{snapshot} sent whole by RETR.
    """

    def __init__(self, factory: POP3Factory) -> None:
        self.factory = factory
        self.state = AUTHORIZATION
        self.snapshot: list[MessageInfo] = []
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()
        self._log = factory.log
        self._clock = factory.clock
        self._reader = LineReader(self._line_limit)
        self._peer: str | None = None
        self._peer_key = "unknown"
        self._session = next_session_id()
        self._commands = 0
        self._bad_commands = 0
        self._counted = False
        self._busy = False
        self._processing = False
        self._closing = False
        self._disconnected = False
        self._input_paused = False
        self._input_ended = False
        self._idle_call: Any = None
        self._delay: Deferred | None = None
        self._sender: MessageSender | None = None
        self._flow: OutputFlow | None = None
        self._tls_active = False
        self._user: bytes | None = None
        self._sasl_pending = False
        self._login_failures = 0
        self._avatar: str | None = None
        self._mailbox: str | None = None
        self._reader_ahead: MessageReader | None = None

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        ip = parse_peer_ip(getattr(peer, "host", None))
        self._peer = str(ip) if ip is not None else None
        self._peer_key = self._peer or "unknown"
        self._tls_active = ISSLTransport.providedBy(self.transport) or INegotiated.providedBy(self.transport)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            # Replies are small and answer a waiting client: do not let
            # Nagle's algorithm hold them back.
            try:
                set_no_delay(True)
            except OSError:
                pass
        self._flow = OutputFlow(self.transport, self._clock, self._output_changed)
        self._flow.start()
        if not self.factory.connection_opened(self._peer_key):
            self._log.info("service=pop3 event=refused peer={peer} session={session} reason=too-many-connections",
                           peer=self._peer_key, session=self._session)
            self._closing = True
            self.send_line(b"-ERR [SYS/TEMP] Too many connections, try again later")
            self._flow.close()
            return
        self._counted = True
        self._idle_call = self._clock.callLater(self.factory.settings.idle_timeout, self._idle_expired)
        self.send_line(b"+OK %s POP3 ready" % self.factory.settings.hostname.encode("utf-8"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disconnected = True
        self._closing = True
        self._reader.clear()
        if self._flow is not None:
            self._flow.connection_lost()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        if self._delay is not None:
            self._delay.cancel()
        if self._sender is not None:
            self._sender.stopProducing()
        if self._reader_ahead is not None:
            self._reader_ahead.close()
        if self._counted:
            self._counted = False
            self.factory.connection_closed(self._peer_key)
        tls_error = tls_error_text(reason)
        if tls_error is not None:
            self._log.info("service=pop3 event=tls-error peer={peer} session={session} reason={reason}",
                           peer=self._peer_key, session=self._session, reason=quote(tls_error))
        if self.state == TRANSACTION:
            self._log.info(
                "service=pop3 event=disconnect user={user} peer={peer} "
                "session={session} retrieved={retrieved} deleted=0 "
                "changes=discarded",
                user=self._user_field(),
                peer=self._peer_key,
                session=self._session,
                retrieved=len(self.retrieved),
            )
        if self.state != UPDATE:
            # In UPDATE the commit still running releases the lock when it
            # ends, so no new session snapshots a half-updated mailbox.
            self._release_lock()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._touch()
        self._reader.feed(data)
        if self._reader.buffered > MAX_PENDING_INPUT and not self._input_paused:
            self._input_paused = True
            self.transport.pauseProducing()
        self._process()

    def readConnectionLost(self) -> None:
        """
        The client half-closed the connection (C{printf ... | nc -N} does,
        after pipelining its commands): answer every command it sent, in
        order, QUIT included, then close (RFC 2449 section 6.6).
        """
        self._input_ended = True
        self._process()

    def writeConnectionLost(self) -> None:
        # Only our side could close it, and it never does half-way.
        pass

    def _touch(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self.factory.settings.idle_timeout)

    def _idle_expired(self) -> None:
        self._log.info(
            "service=pop3 event=timeout user={user} peer={peer} session={session}",
            user=self._user_field(), peer=self._peer_key, session=self._session
        )
        self._closing = True
        if self.state == UPDATE:
            return
        if self._sender is not None:
            # A client that stopped reading a message: its buffer is full,
            # so nothing more could reach it.
            self.transport.abortConnection()
            return
        # RFC 1939 section 3: close "without removing any messages or
        # sending any response".
        self._flow.close()

    def _line_limit(self, start: bytes) -> int:
        # RFC 5034 section 4 lets a SASL response be longer than a command
        # line; AUTH lines get the same room so that clients which send a
        # long initial response regardless of the 255-octet rule still work.
        if self._sasl_pending or start.upper().startswith(b"AUTH "):
            return MAX_SASL_LINE
        return MAX_COMMAND_LINE

    # -- the command loop ---------------------------------------------------

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while not (self._busy or self._closing or self._flow.blocked):
                line = self._reader.next_line()
                if line is None:
                    break
                try:
                    self._handle_line(line)
                except Exception:  # noqa: BLE001 -- one session's bug must not escape into the reactor
                    self._internal_error(Failure())
        finally:
            self._processing = False
        if self._input_ended and not (self._busy or self._closing or self._flow.blocked):
            # Everything the client sent is answered and no more can come.
            self._closing = True
            self._flow.close()
            return
        if (
            self._input_paused
            and not (self._busy or self._closing or self._flow.blocked)
            and self._reader.buffered <= MAX_PENDING_INPUT
        ):
            self._input_paused = False
            self.transport.resumeProducing()

    def _output_changed(self) -> None:
        # The transport's send buffer went over its limit or drained: hold
        # or go on answering (see mailappliance.flow).
        if not (self._flow.blocked or self._disconnected):
            self._process()

    def _handle_line(self, line: bytes | object) -> None:
        if line is OVERLONG:
            if self._sasl_pending:
                self._sasl_pending = False
            self._bad_command(b"-ERR Line too long")
            return
        assert isinstance(line, bytes)
        if self._sasl_pending:
            self._sasl_pending = False
            self._sasl_response(line, initial=False)
            return
        if self._commands == 0 and is_http_request(line):
            # A browser or proxy was made to talk to us: not a POP3 client.
            self._log.info("service=pop3 event=refused peer={peer} session={session} reason=http-request",
                           peer=self._peer_key, session=self._session)
            self.close_after(b"-ERR This is a POP3 server, not HTTP")
            return
        self._commands += 1
        keyword, _, argument = line.partition(b" ")
        if not _KEYWORD.fullmatch(keyword):
            self._bad_command(b"-ERR Unknown command")
            return
        keyword = keyword.upper()
        handler = commands.handler_for(keyword, self.state)
        if isinstance(handler, bytes):
            self._bad_command(handler)
            return
        self._bad_commands = 0
        handler(self, argument)

    def _bad_command(self, reply: bytes) -> None:
        # Dovecot's rule: the MAX_BAD_COMMANDS-th unknown, misplaced or
        # overlong command in a row ends the session (without QUIT's
        # deletions).
        self._bad_commands += 1
        if self._bad_commands < MAX_BAD_COMMANDS:
            self.send_line(reply)
            return
        self._log.info("service=pop3 event=close user={user} peer={peer} session={session} "
                       "reason=too-many-bad-commands", user=self._user_field(), peer=self._peer_key,
                       session=self._session)
        self.close_after(reply + b"; too many bad commands, closing")

    def block_on(self, d: Deferred) -> None:
        """
        Hold later commands until C{d} has fired (its callbacks write the
        reply). A failure that reaches here is an internal error.
        """
        self._busy = True

        def unblock(result: Any) -> None:
            self._busy = False
            if isinstance(result, Failure):
                self._operation_failed(result)
            if not self._disconnected:
                self._process()

        d.addBoth(unblock)

    def _operation_failed(self, reason: Failure) -> None:
        if reason.check(CancelledError) or self._disconnected:
            return
        self._internal_error(reason)

    def _internal_error(self, reason: Failure) -> None:
        self._log.failure(
            "service=pop3 event=error user={user} peer={peer} session={session}",
            reason, user=self._user_field(), peer=self._peer_key, session=self._session
        )
        if not self._disconnected:
            self.send_line(b"-ERR [SYS/TEMP] Internal server error")
            self._closing = True
            self._flow.close()

    def send_line(self, line: bytes) -> None:
        """
        Write one reply line (the CRLF is added).
        """
        if not self._disconnected:
            self._write(line + b"\r\n")

    def _write(self, data: bytes) -> None:
        # A reply the client is waiting for goes out at once; replies to
        # pipelined commands (more input already here) are left to gather
        # in the transport and go out together (RFC 2449 section 6.6).
        if self._reader.buffered:
            self.transport.write(data)
        else:
            write_now(self.transport, data)

    def send_lines(self, first: bytes, lines: list[bytes]) -> None:
        """
        Write a multi-line response: C{first}, C{lines} (dot-stuffed), and
        the terminating C{.}.
        """
        if self._disconnected:
            return
        body = [b"." + line if line.startswith(b".") else line for line in lines]
        self._write(b"".join([part + b"\r\n" for part in [first, *body, b"."]]))

    def close_after(self, line: bytes) -> None:
        """
        Send a last line and close the session.
        """
        self.send_line(line)
        self._closing = True
        if not self._disconnected:
            self._flow.close()


class POP3Factory(Factory):
    """
    Builds L{POP3Protocol} sessions and holds what they share: settings,
    the connection counts, the login throttle and the mailbox locks.

    Serve the plain and the implicit-TLS listeners of the service from one
    factory (L{mailappliance.tls.wrap_implicit_tls} wraps it) so the
    connection limits apply to the service as a whole.
    """

    protocol = POP3Protocol

    def __init__(
        self,
        checker: Any,
        mailbox_path: Callable[[str], str],
        disk: Any,
        settings: POP3Settings,
        tls: Any = None,
        clock: Any = None,
        log: Logger | None = None,
        locks: MailboxLocks | None = None,
    ) -> None:
        """
        @param checker: an L{ICredentialsChecker} for L{IUsernamePassword};
            its avatar id is the lower-cased address (C{str}).
        @param mailbox_path: maps an avatar id to its Maildir folder.
        @param disk: the disk pool (L{mailappliance.disk.DiskPool}).
        @param settings: the service settings.
        @param tls: an L{IOpenSSLServerConnectionCreator} (a
            L{mailappliance.tls.ServerTLS}) to offer STLS with, or L{None}.
        @param clock: an L{IReactorTime}; the global reactor if L{None}.
        @param log: the logger; one of namespace C{mailappliance.pop3} if
            L{None}.
        @param locks: the mailbox lock registry; the process-wide one if
            L{None}.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.checker = checker
        self.mailbox_path = mailbox_path
        self.disk = disk
        self.settings = settings
        self.tls = tls
        self.clock = clock
        self.log = log if log is not None else Logger(namespace="mailappliance.pop3")
        self.locks = locks if locks is not None else PROCESS_MAILBOX_LOCKS
        self.throttle = LoginThrottle(clock)
        self.connections = 0
        self.connections_per_ip: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> POP3Protocol:
        return self.protocol(self)

    def connection_opened(self, peer: str) -> bool:
        """
        Count a new connection, unless it would exceed a limit.

        @return: C{True} if counted (serve it), C{False} if over a limit.
        """
        if self.connections >= self.settings.max_connections:
            return False
        if self.connections_per_ip.get(peer, 0) >= self.settings.max_connections_per_ip:
            return False
        self.connections += 1
        self.connections_per_ip[peer] = self.connections_per_ip.get(peer, 0) + 1
        return True

    def connection_closed(self, peer: str) -> None:
        """
        Uncount a connection counted by L{connection_opened}.
        """
        self.connections -= 1
        remaining = self.connections_per_ip.get(peer, 0) - 1
        if remaining > 0:
            self.connections_per_ip[peer] = remaining
        else:
            self.connections_per_ip.pop(peer, None)
