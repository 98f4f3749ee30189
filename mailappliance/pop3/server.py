# -*- test-case-name: tests.test_pop3_server,tests.test_pop3_server_retr -*-
"""
The POP3 service: RFC 1939 with CAPA, RESP-CODES and PIPELINING
(RFC 2449), STLS (RFC 2595), AUTH PLAIN (RFC 5034, RFC 4616) and the
response codes of RFC 3206.

A session reads command lines with L{LineReader} and answers them strictly
in order: while a command waits for something asynchronous (a password
check, a failed-login delay, the disk pool, a message being streamed), the
session is I{busy} and later lines wait in the reader's buffer (reading
from the connection is paused when that buffer grows), then run once the
reply has gone out. The mailbox side lives in L{mailappliance.pop3.mailbox}
and runs in the disk pool; messages are read there one job per message,
and read ahead in batches while earlier ones travel
(L{mailappliance.pop3.readahead}); what is common to all sessions (limits,
locks, login throttling) lives in L{POP3Factory}.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import INegotiated, ISSLTransport, ITLSTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.dotstuff import MessageTransform
from mailappliance.immediate import write_now
from mailappliance.pop3 import commands
from mailappliance.pop3.lines import (
    MAX_COMMAND_LINE,
    MAX_SASL_LINE,
    OVERLONG,
    LineReader,
)
from mailappliance.pop3.locks import PROCESS_MAILBOX_LOCKS, MailboxLocks
from mailappliance.pop3.login import MAX_FAILURES_PER_SESSION, LoginThrottle
from mailappliance.pop3.mailbox import (
    MessageInfo,
    MessageStart,
    apply_update,
    scan_mailbox,
)
from mailappliance.pop3.readahead import NOT_HELD, MessageReader
from mailappliance.pop3.sasl import (
    SASLCancelled,
    SASLError,
    decode_response,
    parse_plain,
)
from mailappliance.pop3.settings import POP3Settings, parse_peer_ip
from mailappliance.pop3.transfer import MessageSender, TransferAborted

# Stop reading from a client whose pipelined input waiting behind a busy
# command exceeds this; resume once it has been worked through.
MAX_PENDING_INPUT = 64 * 1024

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"

_KEYWORD = re.compile(rb"[A-Za-z]{1,8}")


def _printable(value: bytes | str) -> str:
    """
    A client-supplied value made safe for a key=value log line: spaces,
    C{=}, control characters and undecodable bytes are escaped.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    out = []
    for c in value:
        if c.isprintable() and c not in " =":
            out.append(c)
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)


