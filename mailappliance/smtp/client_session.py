# -*- test-case-name: tests.test_smtp_client_session,tests.test_smtp_client -*-
"""
One SMTP session with one remote server: the dialogue of RFC 5321 section
3.3 with the extensions we use (RFC 3207 STARTTLS, RFC 4954 AUTH, RFC 1870
SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 2920 PIPELINING).

L{Session.run} decides what it can for the recipients it was given and
reports a problem when this host could not take the message (refused
greeting, 4xx to MAIL, lost connection, time-out, ...): the recipients it
left undecided then go to the next address or host.
"""

from __future__ import annotations

import base64
from dataclasses import astuple, dataclass, field

from twisted.internet import defer
from twisted.logger import Logger

from mailappliance.smtp.client_body import BodyProducer
from mailappliance.smtp.client_outcome import (
    DELIVERED,
    PERMANENT,
    TEMPORARY,
    RecipientResult,
)
from mailappliance.smtp.client_protocol import ConnectionProblem, Reply
from mailappliance.smtp.client_tls import client_tls_creator

# RFC 5321 section 4.5.3.2 time-outs, in seconds.
GREETING_TIMEOUT = 5 * 60  # 4.5.3.2.1, initial 220 message
MAIL_TIMEOUT = 5 * 60  # 4.5.3.2.2
RCPT_TIMEOUT = 5 * 60  # 4.5.3.2.3
DATA_INIT_TIMEOUT = 2 * 60  # 4.5.3.2.4, the 354 after DATA
DATA_BLOCK_TIMEOUT = 3 * 60  # 4.5.3.2.5, each wait for the network to take data
DATA_END_TIMEOUT = 10 * 60  # 4.5.3.2.6, the reply after the final dot
# Not in 4.5.3.2: EHLO/HELO, STARTTLS and AUTH get MAIL's 5 minutes.
COMMAND_TIMEOUT = 5 * 60
# Nothing depends on the reply to QUIT; do not keep the connection long.
QUIT_TIMEOUT = 60

log = Logger()

TLS_REQUIRED = "required"
TLS_OPPORTUNISTIC = "opportunistic"
TLS_NONE = "none"


@dataclass(frozen=True)
class Timeouts:
    """
    The reply time-outs of a session, in seconds.
    """

    greeting: float = GREETING_TIMEOUT
    command: float = COMMAND_TIMEOUT
    mail: float = MAIL_TIMEOUT
    rcpt: float = RCPT_TIMEOUT
    data_init: float = DATA_INIT_TIMEOUT
    data_block: float = DATA_BLOCK_TIMEOUT
    data_end: float = DATA_END_TIMEOUT
    quit: float = QUIT_TIMEOUT

    def scaled(self, factor: float) -> Timeouts:
        """
        @return: these time-outs multiplied by C{factor} (tests use a small
            one).
        """
        return Timeouts(*(value * factor for value in astuple(self)))


def parse_extensions(reply: Reply) -> dict[str, tuple[str, ...]]:
    """
    The service extensions announced in a 250 reply to EHLO (RFC 5321
    section 4.1.1.1): upper-case keyword to its parameters. The old
    C{AUTH=PLAIN LOGIN} form (pre-RFC 4954) counts as C{AUTH}.
    """
    extensions: dict[str, tuple[str, ...]] = {}
    for line in reply.lines[1:]:
        words = line.split()
        if not words:
            continue
        keyword, parameters = words[0].upper(), tuple(words[1:])
        if keyword.startswith("AUTH="):
            keyword, parameters = "AUTH", (keyword[5:],) + parameters
        extensions[keyword] = extensions.get(keyword, ()) + parameters
    return extensions


def size_limit(extensions: dict[str, tuple[str, ...]]) -> int | None:
    """
    @return: the fixed maximum message size of C{SIZE n}, or L{None} when
        none is announced (no SIZE, C{SIZE 0} or a malformed number; RFC
        1870 section 4).
    """
    parameters = extensions.get("SIZE")
    if not parameters or not parameters[0].isdigit():
        return None
    return int(parameters[0]) or None


