# -*- test-case-name: tests.test_smtp_events -*-
"""
The log lines of the SMTP server: one event per line, in C{key=value}
form (DESIGN.md), the service first and the queue id next when there is
one, so that C{grep qid=...} shows a message's whole story.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

from mailappliance.address import log_address


def angle_path(mailbox: object) -> str:
    """
    An envelope address as logged: C{<local@domain>}, C{<>} for the null
    sender (L{None}).
    """
    return "<%s>" % ("" if mailbox is None else log_address(mailbox))


def log_event(log: Logger, level: LogLevel, service: str, **fields: str | None) -> None:
    """
    Emit one event as C{service=... [qid=...] key=value ...}.

    @param fields: the values, already formatted (use L{quote} for free
        text); those that are L{None} are left out. Keys are kept as the
        event's fields too, for observers that read them.
    """
    present: dict[str, str] = {"service": service}
    if fields.get("qid") is not None:
        present["qid"] = fields["qid"]  # type: ignore[assignment]
    present.update((key, value) for key, value in fields.items() if value is not None)
    # The line is made here, once, with its values in it (braces doubled so
    # that the logger prints them as they are): formatting a template with
    # fields costs twisted.logger's observers about four times as much, on
    # every one of the several lines each message produces.
    template = " ".join(f"{key}={value}".replace("{", "{{").replace("}", "}}") for key, value in present.items())
    log.emit(level, template, **present)
