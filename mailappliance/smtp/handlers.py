# -*- test-case-name: tests.test_smtp_server,tests.test_smtp_server_flow -*-
"""
The SMTP commands (RFC 5321 section 4.1.1): what each verb does to the
session, and the end of a message's data.

L{SMTPCommandHandlers} is a mixin of
L{mailappliance.smtp.server.SMTPServerProtocol}, which owns the I/O
(input loop, pipelining, flow control, timers); the handlers only decide.
A handler takes the command's argument and returns its L{Reply}, or a
L{Deferred} firing with it (a recipient lookup, a commit), or L{None} when
it has written its reply itself or will once the data is read (DATA, BDAT,
QUIT); a L{CommandRefused} it raises is answered with its reply. What a
session may do is asked of its L{SessionPolicy}. STARTTLS, AUTH and BDAT
are in L{mailappliance.smtp.starttls}, L{mailappliance.smtp.auth} and
L{mailappliance.smtp.chunking}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mailappliance.address import Mailbox
from mailappliance.interfaces import ResolutionError, Resolved, TemporaryResolutionError, UnknownAddress
from mailappliance.queue.envelope import Envelope
from mailappliance.smtp import replies
from mailappliance.smtp.commands import MailFrom, names_postmaster, parse_mail, parse_rcpt
from mailappliance.smtp.events import angle_path
from mailappliance.smtp.headers import HeaderCompleter
from mailappliance.smtp.policy import SessionPolicy, SMTPSettings
from mailappliance.smtp.received import address_literal, received_header, rfc5322_date
from mailappliance.smtp.receiver import BodyReader, MessageReceiver, commit_failure_reply
from mailappliance.smtp.replies import Reply
from mailappliance.smtp.starttls import tls_description
from mailappliance.smtp.transaction import Transaction

Handler = Callable[[bytes], "Reply | Deferred | None"]


class SMTPCommandHandlers:
    """
    The handlers of the SMTP verbs, by L{handler_for}.

    Uses the protocol's state: C{factory} (C{resolver}, C{spool}),
    C{policy}, C{_settings}, C{_clock}, C{_log}, C{_helo}, C{_esmtp},
    C{_transaction}, C{_receiver}, C{_peer_ip}, C{_peer_key}, C{_context}
    (the fields of this command's log lines); and its methods C{_send},
    C{_close}, C{_wait}, C{_log_event}.
    """

    factory: Any
    transport: Any
    policy: SessionPolicy
    _settings: SMTPSettings
    _clock: Any
    _log: Logger
    _helo: str | None
    _esmtp: bool
    _transaction: Transaction | None
    _receiver: MessageReceiver | None
    _chunks_refused: Reply | None
    _peer_ip: Any
    _peer_key: str
    _context: dict[str, str]
    _send: Callable[[Reply], None]
    _close: Callable[[], None]
    _wait: Callable[..., None]
    _log_event: Callable[..., None]
    _starttls: Handler
    _auth: Handler
    _bdat: Handler

    def handler_for(self, verb: str) -> Handler | None:
        """
        @param verb: an upper-case command verb.
        @return: its handler, or L{None} if the verb is not offered.
        """
        return {
            "EHLO": self._ehlo,
            "HELO": self._helo_command,
            "MAIL": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data,
            "BDAT": self._bdat,
            "RSET": self._rset,
            "NOOP": self._noop,
            "QUIT": self._quit,
            "VRFY": self._vrfy,
            "EXPN": self._expn,
            "HELP": self._help,
            "STARTTLS": self._starttls,
            "AUTH": self._auth,
        }.get(verb)

    def _greet(self, argument: bytes, esmtp: bool) -> Reply:
        """
        EHLO and HELO (RFC 5321 section 4.1.1.1): one printable ASCII word
        (the client's name, kept for C{Received:}; not checked against
        DNS), else 501. Ends any transaction.
        """
        try:
            name = argument.decode("ascii")
        except UnicodeDecodeError:
            name = ""
        if not name or " " in name or not name.isprintable():
            return replies.EHLO_SYNTAX if esmtp else replies.HELO_SYNTAX
        # RFC 5321 section 4.1.4: EHLO/HELO ends any transaction.
        self._reset_transaction()
        self._helo = name
        self._esmtp = esmtp
        if esmtp:
            greeting = f"Hello {name} {address_literal(self._peer_ip)}"
            return replies.ehlo_reply(self.policy.hostname, greeting, self.policy.extensions())
        return replies.helo_ok(self.policy.hostname)

    def _ehlo(self, argument: bytes) -> Reply:
        return self._greet(argument, esmtp=True)

    def _helo_command(self, argument: bytes) -> Reply:
        return self._greet(argument, esmtp=False)

    def _mail(self, argument: bytes) -> Reply | Deferred:
        """
        MAIL (RFC 5321 section 4.1.1.2): 503 before EHLO/HELO or inside a
        transaction, 530 when the policy requires AUTH, 552 when the
        declared SIZE is over the limit (RFC 1870 section 6.1), 553 5.7.1
        for a sender the authenticated user does not own (looked up
        through the resolver when the policy asks; 451 4.3.0 if that
        lookup fails temporarily), else a new transaction.

        @raise CommandRefused: for the argument's syntax and parameters.
        """
        if self._helo is None:
            return replies.NEED_HELO
        if self._transaction is not None:
            return replies.NESTED_MAIL
        if self.policy.auth_required:
            return self.policy.auth_required_reply()
        mail = parse_mail(argument, self._esmtp)
        self._context["from"] = angle_path(mail.sender)
        if mail.size is not None and mail.size > self.policy.max_message_size:
            return replies.MESSAGE_TOO_BIG
        space = self.factory.space
        if mail.size is not None and space is not None and space.too_little_for(mail.size):
            return replies.QUEUE_FULL
        if self.policy.sender_needs_lookup(mail.sender):
            return self._sender_resolves_to_user(mail.sender).addCallback(
                lambda owned: owned if isinstance(owned, Reply) else self._begin(mail, owned)
            )
        return self._begin(mail, False)

    def _begin(self, mail: MailFrom, resolves_to_user: bool) -> Reply:
        """
        Start the transaction, unless the policy refuses the sender.
        """
        refusal = self.policy.sender_refusal(mail.sender, resolves_to_user)
        if refusal is not None:
            return refusal
        self._transaction = Transaction(mail)
        # A new transaction: chunks of a failed one are no longer expected.
        self._chunks_refused = None
        return replies.SENDER_OK

    def _sender_resolves_to_user(self, sender: Mailbox) -> Deferred:
        """
        Whether C{sender}'s resolution through the resolver chain includes
        the authenticated user's account (an alias that points at them).

        @return: a L{Deferred} firing with a L{bool}, or with C{451 4.3.0}
            when the lookup failed temporarily (a permanent failure, such
            as an unknown address, means "no").
        """
        user = self.policy.facts.user
        assert user is not None

        def resolved(result: Resolved) -> bool:
            return any(target.key == user.key for target in result.local)

        def failed(reason: Failure) -> bool | Reply:
            if reason.check(TemporaryResolutionError):
                return replies.SENDER_LOOKUP_FAILED
            if reason.check(ResolutionError):
                return False
            self._log.failure(
                "service={service} event=error peer={peer} session={session} from={sender} reason=sender-lookup-failed",
                reason,
                service=self._settings.service,
                peer=self._peer_key,
                session=self._session,
                sender=angle_path(sender),
            )
            return replies.SENDER_LOOKUP_FAILED

        return maybeDeferred(self.factory.resolver.resolve, sender).addCallbacks(resolved, failed)

    def _rcpt(self, argument: bytes) -> Reply | Deferred:
        """
        RCPT (RFC 5321 section 4.1.1.3): 503 outside a transaction, 452
        4.5.3 beyond the recipient limit (RFC 5321 section 4.5.3.1.10),
        then by domain: a local domain is resolved (L{UnknownAddress} is
        550 5.1.1, another L{ResolutionError} gives its own reply, any
        other failure 451 4.3.0), another domain is accepted as a remote
        target only when the policy allows relaying (else 554 5.7.1).

        @raise CommandRefused: for the argument's syntax.
        """
        transaction = self._transaction
        if transaction is None:
            return replies.NEED_MAIL
        if transaction.message is not None:
            return replies.RCPT_AFTER_BDAT
        transaction.rcpt_tried = True
        self._context["from"] = angle_path(transaction.sender)
        recipient = parse_rcpt(argument, transaction.mail.smtputf8, self.policy.postmaster)
        self._context["to"] = angle_path(recipient)
        if len(transaction.recipients) >= self.policy.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if not self.factory.resolver.is_local_domain(recipient.domain):
            # <Postmaster> is accepted from anyone (RFC 5321 section 4.5.1),
            # also when the configured postmaster is elsewhere.
            if not self.policy.may_relay and not names_postmaster(argument):
                return replies.RELAY_DENIED
            transaction.add(Resolved(recipient, remote=(recipient,)))
            return replies.RECIPIENT_OK

        def resolved(result: Resolved) -> Reply:
            transaction.add(result)
            return replies.RECIPIENT_OK

        def failed(reason: Failure) -> Reply:
            if reason.check(UnknownAddress):
                return replies.UNKNOWN_USER
            if reason.check(ResolutionError):
                error = reason.value
                return replies.reply(error.code, error.status, f"Error: {replies.printable(error.reason)}")
            self._log.failure(
                "service={service} event=error peer={peer} session={session} to={to} reason=lookup-failed",
                reason,
                service=self._settings.service,
                peer=self._peer_key,
                session=self._session,
                to=self._context["to"],
            )
            return replies.LOOKUP_FAILED

        d = maybeDeferred(self.factory.resolver.resolve, recipient)
        postmaster = self.policy.postmaster
        if recipient.local.lower() == "postmaster" and recipient.key != postmaster.key:
            d.addErrback(self._postmaster_fallback, recipient, postmaster)
        return d.addCallbacks(resolved, failed)

    def _postmaster_fallback(self, reason: Failure, recipient: Mailbox, postmaster: Mailbox) -> Any:
        """
        C{postmaster@} a local domain that has no account or alias of that
        name reaches the configured postmaster: RFC 5321 section 4.5.1
        requires it for every domain we accept mail for.
        """
        reason.trap(UnknownAddress)
        if not self.factory.resolver.is_local_domain(postmaster.domain):
            return Resolved(recipient, remote=(postmaster,))
        d = maybeDeferred(self.factory.resolver.resolve, postmaster)
        return d.addCallback(lambda found: Resolved(recipient, found.local, found.remote, found.unknown))

    def _data(self, argument: bytes) -> Reply | None:
        """
        DATA (RFC 5321 section 4.1.1.4): 503 before MAIL or RCPT, or after
        BDAT in the same transaction (RFC 3030 section 3), 554 5.5.1 when
        every RCPT was refused (RFC 2920 section 3.1: what follows is then
        read as commands). Otherwise start a message in the spool, reply
        354, write our C{Received:} header and switch the session to
        reading the body.
        """
        transaction = self._transaction
        if argument:
            return replies.NO_ARGUMENTS
        if transaction is None:
            return replies.NEED_MAIL
        self._context["from"] = angle_path(transaction.sender)
        if transaction.message is not None:
            return replies.DATA_AFTER_BDAT
        if not transaction.recipients:
            return replies.NO_VALID_RECIPIENTS if transaction.rcpt_tried else replies.NEED_RCPT
        started = self._start_message(transaction)
        if isinstance(started, Reply):
            return started
        receiver, header = started
        self._receiver = receiver
        self._send(replies.START_DATA)
        wait = receiver.write_header(header)
        if wait is not None:
            self._wait(wait, lambda _: None, disk=True)
        return None

    def _start_message(
        self, transaction: Transaction, reader: BodyReader | None = None
    ) -> tuple[MessageReceiver, bytes] | Reply:
        """
        Start the transaction's message in the spool (for DATA, or at the
        first BDAT chunk).

        @param reader: the receiver's L{BodyReader}; a DATA reader by
            default.
        @return: the L{MessageReceiver} (completing the header on the
            submission service; on both, putting an empty line after our
            header when the message has no header section) and our
            C{Received:} header, to be written first; or C{451 4.3.0} if
            the spool cannot start a message.
        """
        try:
            writer = self.factory.spool.new_message(expected=(transaction.sender, transaction.envelope_recipients()))
        except Exception:
            self._log.failure(
                "service={service} event=error peer={peer} session={session} reason=spool-failed",
                service=self._settings.service,
                peer=self._peer_key,
                session=self._session,
            )
            return replies.QUEUE_FAILED
        now = self._clock.seconds()
        if self.policy.adds_missing_headers:
            completer = HeaderCompleter(missing_header_fields(writer.queue_id, self.policy.hostname, now))
        else:
            # Nothing to add, but our Received: goes in front of the data:
            # a message without a header section gets the empty line that
            # keeps its first line out of ours.
            completer = HeaderCompleter([])
        receiver = MessageReceiver(writer, self.policy.max_message_size, completer, reader)
        self._context["qid"] = receiver.queue_id
        header = received_header(
            helo=self._helo or "",
            peer=self._peer_ip,
            hostname=self.policy.hostname,
            protocol=self.policy.received_protocol(self._esmtp, transaction.mail.smtputf8),
            queue_id=receiver.queue_id,
            recipients=transaction.recipients,
            when=now,
            tls=tls_description(self.transport),
        )
        return receiver, header

    def _reset_transaction(self) -> None:
        """
        End the transaction, if any, without a message: one being received
        by BDAT is discarded.
        """
        transaction = self._transaction
        self._transaction = None
        self._chunks_refused = None
        if transaction is not None and transaction.message is not None:
            transaction.message.abort()
            transaction.message = None

    def _rset(self, argument: bytes) -> Reply:
        if argument:
            return replies.NO_ARGUMENTS
        # RFC 3030 section 3: RSET also discards the chunks received so far.
        self._reset_transaction()
        return replies.OK

    def _noop(self, argument: bytes) -> Reply:
        # RFC 5321 section 4.1.1.9: NOOP may have a string argument.
        return replies.OK

    def _quit(self, argument: bytes) -> None:
        """
        QUIT (RFC 5321 section 4.1.1.10): 221, then close.
        """
        if argument:
            self._send(replies.NO_ARGUMENTS)
            return
        self._send(replies.closing(self.policy.hostname))
        self._close()

    def _vrfy(self, argument: bytes) -> Reply:
        if not argument:
            return replies.VRFY_SYNTAX
        # RFC 5321 section 3.5.3: 252 when the server will not verify;
        # answering truthfully would let anyone enumerate the users.
        return replies.VRFY_CANNOT

    def _expn(self, argument: bytes) -> Reply:
        # RFC 5321 section 7.3: list expansion discloses members.
        return replies.EXPN_NOT_AVAILABLE

    def _help(self, argument: bytes) -> Reply:
        return replies.HELP

    def _end_of_data(self, receiver: MessageReceiver, verb: str = "DATA") -> Reply | Deferred:
        """
        The data has ended (after DATA, or the last BDAT chunk): refuse the
        message (too big, bare CR or LF) and abort it, or commit it with
        its envelope.

        @param verb: the command whose data ended, for the log.

        @return: the refusal, or a L{Deferred} firing with C{250 2.0.0 Ok:
            queued as <qid>} once the message is durable, or with 451 4.3.0
            / 452 4.3.1 if the commit failed.
        """
        transaction = self._transaction
        assert transaction is not None
        self._transaction = None
        self._context = {"cmd": verb, "qid": receiver.queue_id, "from": angle_path(transaction.sender)}
        refusal = receiver.refusal()
        if refusal is not None:
            receiver.abort()
            return refusal
        envelope = Envelope(
            queue_id=receiver.queue_id,
            sender=transaction.sender,
            recipients=transaction.envelope_recipients(),
            arrival=self._clock.seconds(),
            size=receiver.writer.size,  # type: ignore[attr-defined]
            body=transaction.mail.body,
            smtputf8=transaction.mail.smtputf8,
            client=f"helo={self._helo} addr={self._peer_key}",
            content=receiver.content,
        )

        user = self.policy.facts.user

        def committed(_: object) -> Reply:
            self.factory.storage.succeeded("spool")
            self._log_event(
                LogLevel.info,
                qid=envelope.queue_id,
                event="queued",
                **{"from": angle_path(envelope.sender)},
                size=str(envelope.size),
                nrcpt=str(len(envelope.recipients)),
                peer=self._peer_key,
                user=user.key if user is not None else None,
            )
            return replies.queued(envelope.queue_id)

        def failed(reason: Failure) -> Reply:
            # A full disk fails every message alike: the traceback is
            # logged once per episode, each refusal still by its reply.
            self.factory.storage.failed("spool", reason, service=self._settings.service, qid=envelope.queue_id)
            return commit_failure_reply(reason)

        return receiver.commit(envelope).addCallbacks(committed, failed)


def missing_header_fields(queue_id: str, hostname: str, now: float) -> list[tuple[bytes, bytes]]:
    """
    The fields a submitted message gets when it lacks them (RFC 6409
    sections 8.2 and 8.3), for L{HeaderCompleter}.

    @param queue_id: the message's queue id: unique (it holds the time and
        random bits), so it makes the C{Message-ID:} unique too.
    @param hostname: our host name, the right-hand side of the id.
    @param now: the Unix time of submission, for C{Date:}.
    """
    return [
        (b"message-id", f"Message-ID: <{queue_id}@{hostname}>\r\n".encode()),
        (b"date", f"Date: {rfc5322_date(now)}\r\n".encode("ascii")),
    ]
