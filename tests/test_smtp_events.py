"""
Tests for L{mailappliance.smtp.events}.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import Mailbox
from mailappliance.logtext import quote
from mailappliance.smtp.events import angle_path, log_event


class EventTests(SynchronousTestCase):
    def test_quote(self) -> None:
        """
        Quotes, backslashes and line ends are escaped.
        """
        self.assertEqual(quote('a "b" \\ c\r\n'), '"a \\"b\\" \\\\ c\\r\\n"')

    def test_angle_path(self) -> None:
        """
        Addresses in angle brackets, white space escaped
        (L{mailappliance.address.log_address}); the null sender is C{<>}.
        """
        self.assertEqual(angle_path(Mailbox("a", "b.test")), "<a@b.test>")
        self.assertEqual(angle_path(Mailbox('"x status=sent"', "b.test")), '<"x\\x20status=sent"@b.test>')
        self.assertEqual(angle_path(None), "<>")

    def test_log_event(self) -> None:
        """
        The service first, the queue id next, L{None} values left out;
        braces in values are not format fields.
        """
        events: list[dict] = []
        log = Logger(observer=events.append)
        log_event(log, LogLevel.info, "smtp", event="queued", qid="Q1", to=None, **{"from": "<{x}@b>"})
        self.assertEqual(formatEvent(events[0]), "service=smtp qid=Q1 event=queued from=<{x}@b>")
        self.assertEqual(events[0]["log_level"], LogLevel.info)
        self.assertEqual(events[0]["qid"], "Q1")
