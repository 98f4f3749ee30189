# -*- test-case-name: tests.test_queue_bounce,tests.test_cli_sendmail -*-
"""
Putting a message into the queue from inside the server: delivery status
notifications (L{mailappliance.queue.bounce}) and messages dropped by
C{mailappliance sendmail} (L{mailappliance.queue.incoming}).

The message goes through the same spool and the same durability rules as
mail received over SMTP: its recipients are resolved through the resolver
chain, a C{Received:} header is written first, and the returned
L{Deferred} fires only when the message is committed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import defer

from mailappliance.address import Mailbox
from mailappliance.interfaces import ResolutionError
from mailappliance.queue.content import ContentScan
from mailappliance.queue.envelope import FAILED, Envelope, Recipient, unknown_alias_member
from mailappliance.smtp.received import rfc5322_date


class NoDeliverableRecipient(Exception):
    """
    None of the recipients of an injected message can be delivered.

    @ivar errors: address to L{ResolutionError}.
    """

    def __init__(self, errors: dict[str, ResolutionError]) -> None:
        super().__init__("; ".join(f"<{a}>: {e.reason}" for a, e in errors.items()))
        self.errors = errors


@defer.inlineCallbacks
def resolve_recipients(resolver: Any, recipients: Iterable[Mailbox]):
    """
    Resolve recipients into envelope L{Recipient}s.

    @return: a L{Deferred} firing with C{(recipients, errors)}: the envelope
        recipients (unknown alias members already failed) and a dict of the
        addresses that were refused (a permanent L{ResolutionError}).
    @raise ResolutionError: (as the L{Deferred}'s failure) for a temporary
        resolution error: the caller should try again later.
    """
    result: list[Recipient] = []
    errors: dict[str, ResolutionError] = {}
    seen: set[str] = set()
    for address in recipients:
        try:
            resolved = yield resolver.resolve(address)
        except ResolutionError as e:
            if e.temporary:
                raise
            errors[str(address)] = e
            continue
        for targets, local in ((resolved.local, True), (resolved.remote, False)):
            for target in targets:
                if target.key not in seen:
                    seen.add(target.key)
                    result.append(Recipient(address, target, local))
        for target in resolved.unknown:
            if target.key not in seen:
                seen.add(target.key)
                result.append(unknown_alias_member(address, target))
    return result, errors


def local_received_header(hostname: str, queue_id: str, via: str, when: float) -> bytes:
    """
    The C{Received:} header of a message made or submitted on this host.
    """
    return (f"Received: by {hostname} (mailappliance {via})\r\n"
            f"\tid {queue_id}; {rfc5322_date(when)}\r\n").encode("utf-8")


@defer.inlineCallbacks
def inject(spool: Any, resolver: Any, clock: Any, *, hostname: str, sender: Mailbox | None,
           recipients: list[Mailbox], data: bytes, via: str, kind: str = "", client: str = "",
           eight_bit: bool = False, received: bool = True, bounce_refused: bool = False):
    """
    Queue a message.

    @param data: the message (CRLF line ends), held in memory: DSNs are
        small, and sendmail drops are bounded by C{max_message_size}.
    @param via: what made it (C{"dsn"}, C{"sendmail"}), for C{Received:}.
    @param eight_bit: record the message as C{BODY=8BITMIME} (what a
        client would have declared); what it really holds is found here
        (L{Envelope.content}).
    @param bounce_refused: queue refused recipients as failed, so that the
        sender gets a bounce (for mail whose sender cannot be told at once,
        such as a sendmail drop), instead of leaving them out.
    @return: a L{Deferred} firing with the committed L{Envelope}.
    @raise NoDeliverableRecipient: if no recipient can be delivered (and,
        with C{bounce_refused}, none could even be reported).
    """
    envelope_recipients, errors = yield resolve_recipients(resolver, recipients)
    if bounce_refused:
        for address in recipients:
            error = errors.get(str(address))
            if error is not None:
                envelope_recipients.append(Recipient(address, address, True, state=FAILED, status=error.status,
                                                     last_error=f"{error.code} {error.status} {error.reason}"))
    if not envelope_recipients or not bounce_refused and not any(r.state != FAILED for r in envelope_recipients):
        raise NoDeliverableRecipient(errors or {str(a): ResolutionError("no target") for a in recipients})
    writer = spool.new_message()
    # What the message holds is recorded as for SMTP (see
    # mailappliance.smtp.receiver), so that the relay decides alike.
    scan = ContentScan()
    try:
        if received:
            header = local_received_header(hostname, writer.queue_id, via, clock.seconds())
            scan.feed(header)
            yield writer.write(header)
        scan.feed(data)
        yield writer.write(data)
        envelope = Envelope(
            queue_id=writer.queue_id,
            sender=sender,
            recipients=tuple(envelope_recipients),
            arrival=clock.seconds(),
            body="8BITMIME" if eight_bit else "7BIT",
            smtputf8=(sender is not None and sender.needs_smtputf8)
            or any(r.target.needs_smtputf8 for r in envelope_recipients),
            client=client,
            kind=kind,
            content=scan.content,
        )
        yield writer.commit(envelope)
    except BaseException:
        writer.abort()
        raise
    return envelope.replace(queue_id=writer.queue_id, size=writer.size)
