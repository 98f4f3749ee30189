"""
Tests for L{mailappliance.queue.envelope}.
"""

import json

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.address import parse_mailbox
from mailappliance.queue.envelope import (
    CONTENT_7BIT,
    CONTENT_8BIT,
    CONTENT_8BIT_HEADERS,
    CONTENT_UNKNOWN,
    DELIVERED,
    FAILED,
    Envelope,
    EnvelopeFormatError,
    Recipient,
)


def envelope(**kw):
    args = dict(
        queue_id="0ABCDEFGHJKMNPQR",
        sender=parse_mailbox("Alice@example.test"),
        recipients=(
            Recipient(parse_mailbox("team@example.test"), parse_mailbox("bob@example.test"), True),
            Recipient(parse_mailbox("x@remote.test"), parse_mailbox("x@remote.test"), False, state=FAILED,
                      attempts=2, last_error="550 no", next_attempt=5.5, status="5.1.1",
                      remote_mta="mx.remote.test", notified=True),
            Recipient(parse_mailbox("jöran@example.test"), parse_mailbox("jöran@example.test"), True,
                      state=DELIVERED),
        ),
        arrival=1700000000.25,
        size=1234,
        body="8BITMIME",
        smtputf8=True,
        client="helo=x addr=127.0.0.1",
        auth="alice@example.test",
        delay_warned=True,
        kind="dsn",
        content=CONTENT_8BIT_HEADERS,
    )
    args.update(kw)
    return Envelope(**args)


class EnvelopeTests(SynchronousTestCase):
    def test_round_trip(self):
        """
        Every member survives serialisation; the null sender too.
        """
        for e in (envelope(), envelope(sender=None, kind="")):
            self.assertEqual(Envelope.from_bytes(e.to_bytes()), e)

    def test_content_round_trip(self):
        """
        Each content value is written as the optional member C{"content"}
        and read back; the default is "unknown".
        """
        self.assertEqual(Envelope("Q", None, (), 0.0).content, CONTENT_UNKNOWN)
        for content, text in ((CONTENT_UNKNOWN, ""), (CONTENT_7BIT, "7bit"), (CONTENT_8BIT, "8bit"),
                              (CONTENT_8BIT_HEADERS, "8bit-headers")):
            e = envelope(content=content)
            self.assertEqual(json.loads(e.to_bytes())["content"], text)
            self.assertEqual(Envelope.from_bytes(e.to_bytes()), e)

    def test_format(self):
        """
        Version 1 JSON with the documented member names.
        """
        obj = json.loads(envelope().to_bytes())
        self.assertEqual(obj["version"], 1)
        self.assertEqual(obj["sender"], "Alice@example.test")
        self.assertEqual(obj["recipients"][0]["target"], "bob@example.test")
        self.assertEqual(obj["recipients"][1]["state"], "failed")

    def test_optional_members(self):
        """
        Files written before the optional members existed still load.
        """
        obj = json.loads(envelope().to_bytes())
        del obj["kind"], obj["content"]
        for r in obj["recipients"]:
            del r["status"], r["remote_mta"], r["notified"]
        e = Envelope.from_bytes(json.dumps(obj).encode())
        self.assertEqual(e.kind, "")
        # Queued before the content was recorded: unknown (the relay then
        # goes by what was declared).
        self.assertEqual(e.content, CONTENT_UNKNOWN)
        self.assertEqual((e.body, e.smtputf8), ("8BITMIME", True))
        self.assertEqual(e.recipients[1].status, "")
        self.assertFalse(e.recipients[1].notified)

    def test_done_and_pending(self):
        e = envelope()
        self.assertEqual([str(r.target) for r in e.pending], ["bob@example.test"])
        self.assertFalse(e.done)
        self.assertTrue(e.replace(recipients=e.recipients[1:]).done)

    def test_bad(self):
        """
        Anything but a valid version-1 envelope is an EnvelopeFormatError.
        """
        good = json.loads(envelope().to_bytes())
        cases = [b"", b"[]", b"{", b"\xff", json.dumps({**good, "version": 2}).encode(),
                 json.dumps({**good, "size": "12"}).encode(), json.dumps({**good, "size": True}).encode(),
                 json.dumps({k: v for k, v in good.items() if k != "sender"}).encode(),
                 json.dumps({**good, "sender": "not an address"}).encode(),
                 json.dumps({**good, "recipients": [{**good["recipients"][0], "state": "lost"}]}).encode(),
                 json.dumps({**good, "recipients": ["x"]}).encode(),
                 json.dumps({**good, "content": "binary"}).encode(),
                 json.dumps({**good, "content": None}).encode()]
        for data in cases:
            self.assertRaises(EnvelopeFormatError, Envelope.from_bytes, data)