def _status_for(reply: Reply) -> str:
    # Only a 2xx delivers; an unexpected 1xx or 3xx (a peer out of step)
    # never counts as delivered (RFC 5321 section 4.3.2).
    if reply.code // 100 == 2:
        return DELIVERED
    return PERMANENT if reply.code >= 500 else TEMPORARY


def _wire_name(name: str) -> bytes:
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        return name.encode("idna")


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


class _HostRefused(Exception):
    """
    A reply said this host will not take the message now; after a polite
    QUIT the undecided recipients go on to the next host.
    """

    def __init__(self, problem: ConnectionProblem) -> None:
        super().__init__(problem.reason)
        self.problem = problem


@dataclass
class SessionResult:
    """
    What one session achieved.

    @ivar decided: recipient to result, for the recipients decided here.
    @ivar problem: why this host could not take the rest, or L{None}.
    @ivar tls_protocol: the TLS version used, or L{None} without TLS.
    @ivar tls_cipher: the TLS cipher used, or L{None}.
    @ivar extensions: what the server announced (its last EHLO reply).
    @ivar reusable: the session was asked to keep the connection, its
        transaction ended with a 2xx reply to the end of the data, and the
        connection is idle: it was left open, without QUIT, for another
        transaction (L{mailappliance.smtp.client_cache}).
    """

    decided: dict[str, RecipientResult] = field(default_factory=dict)
    problem: ConnectionProblem | None = None
    tls_protocol: str | None = None
    tls_cipher: str | None = None
    extensions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reusable: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_protocol is not None


