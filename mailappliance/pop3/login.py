# -*- test-case-name: tests.test_pop3_login,tests.test_pop3_server -*-
"""
Logging in to a POP3 session: USER and PASS (RFC 1939 section 7) and AUTH
PLAIN (RFC 5034; the mechanism is in L{mailappliance.pop3.sasl}), the
password checked through C{twisted.cred}, then the mailbox locked
(L{mailappliance.pop3.locks}) and its snapshot taken in the disk pool
(L{mailappliance.pop3.mailbox.scan_mailbox}). L{POP3LoginHandlers} is this
part of the session, a mixin of L{mailappliance.pop3.server.POP3Protocol}.

Slowing down password guessing: a delay before each failed-login reply
that doubles with each recent failure from the same peer address, counted
across sessions by the factory's L{LoginThrottle}.

The delay is applied to the failing session only (its reply is scheduled
on the session's clock); other sessions, from the same address or not,
carry on. A session is also closed after L{MAX_FAILURES_PER_SESSION}
failures, so a guesser has to reconnect (and meet the connection limits).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.accounts.verifier import TooManyLogins
from mailappliance.pop3.commands import TRANSACTION
from mailappliance.pop3.mailbox import MessageInfo, scan_mailbox
from mailappliance.pop3.readahead import MessageReader
from mailappliance.pop3.sasl import (
    SASLCancelled,
    SASLError,
    decode_response,
    parse_plain,
)

FIRST_FAILURE_DELAY = 1.0
MAX_FAILURE_DELAY = 16.0
MAX_FAILURES_PER_SESSION = 3

# A peer's failures are forgotten this long after its last one.
FAILURE_MEMORY = 15 * 60.0

# Bound on the peers remembered, so a flood of addresses (IPv6) costs a
# fixed amount of memory; the least recently failing are forgotten first.
MAX_TRACKED_PEERS = 10000


class LoginThrottle:
    """
    Failure counts per peer address, and the delay they earn.
    """

    def __init__(self, clock: Any) -> None:
        """
        @param clock: an L{IReactorTime} (its C{seconds()} is used).
        """
        self._clock = clock
        # peer -> (recent failures, time of the last one); oldest first
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def recent_failures(self, peer: str) -> int:
        """
        @return: the failures of C{peer} not yet forgotten.
        """
        entry = self._failures.get(peer)
        if entry is None:
            return 0
        count, last = entry
        if self._clock.seconds() - last >= FAILURE_MEMORY:
            del self._failures[peer]
            return 0
        return count

    def record_failure(self, peer: str) -> float:
        """
        Count a failed login of C{peer}.

        @return: the delay in seconds before the failure may be answered:
            L{FIRST_FAILURE_DELAY}, doubled for each earlier recent failure,
            at most L{MAX_FAILURE_DELAY}.
        """
        count = self.recent_failures(peer) + 1
        self._failures.pop(peer, None)
        self._failures[peer] = (count, self._clock.seconds())
        while len(self._failures) > MAX_TRACKED_PEERS:
            self._failures.popitem(last=False)
        return min(FIRST_FAILURE_DELAY * 2 ** min(count - 1, 32), MAX_FAILURE_DELAY)

    def record_success(self, peer: str) -> None:
        """
        Forget the failures of C{peer} after it logged in.
        """
        self._failures.pop(peer, None)


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


class POP3LoginHandlers:
    """
    USER, PASS and AUTH PLAIN, and the opening of the mailbox a login
    leads to, a mixin of L{mailappliance.pop3.server.POP3Protocol}.

    Uses the protocol's C{factory} (C{checker}, C{throttle}, C{locks},
    C{mailbox_path}, C{disk}, C{settings}, C{tls}), C{transport},
    C{state}, C{snapshot}, C{_log}, C{_clock}, C{_peer}, C{_peer_key},
    C{_tls_active}, C{_disconnected}, and its methods C{send_line},
    C{close_after} and C{block_on}. The rest of the session uses its
    C{_user_field} (the user for log lines) and C{_release_lock}.

    @ivar _user: the name given by USER, waiting for PASS.
    @ivar _sasl_pending: whether the next line is the response of an AUTH
        PLAIN exchange rather than a command.
    @ivar _login_failures: the failed logins of this session.
    @ivar _delay: the failed-login delay running, if any.
    @ivar _avatar: the logged-in user (the checker's avatar id).
    @ivar _mailbox: the mailbox folder whose lock the session holds.
    @ivar _reader_ahead: the session's L{MessageReader}, made at login.
    """

    factory: Any
    transport: Any
    state: str
    snapshot: list[MessageInfo]
    _log: Logger
    _clock: Any
    _peer: str | None
    _peer_key: str
    _tls_active: bool
    _disconnected: bool
    _user: bytes | None
    _sasl_pending: bool
    _login_failures: int
    _delay: Deferred | None
    _avatar: str | None
    _mailbox: str | None
    _reader_ahead: MessageReader | None
    send_line: Callable[[bytes], None]
    close_after: Callable[[bytes], None]
    block_on: Callable[[Deferred], None]

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
        if reason.check(TooManyLogins):
            self._log.info("service=pop3 event=login status=busy user={user} peer={peer} session={session} "
                           "method={method}", user=_printable(name), peer=self._peer_key, session=self._session,
                           method=method)
            if not self._disconnected:
                self.send_line(b"-ERR [SYS/TEMP] Too many logins at once, try again later")
            return None
        if self._disconnected and reason.check(UnauthorizedLogin, LoginFailed):
            # The client did not wait for its answer; the failure still
            # counts, and is logged, as any other.
            self.factory.throttle.record_failure(self._peer_key)
            self._log.info("service=pop3 event=login status=failed user={user} peer={peer} session={session} "
                           "method={method} delay=-", user=_printable(name), peer=self._peer_key,
                           session=self._session, method=method)
            return None
        if self._disconnected:
            return None
        if not reason.check(UnauthorizedLogin, LoginFailed):
            self._log.failure(
                "service=pop3 event=login status=error user={user} peer={peer} session={session} method={method}",
                reason,
                user=_printable(name),
                peer=self._peer_key,
                session=self._session,
                method=method,
            )
            self.send_line(b"-ERR [SYS/TEMP] Authentication temporarily unavailable")
            return None
        self._login_failures += 1
        delay = self.factory.throttle.record_failure(self._peer_key)
        self._log.info(
            "service=pop3 event=login status=failed user={user} peer={peer} "
            "session={session} method={method} delay={delay}",
            user=_printable(name),
            peer=self._peer_key,
            session=self._session,
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
                "service=pop3 event=login status=in-use user={user} peer={peer} session={session} method={method}",
                user=_printable(avatar),
                peer=self._peer_key,
                session=self._session,
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
            "service=pop3 event=login status=ok user={user} peer={peer} "
            "session={session} method={method} tls={tls} messages={count}",
            user=self._user_field(),
            peer=self._peer_key,
            session=self._session,
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
            "service=pop3 event=login status=error user={user} peer={peer} "
            "session={session} method={method} reason=mailbox",
            reason,
            user=self._user_field(),
            peer=self._peer_key,
            session=self._session,
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

    def _user_field(self) -> str:
        return _printable(self._avatar) if self._avatar else "-"