class POP3Protocol(Protocol):
    """
    One POP3 session. Created by L{POP3Factory}.

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
        self._counted = False
        self._busy = False
        self._processing = False
        self._closing = False
        self._disconnected = False
        self._input_paused = False
        self._idle_call: Any = None
        self._delay: Deferred | None = None
        self._sender: MessageSender | None = None
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
        if not self.factory.connection_opened(self._peer_key):
            self._log.info("service=pop3 event=refused peer={peer} reason=too-many-connections", peer=self._peer_key)
            self._closing = True
            self.send_line(b"-ERR [SYS/TEMP] Too many connections, try again later")
            self.transport.loseConnection()
            return
        self._counted = True
        self._idle_call = self._clock.callLater(self.factory.settings.idle_timeout, self._idle_expired)
        self.send_line(b"+OK %s POP3 ready" % self.factory.settings.hostname.encode("utf-8"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disconnected = True
        self._closing = True
        self._reader.clear()
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
        if self.state == TRANSACTION:
            self._log.info(
                "service=pop3 event=disconnect user={user} peer={peer} retrieved={retrieved} deleted=0 "
                "changes=discarded",
                user=self._user_field(),
                peer=self._peer_key,
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

    def _touch(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self.factory.settings.idle_timeout)

    def _idle_expired(self) -> None:
        self._log.info(
            "service=pop3 event=timeout user={user} peer={peer}", user=self._user_field(), peer=self._peer_key
        )
        self._closing = True
        if self.state == UPDATE:
            return
        if self._sender is not None:
            # A client that stopped reading a message: its buffer is full,
            # so no reply could reach it.
            self.transport.abortConnection()
            return
        self.send_line(b"-ERR Disconnected for inactivity")
        self.transport.loseConnection()

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
            while not (self._busy or self._closing):
                line = self._reader.next_line()
                if line is None:
                    break
                try:
                    self._handle_line(line)
                except Exception:  # noqa: BLE001 -- one session's bug must not escape into the reactor
                    self._internal_error(Failure())
        finally:
            self._processing = False
        if self._input_paused and not (self._busy or self._closing) and self._reader.buffered <= MAX_PENDING_INPUT:
            self._input_paused = False
            self.transport.resumeProducing()

    def _handle_line(self, line: bytes | object) -> None:
        if line is OVERLONG:
            if self._sasl_pending:
                self._sasl_pending = False
            self.send_line(b"-ERR Line too long")
            return
        assert isinstance(line, bytes)
        if self._sasl_pending:
            self._sasl_pending = False
            self._sasl_response(line, initial=False)
            return
        keyword, _, argument = line.partition(b" ")
        if not _KEYWORD.fullmatch(keyword):
            self.send_line(b"-ERR Unknown command")
            return
        keyword = keyword.upper()
        handler = commands.handler_for(keyword, self.state)
        if isinstance(handler, bytes):
            self.send_line(handler)
            return
        handler(self, argument)

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
            "service=pop3 event=error user={user} peer={peer}", reason, user=self._user_field(), peer=self._peer_key
        )
        if not self._disconnected:
            self.send_line(b"-ERR [SYS/TEMP] Internal server error")
            self._closing = True
            self.transport.loseConnection()

    def _user_field(self) -> str:
        return _printable(self._avatar) if self._avatar else "-"

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
            self.transport.loseConnection()

    # -- facts for the command handlers -------------------------------------

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

    def plaintext_login_allowed(self) -> bool:
        """
        SPEC section 5: a password in the clear only over TLS or from the
        trusted networks.
        """
        return self._tls_active or self.factory.settings.is_trusted(self._peer)

    def refuse_plaintext(self) -> None:
        if self.factory.tls is not None and ITLSTransport.providedBy(self.transport):
            self.send_line(b"-ERR [AUTH] Plaintext login requires STLS")
        else:
            self.send_line(b"-ERR [AUTH] Plaintext login not allowed from this address")

    # -- STLS ----------------------------------------------------------------

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

    # -- login ---------------------------------------------------------------

    def set_user(self, name: bytes) -> None:
        self._user = name

    def take_user(self) -> bytes | None:
        user, self._user = self._user, None
        return user

    def begin_sasl(self) -> None:
        """
        Ask for the PLAIN response (RFC 5034 section 4: an empty challenge).
        """
        self._sasl_pending = True
        self.send_line(b"+ ")

    def _sasl_response(self, line: bytes, initial: bool) -> None:
        try:
            credentials = parse_plain(decode_response(line, initial))
        except SASLCancelled as e:
            self.send_line(b"-ERR " + str(e).encode("ascii"))
            return
        except SASLError as e:
            self.send_line(b"-ERR [AUTH] " + str(e).encode("ascii"))
            return
        self.authenticate(credentials.authcid, credentials.password, "PLAIN")

    def sasl_initial_response(self, line: bytes) -> None:
        self._sasl_response(line, initial=True)

    def authenticate(self, name: bytes, password: bytes, method: str) -> None:
        """
        Check a login name and password, then open the mailbox; the reply
        follows once both are done (or after the failure delay).
        """
        self._user = None
        d = maybeDeferred(self.factory.checker.requestAvatarId, UsernamePassword(name, password))
        d.addCallbacks(
            self._authenticated,
            self._authentication_failed,
            callbackArgs=(name, method),
            errbackArgs=(name, method),
        )
        self.block_on(d)

    def _authentication_failed(self, reason: Failure, name: bytes, method: str) -> Deferred | None:
        if self._disconnected:
            return None
        if not reason.check(UnauthorizedLogin, LoginFailed):
            self._log.failure(
                "service=pop3 event=login status=error user={user} peer={peer} method={method}",
                reason,
                user=_printable(name),
                peer=self._peer_key,
                method=method,
            )
            self.send_line(b"-ERR [SYS/TEMP] Authentication temporarily unavailable")
            return None
        self._login_failures += 1
        delay = self.factory.throttle.record_failure(self._peer_key)
        self._log.info(
            "service=pop3 event=login status=failed user={user} peer={peer} method={method} delay={delay}",
            user=_printable(name),
            peer=self._peer_key,
            method=method,
            delay=delay,
        )

        def answer() -> None:
            if self._login_failures >= MAX_FAILURES_PER_SESSION:
                self.close_after(b"-ERR [AUTH] Authentication failed; closing connection")
            else:
                self.send_line(b"-ERR [AUTH] Authentication failed")

        self._delay = deferLater(self._clock, delay, answer)
        self._delay.addBoth(self._delay_over)
        return self._delay

    def _delay_over(self, result: Any) -> Any:
        self._delay = None
        return result

    def _authenticated(self, avatar_id: Any, name: bytes, method: str) -> Deferred | None:
        if self._disconnected:
            return None
        self.factory.throttle.record_success(self._peer_key)
        avatar = avatar_id.decode("utf-8") if isinstance(avatar_id, bytes) else str(avatar_id)
        mailbox = os.path.abspath(self.factory.mailbox_path(avatar))
        if not self.factory.locks.acquire(mailbox, self):
            self._log.info(
                "service=pop3 event=login status=in-use user={user} peer={peer} method={method}",
                user=_printable(avatar),
                peer=self._peer_key,
                method=method,
            )
            self.send_line(b"-ERR [IN-USE] Mailbox is in use by another session")
            return None
        self._avatar = avatar
        self._mailbox = mailbox
        d = self.factory.disk.run(scan_mailbox, mailbox)
        d.addCallbacks(self._opened, self._open_failed, callbackArgs=(method,), errbackArgs=(method,))
        return d

    def _opened(self, snapshot: list[MessageInfo], method: str) -> None:
        if self._disconnected:
            self._release_lock()
            return
        self.snapshot = snapshot
        self.state = TRANSACTION
        self._reader_ahead = MessageReader(self.factory.disk, self._mailbox)
        octets = sum(m.size for m in snapshot)
        self._log.info(
            "service=pop3 event=login status=ok user={user} peer={peer} method={method} tls={tls} messages={count}",
            user=self._user_field(),
            peer=self._peer_key,
            method=method,
            tls="yes" if self._tls_active else "no",
            count=len(snapshot),
        )
        self.send_line(b"+OK Logged in, %d messages (%d octets)" % (len(snapshot), octets))

    def _open_failed(self, reason: Failure, method: str) -> None:
        if self._disconnected:
            self._release_lock()
            return
        self._log.failure(
            "service=pop3 event=login status=error user={user} peer={peer} method={method} reason=mailbox",
            reason,
            user=self._user_field(),
            peer=self._peer_key,
            method=method,
        )
        self._release_lock()
        self._avatar = None
        if not self._disconnected:
            self.send_line(b"-ERR [SYS/TEMP] Cannot open the mailbox")

    def _release_lock(self) -> None:
        if self._mailbox is not None:
            self.factory.locks.release(self._mailbox, self)
            self._mailbox = None

    # -- RETR and TOP --------------------------------------------------------

    def send_message(self, index: int, body_lines: int | None) -> None:
        """
        Send message C{index} (RETR, or TOP with C{body_lines}): a message
        that fits in its first read goes out in one write, a larger one is
        streamed after its first chunk.
        """
        start = self._reader_ahead.take(index)
        if start is NOT_HELD:
            d = self._reader_ahead.read(index, self.snapshot[index])
            d.addCallbacks(self._message_opened, self._message_open_failed, callbackArgs=(index, body_lines))
            self.block_on(d)
        elif isinstance(start, OSError):
            self._message_open_failed(Failure(start))
        else:
            streaming = self._message_opened(start, index, body_lines)
            if streaming is not None:
                self.block_on(streaming)

    def _message_open_failed(self, reason: Failure) -> None:
        self._log.failure(
            "service=pop3 event=read-error user={user} peer={peer}",
            reason,
            user=self._user_field(),
            peer=self._peer_key,
        )
        self.send_line(b"-ERR [SYS/TEMP] Cannot read the message")

    def _message_opened(self, start: MessageStart | None, index: int, body_lines: int | None) -> Deferred | None:
        if start is None:
            self.send_line(b"-ERR [SYS/PERM] Message %d no longer exists" % (index + 1,))
            return None
        rest = start.rest
        if self._disconnected:
            if rest is not None:
                self.factory.disk.run(rest.close).addErrback(lambda _: None)
            return None
        if body_lines is None:
            first = b"+OK %d octets\r\n" % (self.snapshot[index].size,)
        else:
            first = b"+OK Top of message follows\r\n"
        transform = MessageTransform(body_lines)
        data = transform.feed(start.data)
        if rest is None or transform.complete:
            if rest is not None:
                # TOP has its lines: the rest of the file is not wanted.
                self.factory.disk.run(rest.close).addErrback(lambda _: None)
            self._write(b"".join((first, data, transform.finish())))
            self._message_sent(None, index, body_lines is None)
            return None
        self.transport.writeSequence((first, data))
        sender = self._sender = MessageSender(self.factory.disk, rest, transform, self.transport, self._touch)
        self.transport.registerProducer(sender, True)
        d = sender.start()
        d.addBoth(self._stream_ended, index, body_lines is None)
        return d

    def _stream_ended(self, result: Any, index: int, whole: bool) -> None:
        self._sender = None
        if not self._disconnected:
            self.transport.unregisterProducer()
        if not isinstance(result, Failure):
            self._message_sent(None, index, whole)
            return
        if result.check(TransferAborted) or self._disconnected:
            return
        # The +OK and part of the message are out: there is no way to
        # tell the client but to drop the connection.
        self._log.failure(
            "service=pop3 event=read-error user={user} peer={peer}",
            result,
            user=self._user_field(),
            peer=self._peer_key,
        )
        self._closing = True
        self.transport.abortConnection()

    def _message_sent(self, result: Any, index: int, whole: bool) -> None:
        if whole:
            self.retrieved.add(index)
        if self._closing:
            return
        # Clients download in order: read the next messages while this one
        # travels (see mailappliance.pop3.readahead).
        self._reader_ahead.read_ahead(self._live_after(index))

    def _live_after(self, index: int) -> Iterator[tuple[int, MessageInfo]]:
        snapshot, deleted = self.snapshot, self.deleted
        for following in range(index + 1, len(snapshot)):
            if following not in deleted:
                yield following, snapshot[following]

    # -- QUIT and the UPDATE state -------------------------------------------

    def quit(self) -> None:
        """
        QUIT: in TRANSACTION, enter UPDATE (RFC 1939 section 6), make the
        changes in the disk pool, then answer and close.
        """
        if self.state != TRANSACTION:
            self.close_after(b"+OK Bye")
            return
        self.state = UPDATE
        self._closing = True
        self._reader_ahead.close()
        deleted = [self.snapshot[i] for i in sorted(self.deleted)]
        retrieved = [self.snapshot[i] for i in sorted(self.retrieved - self.deleted)]
        mailbox = self._mailbox
        d = self.factory.disk.run(apply_update, mailbox, deleted, retrieved)
        d.addCallbacks(self._updated, self._update_failed)
        d.addBoth(self._update_finished)
        # Not block_on: the session takes no further commands anyway, and the
        # update must finish even if the connection goes away.

    def _updated(self, result: Any) -> None:
        self._log.info(
            "service=pop3 event=logout user={user} peer={peer} retrieved={retrieved} deleted={deleted} failed={failed}",
            user=self._user_field(),
            peer=self._peer_key,
            retrieved=len(self.retrieved),
            deleted=result.deleted,
            failed=result.failed,
        )
        if result.failed:
            self.close_after(b"-ERR [SYS/TEMP] Some changes could not be made")
        else:
            self.close_after(b"+OK Bye")

    def _update_failed(self, reason: Failure) -> None:
        self._log.failure(
            "service=pop3 event=logout status=error user={user} peer={peer}",
            reason,
            user=self._user_field(),
            peer=self._peer_key,
        )
        self.close_after(b"-ERR [SYS/TEMP] Some changes could not be made")

    def _update_finished(self, result: Any) -> None:
        self._release_lock()


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