class Session:
    """
    The dialogue with one connected server.

    @param channel: a connected L{SMTPClientChannel}.
    @param host_name: the server's name (TLS checks, results, logs).
    @param message: the L{OutboundMessage}.
    @param recipients: the recipients still to decide, in order.
    @param options: the L{ClientOptions}.
    @param use_tls: whether to use STARTTLS when offered (L{False} when
        C{options.tls} is C{"none"} and when retrying after a failed
        opportunistic handshake).
    @param timeouts: the L{Timeouts}.
    @param disk: the disk pool to read the body with.
    @param fd: the open spool file.
    @param clock: an L{IReactorTime}.
    @param reused: an L{IdleConnection} whose channel this is: a session
        that already greeted (and did STARTTLS and AUTH), so this one
        starts at MAIL; or L{None} for a new connection.
    @param keep: leave the connection open after a clean transaction (see
        L{SessionResult.reusable}) instead of saying QUIT.
    """

    def __init__(self, channel, host_name, message, recipients, options, use_tls, timeouts, disk, fd, clock,
                 reused=None, keep: bool = False) -> None:
        self._channel = channel
        self._host = host_name
        self._message = message
        self._recipients = list(recipients)
        self._options = options
        self._use_tls = use_tls
        self._timeouts = timeouts
        self._disk = disk
        self._fd = fd
        self._clock = clock
        self._reused = reused
        self._keep = keep
        self._clean = False
        self._result = SessionResult()

    @defer.inlineCallbacks
    def run(self):
        """
        @return: a L{Deferred} firing with a L{SessionResult}; it never
            fails.
        """
        try:
            yield self._dialogue()
        except _HostRefused as refused:
            self._result.problem = refused.problem
            yield self._quit()
        except ConnectionProblem as problem:
            self._result.problem = problem
            self._channel.fail(problem)
        except Exception as e:  # noqa: BLE001 - a bug ends this session only
            log.failure("unexpected error in the session with {host}", host=self._host)
            problem = ConnectionProblem(f"internal error: {type(e).__name__}: {e}", "4.3.0", retry_elsewhere=False)
            self._result.problem = problem
            self._channel.fail(problem)
        else:
            if self._keep and self._clean and self._channel.idle:
                self._result.reusable = True
            else:
                yield self._quit()
        return self._result

    @defer.inlineCallbacks
    def _dialogue(self):
        if self._reused is not None:
            # RFC 5321 section 4.1.4: after a completed transaction the
            # next may begin with MAIL; greeting, EHLO, TLS and AUTH hold.
            extensions = self._reused.extensions
            self._result.tls_protocol = self._reused.tls_protocol
            self._result.tls_cipher = self._reused.tls_cipher
        else:
            greeting = yield self._channel.expect(self._timeouts.greeting, "greeting")
            if greeting.code != 220:
                # RFC 5321 section 3.1: 554 means no SMTP service here; like
                # a 4xx greeting, another host may do better.
                self._refused(greeting, "greeting")
            extensions = yield self._hello()
            if self._use_tls:
                extensions = yield self._starttls(extensions)
        self._result.extensions = extensions
        if not self._within_limits(extensions):
            return
        if self._options.auth is not None and self._reused is None:
            authenticated = yield self._authenticate(extensions)
            if not authenticated:
                return
        yield self._transaction(extensions)

    def _command(self, command: bytes, timeout: float, what: str) -> defer.Deferred:
        return self._channel.command(command, timeout, f"reply to {what}")

    @defer.inlineCallbacks
    def _hello(self):
        name = _wire_name(self._options.helo_hostname)
        reply = yield self._command(b"EHLO " + name, self._timeouts.command, "EHLO")
        if reply.code == 250:
            return parse_extensions(reply)
        if reply.code >= 500:
            # RFC 5321 section 3.2: a server that does not know EHLO.
            reply = yield self._command(b"HELO " + name, self._timeouts.command, "HELO")
            if reply.code == 250:
                return {}
        self._refused(reply, "EHLO")

    @defer.inlineCallbacks
    def _starttls(self, extensions):
        required = self._options.tls == TLS_REQUIRED
        if "STARTTLS" not in extensions:
            if required:
                self._refuse(f"TLS is required but {self._host} does not offer STARTTLS", "4.7.5")
            return extensions
        creator = client_tls_creator(self._host, self._options.tls_verify, self._options.trust_root)
        reply = yield self._channel.starttls(creator, self._timeouts.command)
        if reply.code != 220:
            if required:
                self._refuse(f"TLS is required but {self._host} refused STARTTLS: {reply}", "4.7.5", reply)
            # Opportunistic: carry on in the clear (RFC 3207 section 4.1).
            return extensions
        # RFC 3207 section 4.2: forget what the server said before TLS and
        # ask again; a failed handshake fails this wait.
        reply = yield self._command(b"EHLO " + _wire_name(self._options.helo_hostname), self._timeouts.command, "EHLO")
        if reply.code != 250:
            self._refused(reply, "EHLO after STARTTLS")
        self._result.tls_protocol, self._result.tls_cipher = self._channel.tls_description()
        if self._result.tls_protocol is None:
            self._result.tls_protocol = "TLS"
        return parse_extensions(reply)

    def _within_limits(self, extensions) -> bool:
        message = self._message
        limit = size_limit(extensions)
        if limit is not None and message.size > limit:
            why = f"message size {message.size} exceeds the limit of {limit} announced by {self._host}"
            self._decide_all(PERMANENT, why, "5.3.4")
        elif message.eight_bit and "8BITMIME" not in extensions:
            # RFC 6152 section 3: 8-bit content may not go to a server
            # without 8BITMIME; we do not convert it to 7 bits, so it is
            # returned. (A 7-bit message declared 8BITMIME never gets
            # here: eight_bit says what the message holds.)
            why = f"{self._host} does not support 8BITMIME; the 8-bit message is not converted"
            self._decide_all(PERMANENT, why, "5.6.3")
        elif message.smtputf8 and "SMTPUTF8" not in extensions:
            why = f"{self._host} does not support SMTPUTF8, which the message needs"
            self._decide_all(PERMANENT, why, "5.6.7")
        else:
            return True
        return False

    @defer.inlineCallbacks
    def _authenticate(self, extensions):
        username, password = self._options.auth
        if self._result.tls_protocol is None and self._options.tls != TLS_NONE:
            self._refuse(f"not sending credentials to {self._host} without TLS", "4.7.0")
        if "AUTH" not in extensions:
            self._refuse(f"{self._host} does not offer AUTH", "4.7.0")
        mechanisms = {m.upper() for m in extensions["AUTH"]}
        timeout = self._timeouts.command
        if "PLAIN" in mechanisms:
            # RFC 4616: authorisation identity empty, then user and password.
            response = base64.b64encode(b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8"))
            reply = yield self._command(b"AUTH PLAIN " + response, timeout, "AUTH PLAIN")
        elif "LOGIN" in mechanisms:
            reply = yield self._command(b"AUTH LOGIN", timeout, "AUTH LOGIN")
            if reply.code == 334:
                reply = yield self._command(_b64(username), timeout, "AUTH LOGIN user name")
            if reply.code == 334:
                reply = yield self._command(_b64(password), timeout, "AUTH LOGIN password")
        else:
            offered = " ".join(sorted(mechanisms)) or "none"
            self._refuse(f"{self._host} offers no AUTH mechanism we support (offered: {offered})", "4.7.0")
        if reply.code == 235:
            return True
        # Every failure, 535 included, fails the host temporarily. A 535
        # (RFC 4954 section 6: the credentials are invalid) is our
        # configuration's fault or the provider's (a rotated password, a
        # lock-out), never the message's: the mail waits in the queue for
        # the administrator to fix it (as with Postfix's default
        # smtp_sasl_auth_soft_bounce = yes) instead of bouncing. The
        # host-failed and deferred log lines carry the server's reply.
        self._refused(reply, "AUTH")

    @defer.inlineCallbacks
    def _transaction(self, extensions):
        message = self._message
        mail = b"MAIL FROM:<" + message.sender.encode("utf-8") + b">"
        if "SIZE" in extensions:
            mail += b" SIZE=%d" % (message.size,)
        if message.eight_bit:
            mail += b" BODY=8BITMIME"
        if message.smtputf8:
            mail += b" SMTPUTF8"
        rcpts = [b"RCPT TO:<" + r.encode("utf-8") + b">" for r in self._recipients]
        t = self._timeouts
        if "PIPELINING" in extensions:
            # RFC 2920 section 3.1: MAIL, the RCPTs and DATA in one write;
            # the replies come back in the same order.
            waits = [self._channel.expect(t.mail, "reply to MAIL")]
            waits += [self._channel.expect(t.rcpt, "reply to RCPT") for _ in rcpts]
            waits.append(self._channel.expect(t.data_init, "reply to DATA"))
            self._channel.send(mail, *rcpts, b"DATA")
            outcomes = yield defer.DeferredList(waits, consumeErrors=True)
            try:
                mail_accepted = self._mail_accepted(_reply_at(outcomes, 0))
            except _HostRefused:
                yield self._end_unwanted_data(outcomes[-1])
                raise
            accepted = []
            if mail_accepted:
                for index, recipient in enumerate(self._recipients, 1):
                    accepted += self._sort_rcpt_replies([(recipient, _reply_at(outcomes, index))])
            if not accepted:
                yield self._end_unwanted_data(outcomes[-1])
                return
            data_reply = _reply_at(outcomes, len(outcomes) - 1)
        else:
            mail_reply = yield self._channel.command(mail, t.mail, "reply to MAIL")
            if not self._mail_accepted(mail_reply):
                return
            accepted = []
            for recipient, command in zip(self._recipients, rcpts):
                reply = yield self._channel.command(command, t.rcpt, "reply to RCPT")
                accepted += self._sort_rcpt_replies([(recipient, reply)])
            if not accepted:
                return
            data_reply = yield self._channel.command(b"DATA", t.data_init, "reply to DATA")
        if data_reply.code != 354:
            if data_reply.code < 400:
                raise ConnectionProblem(f"protocol error: unexpected reply to DATA: {data_reply}", "4.5.0")
            self._decide(accepted, data_reply)
            return
        producer = BodyProducer(self._disk, self._fd, self._clock, t.data_block)
        self._channel.stream_body(producer)
        try:
            yield producer.send_to(self._channel.transport)
        finally:
            self._channel.body_done()
        final = yield self._channel.expect(t.data_end, "reply to end of data")
        if 300 <= final.code < 400:
            raise ConnectionProblem(f"protocol error: unexpected reply to end of data: {final}", "4.5.0")
        self._decide(accepted, final)
        self._clean = final.code // 100 == 2

    def _mail_accepted(self, reply: Reply) -> bool:
        if reply.code // 100 == 2:
            return True
        if reply.code >= 500:
            self._decide(self._recipients, reply)
            return False
        self._refused(reply, "MAIL")

    def _sort_rcpt_replies(self, pairs) -> list[str]:
        accepted = []
        for recipient, reply in pairs:
            if reply.code // 100 == 2:
                accepted.append(recipient)
            elif reply.code < 400:
                # RCPT succeeds with 250, 251 or 252 only (RFC 5321 section
                # 4.3.2): a 1xx or 3xx means the peer is out of step (a
                # reply missing from a pipelined batch, say). Nothing is
                # sent; every recipient waits for another try.
                raise ConnectionProblem(f"protocol error: unexpected reply to RCPT: {reply}", "4.5.0")
            elif reply.code == 552:
                # RFC 5321 section 4.5.3.1.10: a 552 to RCPT is an old
                # "too many recipients", to be taken as temporary (as
                # Postfix does): the recipient goes in another transaction.
                self._result.decided[recipient] = RecipientResult(recipient, TEMPORARY, str(reply), "4.5.3",
                                                                  self._host, True)
            else:
                self._decide([recipient], reply)
        return accepted

    @defer.inlineCallbacks
    def _end_unwanted_data(self, data_outcome):
        """
        A pipelined DATA that got 354 although nothing can be delivered:
        send an empty message's end so the dialogue stays in step (RFC 2920
        section 3.1); its reply changes nothing.
        """
        succeeded, reply = data_outcome
        if succeeded and reply.code == 354:
            self._channel.send(b".")
            yield self._channel.expect(self._timeouts.data_end, "reply to end of data")

    @defer.inlineCallbacks
    def _quit(self):
        try:
            yield self._command(b"QUIT", self._timeouts.quit, "QUIT")
        except ConnectionProblem:
            pass
        self._channel.close()

    # Decisions

    def _decide(self, recipients, reply: Reply) -> None:
        for recipient in recipients:
            self._result.decided[recipient] = RecipientResult(
                recipient, _status_for(reply), str(reply), reply.status_or(), self._host, True
            )

    def _decide_all(self, status: str, why: str = "", status_code: str = "", reply: Reply | None = None) -> None:
        for recipient in self._recipients:
            if reply is not None:
                result = RecipientResult(recipient, status, str(reply), reply.status_or(status_code), self._host, True)
            else:
                result = RecipientResult(recipient, status, why, status_code, self._host, False)
            self._result.decided[recipient] = result

    def _refuse(self, why: str, status: str, reply: Reply | None = None):
        raise _HostRefused(ConnectionProblem(why, status, reply=reply))

    def _refused(self, reply: Reply, stage: str):
        why = f"{self._host} refused {stage}: {reply}" if stage != "greeting" else f"{self._host} greeted with: {reply}"
        status = reply.status_or()
        raise _HostRefused(ConnectionProblem(why, "4" + status[1:], reply=reply))


def _reply_at(outcomes, index: int) -> Reply:
    """
    The reply in a L{defer.DeferredList} result, or raise the
    L{ConnectionProblem} that stopped it from coming.
    """
    succeeded, value = outcomes[index]
    if not succeeded:
        value.raiseException()
    return value
