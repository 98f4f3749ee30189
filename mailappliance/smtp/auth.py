# -*- test-case-name: tests.test_smtp_auth -*-
"""
SMTP AUTH (RFC 4954) for the SMTP server: the AUTH command and its SASL
exchange, the check of the credentials through C{twisted.cred}, and the
brakes on password guessing.

Where AUTH is offered is the policy's business
(L{mailappliance.smtp.policy.SessionPolicy.auth_refusal}); the SASL
mechanisms are in L{mailappliance.smtp.sasl}.

Guessing is slowed down in two ways:

  - every failed attempt from an address is answered only after a delay
    that doubles with each recent failure from that address (1, 2, 4 ...
    seconds, up to L{MAX_FAILURE_DELAY}), across sessions, kept by the
    factory's L{AuthFailureTracker}; the delay is a timer, so it stalls
    only the session that failed;
  - a session is closed with C{421 4.7.0} after
    L{MAX_AUTH_FAILURES_PER_SESSION} failures.

Passwords are never logged. A success is logged with the user's address;
a failure with the login name that was tried.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mailappliance.accounts.verifier import TooManyLogins
from mailappliance.address import parse_mailbox
from mailappliance.logtext import quote
from mailappliance.smtp import replies
from mailappliance.smtp.lines import BARE_LF, OVERLONG
from mailappliance.smtp.policy import SessionPolicy, SMTPSettings
from mailappliance.smtp.replies import Reply, printable
from mailappliance.smtp.sasl import (
    BadBase64,
    Credentials,
    SASLCancelled,
    SASLFailure,
    decode_response,
    encode_challenge,
    make_mechanism,
)
from mailappliance.smtp.transaction import Transaction

# Failed attempts a session may make before it is closed (Postfix's
# smtpd_hard_error_limit does the same with every error; a mail client
# with a wrong password stops after one or two).
MAX_AUTH_FAILURES_PER_SESSION = 3

# The delay before answering an address's first recent failure, doubled
# for each further one, up to the maximum (which stays well under any
# client's time-out for the reply, RFC 5321 section 4.5.3.2).
FIRST_FAILURE_DELAY = 1.0
MAX_FAILURE_DELAY = 16.0

# An address's failures are forgotten this long after its last one.
FAILURE_MEMORY = 15 * 60.0

# Addresses remembered at most; the oldest are forgotten first, so a
# flood of addresses cannot grow memory without bound.
MAX_TRACKED_PEERS = 10000

# Login names are logged at most this long.
MAX_LOGGED_NAME = 100


class AuthFailureTracker:
    """
    Counts recent failed logins per client address, to compute the delay
    before each 535 reply.
    """

    def __init__(
        self,
        clock: Any,
        first_delay: float = FIRST_FAILURE_DELAY,
        max_delay: float = MAX_FAILURE_DELAY,
        memory: float = FAILURE_MEMORY,
        max_peers: int = MAX_TRACKED_PEERS,
    ) -> None:
        """
        @param clock: an L{IReactorTime}.
        """
        self._clock = clock
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._memory = memory
        self._max_peers = max_peers
        # peer -> (recent failures, time of the last), oldest first.
        self._peers: dict[str, tuple[int, float]] = {}

    def failures(self, peer: str) -> int:
        """
        @return: the recent failures from C{peer}.
        """
        count, last = self._peers.get(peer, (0, 0.0))
        return count if self._clock.seconds() - last <= self._memory else 0

    def record_failure(self, peer: str) -> float:
        """
        Count a failure from C{peer}.

        @return: the seconds to wait before answering it.
        """
        now = self._clock.seconds()
        previous = self.failures(peer)
        self._peers.pop(peer, None)
        self._peers[peer] = (previous + 1, now)
        self._forget_old(now)
        # min() before the power keeps the exponent small.
        doublings = min(previous, 32)
        return min(self._first_delay * 2**doublings, self._max_delay)

    def forget(self, peer: str) -> None:
        """
        C{peer} has logged in: its failures no longer count.
        """
        self._peers.pop(peer, None)

    def _forget_old(self, now: float) -> None:
        for peer, (_, last) in list(self._peers.items()):
            if len(self._peers) <= self._max_peers and now - last <= self._memory:
                break
            del self._peers[peer]


class SMTPAuthHandlers:
    """
    The AUTH command and its exchange, a mixin of
    L{mailappliance.smtp.server.SMTPServerProtocol}.

    Uses the protocol's C{factory} (C{checker}, C{auth_failures}),
    C{policy}, C{_settings}, C{_clock}, C{_log}, C{_esmtp},
    C{_transaction}, C{_peer_key}, C{_closing}, C{_context}, C{_send},
    C{_close}, C{_log_event}.

    @ivar _sasl: the mechanism waiting for the client's next response,
        or L{None} outside an exchange.
    @ivar _auth_failures: failed attempts in this session.
    """

    factory: Any
    policy: SessionPolicy
    _settings: SMTPSettings
    _clock: Any
    _log: Logger
    _esmtp: bool
    _transaction: Transaction | None
    _peer_key: str
    _closing: bool
    _context: dict[str, str]
    _send: Callable[[Reply], None]
    _close: Callable[[], None]
    _log_event: Callable[..., None]
    _sasl: Any = None
    _auth_failures: int = 0

    @property
    def in_sasl_exchange(self) -> bool:
        """
        Whether the next line is a SASL response rather than a command.
        """
        return self._sasl is not None

    def _auth(self, argument: bytes) -> Reply | Deferred:
        """
        AUTH (RFC 4954 section 4): refused as the policy says (503 where
        not offered, 538 without TLS), 503 before EHLO, inside a
        transaction or once authenticated, 501 without a mechanism, 504
        for an unknown one, 501 5.5.2 for an initial response that is not
        base64. Otherwise the first challenge (C{334}), or, with an
        initial response, the next step.
        """
        refusal = self.policy.auth_refusal()
        if refusal is not None:
            return refusal
        if not self._esmtp:
            return replies.AUTH_NEED_EHLO
        if self._transaction is not None:
            return replies.AUTH_IN_TRANSACTION
        if self.policy.authenticated:
            return replies.ALREADY_AUTHENTICATED
        words = argument.split(b" ")
        if not argument or len(words) > 2 or not all(words):
            return replies.AUTH_SYNTAX
        try:
            name = words[0].decode("ascii")
        except UnicodeDecodeError:
            return replies.UNKNOWN_MECHANISM
        mechanism = make_mechanism(name)
        if mechanism is None:
            return replies.UNKNOWN_MECHANISM
        self._context["mechanism"] = mechanism.name
        if len(words) == 1:
            self._sasl = mechanism
            return replies.challenge(encode_challenge(mechanism.initial_challenge))
        try:
            response = decode_response(words[1], initial=True)
        except BadBase64:
            return replies.AUTH_BAD_BASE64
        return self._sasl_step(mechanism, response)

    def _sasl_response(self, line: bytes | object) -> Reply | Deferred:
        """
        The client's answer to a C{334} challenge: C{*} cancels (501
        5.0.0), a line that is not base64 is 501 5.5.2, an over-long one
        500 5.5.6 (RFC 4954 section 4), one that ended with a bare LF 500
        5.5.2; each ends the exchange.
        """
        mechanism, self._sasl = self._sasl, None
        self._context = {"cmd": "AUTH", "mechanism": mechanism.name}
        if line is OVERLONG:
            return replies.AUTH_LINE_TOO_LONG
        if line is BARE_LF:
            return replies.BARE_LF_RECEIVED
        assert isinstance(line, bytes)
        try:
            response = decode_response(line)
        except SASLCancelled:
            return replies.AUTH_CANCELLED
        except BadBase64:
            return replies.AUTH_BAD_BASE64
        return self._sasl_step(mechanism, response)

    def _sasl_step(self, mechanism: Any, response: bytes) -> Reply | Deferred:
        """
        Give a decoded response to the mechanism: send its next challenge,
        or check the credentials it yields.
        """
        try:
            result = mechanism.step(response)
        except SASLFailure as e:
            return self._auth_failed(mechanism.name, e.authcid, e.reason)
        if isinstance(result, Credentials):
            return self._check_credentials(mechanism.name, result)
        self._sasl = mechanism
        return replies.challenge(encode_challenge(result))

    def _check_credentials(self, mechanism: str, credentials: Credentials) -> Deferred:
        """
        Ask the checker. Its avatar id (the account's lower-case address)
        becomes the session's user: C{235 2.7.0}. L{UnauthorizedLogin} is
        a failure (delayed C{535 5.7.8}); any other error C{454 4.7.0}.
        """
        attempt = UsernamePassword(credentials.authcid, credentials.password)

        def succeeded(avatar_id: str) -> Reply:
            user = parse_mailbox(avatar_id)
            self.policy = self.policy.with_facts(user=user)
            self.factory.auth_failures.forget(self._peer_key)
            self._log_event(LogLevel.info, event="auth", status="ok", user=user.key, mechanism=mechanism,
                            peer=self._peer_key)
            return replies.AUTH_OK

        def failed(reason: Failure) -> Reply | Deferred:
            if reason.check(UnauthorizedLogin):
                return self._auth_failed(mechanism, credentials.authcid, "invalid credentials")
            if reason.check(TooManyLogins):
                # Not a wrong password, not a bug: try again later.
                self._log_event(LogLevel.info, event="auth", status="busy", mechanism=mechanism,
                                peer=self._peer_key, reason=quote(str(reason.value)))
                return replies.AUTH_TEMPORARY_FAILURE
            self._log.failure(
                "service={service} event=auth status=error mechanism={mechanism} peer={peer} session={session}",
                reason,
                service=self._settings.service,
                mechanism=mechanism,
                peer=self._peer_key,
                session=self._session,
            )
            return replies.AUTH_TEMPORARY_FAILURE

        return maybeDeferred(self.factory.checker.requestAvatarId, attempt).addCallbacks(succeeded, failed)

    def _auth_failed(self, mechanism: str, authcid: bytes | None, reason: str) -> Deferred:
        """
        Answer a failed attempt with C{535 5.7.8} after the address's
        delay; after too many failures in this session, add C{421 4.7.0}
        and close.
        """
        self._auth_failures += 1
        delay = self.factory.auth_failures.record_failure(self._peer_key)
        tried = quote(printable(authcid.decode("utf-8", "replace"), MAX_LOGGED_NAME)) if authcid else None
        self._log_event(LogLevel.info, event="auth", status="failed", user=tried, mechanism=mechanism,
                        peer=self._peer_key, reason=quote(reason), failures=str(self._auth_failures),
                        delay=f"{delay:g}")

        def answer(_: object) -> Reply | None:
            if self._closing:
                return None
            if self._auth_failures < MAX_AUTH_FAILURES_PER_SESSION:
                return replies.AUTH_FAILED
            self._send(replies.AUTH_FAILED)
            if not self._closing:
                self._send(replies.too_many_auth_failures(self.policy.hostname))
                self._close()
            return None

        return deferLater(self._clock, delay, lambda: None).addCallback(answer)
