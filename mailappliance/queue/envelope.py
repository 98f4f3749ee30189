# -*- test-case-name: tests.test_queue_envelope -*-
"""
The envelope of a queued message: who sent it, to whom, and how far each
recipient's delivery has come.

An envelope is written next to the message body when the message is
committed, and rewritten whenever a recipient's state changes. Its on-disk
form is JSON (UTF-8, one object), versioned by the C{"version"} member;
L{Envelope.to_bytes} and L{Envelope.from_bytes} are the only code that
reads or writes it. Version 1::

  {"version": 1,
   "queue_id": "...",
   "sender": "alice@example.test" | "",        # "" is the null sender <>
   "arrival": 1700000000.25,                   # Unix time, float
   "size": 1234,                               # bytes of the spooled body
   "body": "7BIT" | "8BITMIME",                # as the client declared it
   "smtputf8": false,                          # likewise
   "content": "7bit" | "8bit" | "8bit-headers",  # optional: what it holds
   "client": "helo=... addr=...",              # for Received:/logs
   "auth": "alice@example.test" | "",
   "delay_warned": false,
   "recipients": [
     {"original": "team@example.test",         # as given at RCPT (ORCPT)
      "target": "alice@example.test",          # where it goes
      "local": true,                           # Maildir (true) or relay
      "state": "pending" | "delivered" | "failed",
      "attempts": 0,
      "last_error": "",
      "next_attempt": 0.0,                     # Unix time; 0 = now
      "status": "",                            # optional: enhanced status of the last failure
      "remote_mta": "",                        # optional: host that gave it
      "notified": false}                       # optional: a DSN reported this failure
   ],
   "kind": ""}                                 # optional: "" | "dsn" | "double-bounce"

Members marked optional may be missing (files written before they were
added) and then take the defaults shown, C{""} for C{"content"}: not known
(see L{Envelope.content}). Readers refuse any other version with
L{EnvelopeFormatError}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from mailappliance.address import AddressError, Mailbox, parse_mailbox

ENVELOPE_VERSION = 1

# What the message holds (Envelope.content; found by
# mailappliance.queue.content while it was received).
CONTENT_UNKNOWN = ""
CONTENT_7BIT = "7bit"
CONTENT_8BIT = "8bit"
CONTENT_8BIT_HEADERS = "8bit-headers"
_CONTENTS = (CONTENT_UNKNOWN, CONTENT_7BIT, CONTENT_8BIT, CONTENT_8BIT_HEADERS)

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
_STATES = (PENDING, DELIVERED, FAILED)


class EnvelopeFormatError(ValueError):
    """
    An envelope file cannot be read: wrong version, malformed JSON, missing
    or mistyped members.
    """


@dataclass(frozen=True)
class Recipient:
    """
    One delivery target of a message and its state.

    @ivar original: the address as the client gave it at RCPT.
    @ivar target: the address to deliver to (after alias expansion).
    @ivar local: L{True} for Maildir delivery here, L{False} for relay.
    @ivar state: C{"pending"}, C{"delivered"} or C{"failed"}.
    @ivar attempts: delivery attempts made so far.
    @ivar last_error: the last failure's text (remote reply or local error).
    @ivar next_attempt: Unix time of the next attempt; 0 means now.
    @ivar status: the enhanced status code of the last failure (for DSNs).
    @ivar remote_mta: the remote host that gave the last failure, if any.
    @ivar notified: whether a DSN has reported this recipient's failure.
    """

    original: Mailbox
    target: Mailbox
    local: bool
    state: str = PENDING
    attempts: int = 0
    last_error: str = ""
    next_attempt: float = 0.0
    status: str = ""
    remote_mta: str = ""
    notified: bool = False

    def with_state(self, **changes: object) -> Recipient:
        return replace(self, **changes)  # type: ignore[arg-type]


UNKNOWN_MEMBER_ERROR = "5.1.1 unknown alias member"


def unknown_alias_member(original: Mailbox, member: Mailbox) -> Recipient:
    """
    The recipient for a member of an alias that names no local user: failed
    at once, owed a bounce with status 5.1.1 (bad mailbox, RFC 3463).
    """
    return Recipient(original, member, local=True, state=FAILED, status="5.1.1", last_error=UNKNOWN_MEMBER_ERROR)


@dataclass(frozen=True)
class Envelope:
    """
    Everything about a queued message except its body.

    @ivar body: C{"7BIT"} or C{"8BITMIME"}, as the client declared it
        (C{BODY=} of MAIL).
    @ivar smtputf8: whether the client declared C{SMTPUTF8}.
    @ivar content: what the stored message holds: L{CONTENT_7BIT} (no
        octet above 127), L{CONTENT_8BIT} (such octets in the body only)
        or L{CONTENT_8BIT_HEADERS} (in the header section, and perhaps
        the body); L{CONTENT_UNKNOWN} for a message queued before this was
        recorded, which is then taken to be as declared.
    """

    queue_id: str
    sender: Mailbox | None
    recipients: tuple[Recipient, ...]
    arrival: float
    size: int = 0
    body: str = "7BIT"
    smtputf8: bool = False
    client: str = ""
    auth: str = ""
    delay_warned: bool = False
    kind: str = ""
    content: str = CONTENT_UNKNOWN
    version: int = field(default=ENVELOPE_VERSION)

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.state == PENDING)

    @property
    def done(self) -> bool:
        """
        Whether every recipient is delivered or failed.
        """
        return all(r.state != PENDING for r in self.recipients)

    def replace(self, **changes: object) -> Envelope:
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_bytes(self) -> bytes:
        """
        Serialise as version-1 JSON.
        """
        return json.dumps(
            {
                "version": ENVELOPE_VERSION,
                "queue_id": self.queue_id,
                "sender": str(self.sender) if self.sender is not None else "",
                "arrival": self.arrival,
                "size": self.size,
                "body": self.body,
                "smtputf8": self.smtputf8,
                "content": self.content,
                "client": self.client,
                "auth": self.auth,
                "delay_warned": self.delay_warned,
                "kind": self.kind,
                "recipients": [
                    {
                        "original": str(r.original),
                        "target": str(r.target),
                        "local": r.local,
                        "state": r.state,
                        "attempts": r.attempts,
                        "last_error": r.last_error,
                        "next_attempt": r.next_attempt,
                        "status": r.status,
                        "remote_mta": r.remote_mta,
                        "notified": r.notified,
                    }
                    for r in self.recipients
                ],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """
        Parse an envelope file.

        @raise EnvelopeFormatError: if it is not a valid version-1 envelope.
        """
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise EnvelopeFormatError(f"not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise EnvelopeFormatError("not a JSON object")
        if obj.get("version") != ENVELOPE_VERSION:
            raise EnvelopeFormatError(f"unsupported envelope version {obj.get('version')!r}")
        content = _optional(obj, "content", str, CONTENT_UNKNOWN)
        if content not in _CONTENTS:
            raise EnvelopeFormatError(f"unknown content {content!r}")
        try:
            recipients = tuple(_recipient(r) for r in _typed(obj, "recipients", list))
            sender_text = _typed(obj, "sender", str)
            return cls(
                queue_id=_typed(obj, "queue_id", str),
                sender=_mailbox(sender_text) if sender_text else None,
                recipients=recipients,
                arrival=float(_typed(obj, "arrival", (int, float))),
                size=_typed(obj, "size", int),
                body=_typed(obj, "body", str),
                smtputf8=_typed(obj, "smtputf8", bool),
                client=_typed(obj, "client", str),
                auth=_typed(obj, "auth", str),
                delay_warned=_typed(obj, "delay_warned", bool),
                kind=_optional(obj, "kind", str, ""),
                content=content,
            )
        except AddressError as e:
            raise EnvelopeFormatError(f"bad address: {e.reason}") from None


def _typed(obj: dict, key: str, kind: type | tuple[type, ...]) -> object:
    if key not in obj:
        raise EnvelopeFormatError(f"missing member {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EnvelopeFormatError(f"member {key!r} has the wrong type")
    return value


def _optional(obj: dict, key: str, kind: type, default: object) -> object:
    if key not in obj:
        return default
    return _typed(obj, key, kind)


def _mailbox(text: str) -> Mailbox:
    return parse_mailbox(text, allow_utf8=True)


def _recipient(obj: object) -> Recipient:
    if not isinstance(obj, dict):
        raise EnvelopeFormatError("recipient is not an object")
    state = _typed(obj, "state", str)
    if state not in _STATES:
        raise EnvelopeFormatError(f"unknown recipient state {state!r}")
    return Recipient(
        original=_mailbox(_typed(obj, "original", str)),
        target=_mailbox(_typed(obj, "target", str)),
        local=_typed(obj, "local", bool),
        state=state,
        attempts=_typed(obj, "attempts", int),
        last_error=_typed(obj, "last_error", str),
        next_attempt=float(_typed(obj, "next_attempt", (int, float))),
        status=_optional(obj, "status", str, ""),
        remote_mta=_optional(obj, "remote_mta", str, ""),
        notified=_optional(obj, "notified", bool, False),
    )
