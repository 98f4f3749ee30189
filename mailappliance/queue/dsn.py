# -*- test-case-name: tests.test_queue_dsn -*-
"""
Delivery status notifications (RFC 3464): the bounce and the delay warning.

A DSN is a C{multipart/report; report-type=delivery-status} message with
three parts: a human-readable explanation, a C{message/delivery-status}
part with one block per recipient (status code, remote host, remote reply),
and the original message's headers (C{text/rfc822-headers}). It comes from
C{MAILER-DAEMON@hostname} and is sent with the null sender, so it can never
cause another bounce; it is queued like any other message. A double bounce
(the failure of a message that had the null sender) goes to the postmaster
and is worded for them.

Addresses that need SMTPUTF8 are written with the C{utf-8} address type
(RFC 6533) and the report part becomes C{message/global-delivery-status};
original headers with UTF-8 in them are returned as
C{message/global-headers} (RFC 6533 section 6.3). Dates are in UTC, written
C{+0000} (RFC 5322 section 3.3: C{-0000} would mean the zone is unknown).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailappliance.smtp.received import rfc5322_date

MAX_ORIGINAL_HEADERS = 64 * 1024
FAILED = "failed"
DELAYED = "delayed"


@dataclass(frozen=True)
class RecipientReport:
    """
    What happened to one recipient.

    @ivar recipient: the final recipient address (text).
    @ivar original: the address as given at RCPT, when it differs.
    @ivar status: the enhanced status code (C{5.1.1}, C{4.4.1}...).
    @ivar diagnostic: the remote reply (C{550 5.1.1 No such user}) or our
        own explanation.
    @ivar remote_mta: the host that gave the reply, if any.
    @ivar smtp_reply: whether C{diagnostic} is an SMTP reply
        (C{Diagnostic-Code: smtp; ...}) or our own text.
    """

    recipient: str
    status: str
    diagnostic: str
    original: str = ""
    remote_mta: str = ""
    smtp_reply: bool = False


def read_original_headers(body_path: str, body_size: int | None = None, limit: int = MAX_ORIGINAL_HEADERS) -> bytes:
    """
    Read the header section of a spooled message (blocking: run it in the
    disk pool), at most C{limit} bytes, ending with CRLF.

    @param body_path: the queue file.
    @param body_size: the body is its first C{body_size} bytes (the
        envelope's C{size}; layout version 2 appends the envelope, which
        must not be taken for headers); L{None}: the whole file.
    @param limit: the most header bytes to return.
    """
    want = limit + 4 if body_size is None else min(limit + 4, body_size)
    with open(body_path, "rb") as f:
        data = f.read(want)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2]
    data = data[:limit]
    cut = data.rfind(b"\r\n")
    return data[: cut + 2] if cut >= 0 else b""


def _address_field(address: str) -> str:
    return f"utf-8; {address}" if not address.isascii() else f"rfc822; {address}"


def build_dsn(
    *,
    hostname: str,
    queue_id: str,
    sender: str,
    arrival: float,
    reports: list[RecipientReport],
    original_headers: bytes,
    now: float,
    action: str = FAILED,
    retry_until: float | None = None,
    postmaster: str = "",
) -> bytes:
    """
    Build a DSN message (CRLF line ends).

    @param sender: the envelope sender of the original message: the DSN goes
        there; C{""} (the null sender) only for a double bounce.
    @param action: L{FAILED} (a bounce) or L{DELAYED} (a warning).
    @param retry_until: for a delay warning, when we give up.
    @param postmaster: for a double bounce (a failure of a message with the
        null sender, which cannot be returned), the postmaster's address:
        the DSN is addressed and worded to them instead of the sender.
    @return: the message bytes, ready for the spool.
    """
    boundary = f"{queue_id}.{int(now)}/{hostname}"
    to = postmaster or sender
    utf8 = not to.isascii() or any(not r.recipient.isascii() or not r.original.isascii() for r in reports)
    # RFC 6533 section 6.3: headers with UTF-8 in them are returned as
    # message/global-headers; text/rfc822-headers is ASCII only.
    global_headers = not original_headers.isascii()
    date = rfc5322_date(now)
    if action == FAILED and postmaster:
        subject = "Postmaster Copy: Undelivered Mail"
        intro = [
            f"This is the mail system at host {hostname}.",
            "",
            "A message with the null sender (<>), such as a delivery status",
            "notification, could not be delivered to one or more recipients.",
            "It cannot be returned to its sender, so this report goes to the",
            "postmaster. The original headers are attached below.",
            "",
        ]
    elif action == FAILED:
        subject = "Undelivered Mail Returned to Sender"
        intro = [
            f"This is the mail system at host {hostname}.",
            "",
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. The original headers are attached below.",
            "",
        ]
    else:
        subject = "Delayed Mail (still being retried)"
        until = rfc5322_date(retry_until) if retry_until else "later"
        intro = [
            f"This is the mail system at host {hostname}.",
            "",
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            "Your message could not be delivered yet to the recipients below.",
            f"Delivery will be retried until {until}.",
            "",
        ]
    for r in reports:
        where = f" (host {r.remote_mta})" if r.remote_mta else ""
        intro.append(f"<{r.recipient}>{where}: {_one_line(r.diagnostic)}")
    text = "\r\n".join(intro)
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.{int(now)}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit" if utf8 or global_headers or not text.isascii()
        else "Content-Transfer-Encoding: 7bit",
    ]
    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    per_message = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailappliance-Queue-ID: {queue_id}",
        f"Arrival-Date: {rfc5322_date(arrival)}",
    ]
    blocks = []
    for r in reports:
        block = []
        if r.original and r.original.lower() != r.recipient.lower():
            block.append(f"Original-Recipient: {_address_field(r.original)}")
        block += [
            f"Final-Recipient: {_address_field(r.recipient)}",
            f"Action: {action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            block.append(f"Remote-MTA: dns; {r.remote_mta}")
        kind = "smtp" if r.smtp_reply else "x-mailappliance"
        diagnostic = _one_line(r.diagnostic)
        if not utf8:
            # message/delivery-status is US-ASCII (RFC 3464 section 2.1.1);
            # the text part above keeps the reply as it came.
            diagnostic = diagnostic.encode("ascii", "backslashreplace").decode("ascii")
        block.append(f"Diagnostic-Code: {kind}; {diagnostic}")
        block.append(f"Last-Attempt-Date: {date}")
        if action == DELAYED and retry_until:
            block.append(f"Will-Retry-Until: {rfc5322_date(retry_until)}")
        blocks.append("\r\n".join(block))
    parts = [
        "\r\n".join(headers),
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        text,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        f"Content-Type: {status_type}",
        "",
        "\r\n".join(per_message),
        "",
        "\r\n\r\n".join(blocks),
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: message/global-headers" if global_headers else "Content-Type: text/rfc822-headers",
        "",
    ]
    text = "\r\n".join(parts) + "\r\n"
    tail = f"\r\n--{boundary}--\r\n"
    return text.encode("utf-8") + _crlf(original_headers) + tail.encode("utf-8")


def _one_line(text: str) -> str:
    """
    A remote server's reply (or our own error text) as one line of text:
    white space collapsed, and control characters (C0, DEL, C1), which
    could drive the reader's terminal, shown as C{?}.
    """
    return _CONTROL.sub("?", " ".join(text.split()))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _crlf(data: bytes) -> bytes:
    if not data:
        return b""
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def count_received_headers(body_path: str, body_size: int | None = None, limit: int = MAX_ORIGINAL_HEADERS) -> int:
    """
    Count the C{Received:} fields of a spooled message (blocking), for mail
    loop detection (RFC 5321 section 6.3).

    @param body_size: as for L{read_original_headers}.
    """
    headers = read_original_headers(body_path, body_size, limit)
    count = 0
    for line in headers.split(b"\r\n"):
        if line[:9].lower() == b"received:":
            count += 1
    return count


__all__ = [
    "RecipientReport",
    "build_dsn",
    "read_original_headers",
    "count_received_headers",
    "FAILED",
    "DELAYED",
]
