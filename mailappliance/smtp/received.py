# -*- test-case-name: tests.test_smtp_received -*-
"""
The C{Received:} header the server puts in front of every message it
accepts (RFC 5321 section 4.4, with the date of RFC 5322 section 3.3).

It records the client's HELO name and address, the TLS protocol version
and cipher when the session is encrypted (as Postfix writes them), our
host name, the protocol (RFC 3848 / RFC 6531 C{with} values), the queue id
and, when the message has exactly one recipient, that recipient (with
several, naming them would disclose Bcc recipients to each other). An
authenticated user is not named (as Postfix by default): the C{with}
value says the session was authenticated, which is enough for a trace.
"""

from __future__ import annotations

import ipaddress
import time

from mailappliance.address import Mailbox

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Characters of a HELO name written as they are; anything else (the name
# is the client's word, not ours) becomes "?", so the header cannot be
# broken or confuse a parser (no comment delimiters, no line ends).
_HELO_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]")
# A HELO name longer than this is cut: the header stays well under the
# 998-octet line limit of RFC 5322 section 2.1.1.
MAX_HELO_IN_HEADER = 255


def rfc5322_date(when: float) -> str:
    """
    Format a Unix time as an RFC 5322 date-time in UTC, independent of the
    locale: C{Tue, 14 Nov 2023 22:13:20 +0000}.
    """
    t = time.gmtime(when)
    return "%s, %02d %s %04d %02d:%02d:%02d +0000" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def address_literal(peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str:
    """
    The client's address as an RFC 5321 address literal: C{[192.0.2.1]},
    C{[IPv6:2001:db8::1]}, or C{[unknown]} for a non-IP peer.
    """
    if peer is None:
        return "[unknown]"
    if peer.version == 6:
        return f"[IPv6:{peer.compressed}]"
    return f"[{peer}]"


def _helo_text(helo: str) -> str:
    cleaned = "".join(c if c in _HELO_SAFE else "?" for c in helo[:MAX_HELO_IN_HEADER])
    return cleaned or "unknown"


def received_header(
    helo: str,
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipients: list[Mailbox],
    when: float,
    tls: str | None = None,
) -> bytes:
    """
    Build the header, folded over several lines, CRLF-terminated.

    @param helo: the name the client gave in HELO/EHLO.
    @param peer: the client's IP address.
    @param hostname: our host name.
    @param protocol: the C{with} value (see
        L{mailappliance.smtp.policy.SessionPolicy.received_protocol}).
    @param queue_id: the message's queue id.
    @param recipients: the accepted recipients, as given at RCPT; named in
        a C{for} clause only when there is exactly one.
    @param when: the Unix time of receipt.
    @param tls: the TLS in use (see
        L{mailappliance.smtp.starttls.tls_description}), written as a
        comment line after the C{from} clause; L{None} for none.
    @return: the header, UTF-8 (a recipient may be non-ASCII only when the
        message is SMTPUTF8, where RFC 6532 allows it).
    """
    text = f"Received: from {_helo_text(helo)} ({address_literal(peer)})\r\n"
    if tls is not None:
        text += f"\t({tls})\r\n"
    text += f"\tby {hostname} (mailappliance) with {protocol} id {queue_id}"
    if len(recipients) == 1:
        text += f"\r\n\tfor <{recipients[0]}>"
    text += f"; {rfc5322_date(when)}\r\n"
    return text.encode("utf-8")
