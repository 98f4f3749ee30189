"""
Tests for L{mailappliance.queue.bounce} and L{mailappliance.queue.inject},
through the queue manager over a real temporary folder (synchronous disk
pool, L{Clock}).
"""

import email
import email.policy

from twisted.internet.defer import fail

from mailappliance.interfaces import DeliveryError, TemporaryResolutionError
from mailappliance.queue.bounce import Notifier
from mailappliance.queue.envelope import (
    CONTENT_7BIT,
    CONTENT_8BIT,
    CONTENT_8BIT_HEADERS,
    FAILED,
    PENDING,
)
from mailappliance.queue.inject import NoDeliverableRecipient, inject
from mailappliance.queue.manager import STOP_GRACE
from mailappliance.queue.relay import RetryPolicy
from mailappliance.queue.spool import Spool
from mailappliance.resolve.chain import ResolverChain
from mailappliance.resolve.users import UsersResolver
from tests.test_queue_manager import (
    BODY,
    T0,
    ManagerTestCase,
    ScriptedDelivery,
    SlowDomainRelay,
    mb,
    rcpt,
)
from tests.test_resolve_users import FakeStore

LOCAL = ("example.test",)


class NotifierTestCase(ManagerTestCase):
    def setUp(self):
        super().setUp()
        self.chain = ResolverChain([UsersResolver(FakeStore("bob@example.test", "postmaster@example.test",
                                                            "alice@example.test"))], LOCAL)
        self.notifier = Notifier(self.spool, self.chain, self.disk, self.clock, "mx.example.test",
                                 mb("postmaster@example.test"), delay_warning_after=3600.0,
                                 max_queue_lifetime=86400.0, log=self.log)

    def dsn_for(self, address):
        files = self.delivered_files(address)
        return [email.message_from_bytes(f, policy=email.policy.default) for f in files]


class BounceTests(NotifierTestCase):
    def test_permanent_failure_bounces(self):
        """
        A recipient that fails permanently gets one DSN to the sender, with
        the null sender, naming the recipient and the reason; the message
        then leaves the queue.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("mailbox is a file", True)]})
        self.start(delivery, notifier=self.notifier)
        qid = self.submit([rcpt("alice@example.test")], sender="bob@example.test")
        [dsn] = self.dsn_for("bob@example.test")
        self.assertIn(b"Return-Path: <>\r\n", self.delivered_files("bob@example.test")[0])
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        report = dsn.get_payload()[1].as_string()
        self.assertIn("Final-Recipient: rfc822; alice@example.test", report)
        self.assertIn("mailbox is a file", report)
        self.assertIn(b"Subject: hi", self.delivered_files("bob@example.test")[0])
        self.assertNotIn(qid + ".env", self.queued())
        self.assertTrue(any(f"qid={qid} status=bounced" in line for line in self.events), self.events)

    def test_unknown_alias_member_bounced(self):
        """
        Recipients queued as failed (unknown alias members) are reported
        while the others are delivered.
        """
        self.start(notifier=self.notifier)
        self.submit([rcpt("alice@example.test", original="team@example.test"),
                     rcpt("ghost@example.test", original="team@example.test", state=FAILED, status="5.1.1",
                          last_error="5.1.1 unknown alias member")])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        # The failure counts in the status summary, as any failure does.
        self.assertEqual(self.manager.summary()["failed_last_hour"], 1)
        [dsn] = self.dsn_for("bob@example.test")
        report = dsn.get_payload()[1].as_string()
        self.assertIn("Original-Recipient: rfc822; team@example.test", report)
        self.assertIn("Final-Recipient: rfc822; ghost@example.test", report)
        self.assertIn("Status: 5.1.1", report)

    def test_original_headers_from_body_only(self):
        """
        The DSN's returned headers come from the body alone: a body that is
        all header lines (no blank line), followed in the queue file by
        the envelope and its trailer, gives back exactly its own lines.
        """
        body = b"Received: from client\r\nSubject: hi\r\n"
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("broken", True)]})
        self.start(delivery, notifier=self.notifier)
        self.submit([rcpt("alice@example.test")], body=body)
        [dsn] = self.dsn_for("bob@example.test")
        headers = dsn.get_payload()[2]
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertEqual(headers.get_payload(decode=True).replace(b"\n", b"\r\n").replace(b"\r\r", b"\r"), body)
        [raw] = self.delivered_files("bob@example.test")
        self.assertNotIn(b"MAQ2", raw)
        self.assertNotIn(b'"queue_id"', raw)

    def test_null_sender_goes_to_postmaster(self):
        """
        A bounce that bounces goes to the postmaster (a double bounce);
        a double bounce that fails is only logged.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("broken", True)]})
        self.start(delivery, notifier=self.notifier)
        self.submit([rcpt("alice@example.test")], sender=None)
        [dsn] = self.dsn_for("postmaster@example.test")
        self.assertIn("alice@example.test", dsn.get_payload()[1].as_string())
        self.assertEqual(dsn["To"].addresses[0].addr_spec, "postmaster@example.test")
        self.assertEqual(dsn["Subject"], "Postmaster Copy: Undelivered Mail")
        self.assertEqual(self.delivered_files("bob@example.test"), [])
        self.assertEqual(self.queued(), [])

    def test_dsn_deferred_keeps_message(self):
        """
        A DSN that cannot be queued now (temporary resolution error) keeps
        the failed message in the queue until it can.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("broken", True)]})
        calls = []
        real = self.chain.resolve

        def flaky(mailbox):
            calls.append(mailbox)
            if len(calls) == 1:
                return fail(TemporaryResolutionError("db down"))
            return real(mailbox)

        self.chain.resolve = flaky
        self.start(delivery, notifier=self.notifier)
        qid = self.submit([rcpt("alice@example.test")])
        self.assertIn(qid + ".env", self.queued())
        stored = self.stored(qid)
        self.assertEqual(stored.recipients[0].state, FAILED)
        self.assertFalse(stored.recipients[0].notified)
        self.clock.advance(60)
        self.assertEqual(len(self.dsn_for("bob@example.test")), 1)
        self.assertEqual(self.queued(), [])

    def test_delay_warning_once(self):
        """
        After delay_warning_after, one delay warning for the pending remote
        recipients; never twice.
        """

        class Deferring:
            def deliver(self_, envelope, recipients, body_path, report=None):
                return [r.with_state(attempts=r.attempts + 1, last_error="421 busy", status="4.4.2",
                                     next_attempt=self.clock.seconds() + 1800) for r in recipients]

        self.start(remote_delivery=Deferring(), notifier=self.notifier)
        qid = self.submit([rcpt("x@remote.test", local=False)])
        self.assertEqual(self.dsn_for("bob@example.test"), [])
        for _ in range(4):
            self.clock.advance(1800)
        [warning] = self.dsn_for("bob@example.test")
        self.assertIn("Action: delayed", warning.get_payload()[1].as_string())
        self.assertTrue(self.stored(qid).delay_warned)
        self.assertEqual(self.stored(qid).recipients[0].state, PENDING)


class UnresolvableSenderTests(NotifierTestCase):
    def test_bounce_goes_to_postmaster(self):
        """
        A bounce for a sender in one of our domains who is nobody (cron's
        root with no account or alias) goes to the postmaster, worded for
        them, instead of being dropped.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("mailbox is a file", True)]})
        self.start(delivery, notifier=self.notifier)
        qid = self.submit([rcpt("alice@example.test")], sender="root@example.test")
        [dsn] = self.dsn_for("postmaster@example.test")
        self.assertEqual(dsn["Subject"], "Postmaster Copy: Undelivered Mail")
        self.assertIn("Final-Recipient: rfc822; alice@example.test", dsn.get_payload()[1].as_string())
        self.assertTrue(any(f"qid={qid} status=dsn-undeliverable to=<root@example.test>" in e for e in self.events))
        self.assertTrue(any(f"qid={qid} status=bounced" in e and "to=<postmaster@example.test>" in e
                            for e in self.events), self.events)


class LocalExpiryTests(NotifierTestCase):
    """
    A local delivery that keeps failing temporarily (a Maildir that cannot
    be written) follows the retry policy as a remote one does: backoff,
    one delay warning, and a bounce with 4.4.7 after the lifetime.
    """

    def test_backoff_warning_and_expiry(self):
        broken = [DeliveryError("Read-only file system")] * 50
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": broken})
        self.start(delivery, notifier=self.notifier, retry=RetryPolicy(600, 2400, 7200))
        self.patch(self.manager._random, "uniform", lambda low, high: 1.0)
        qid = self.submit([rcpt("alice@example.test")], sender="bob@example.test")
        delays = []
        for _ in range(4):
            delays.append(self.stored(qid).recipients[0].next_attempt - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [600, 1200, 2400, 2400])
        self.assertIn(f'qid={qid} to=<alice@example.test> status=deferred reason="Read-only file system" '
                      'delay=1200', self.events)
        # The delay warning went out after an hour, for the local recipient.
        [warning] = self.dsn_for("bob@example.test")
        report = warning.get_payload()[1].as_string()
        self.assertIn("Action: delayed", report)
        self.assertIn("Final-Recipient: rfc822; alice@example.test", report)
        # The last attempt is at the end of the lifetime, then it bounces.
        self.clock.advance(self.stored(qid).recipients[0].next_attempt - self.clock.seconds())
        self.assertEqual(self.clock.seconds() - T0, 7200)
        bounce = self.dsn_for("bob@example.test")[1]
        report = bounce.get_payload()[1].as_string()
        self.assertIn("Action: failed", report)
        self.assertIn("Status: 4.4.7", report)
        self.assertIn("message expired after 2h in the queue; last error: Read-only file system",
                      " ".join(report.split()))
        self.assertNotIn(qid + ".env", self.queued())
        self.assertNotIn(qid, self.queued())


class EarlyOutcomeBounceTests(NotifierTestCase):
    """
    Bounces when a message's destinations finish at different times: the
    failure is written as soon as it is known, and reported once.
    """

    def submit_two_domains(self, relay):
        self.start(remote_delivery=relay, notifier=self.notifier)
        qid = self.submit([rcpt("x@bad.test", local=False), rcpt("y@slow.test", local=False)])
        self.assertEqual(relay.answer(), "bad.test")
        stored = self.stored(qid)
        self.assertEqual([(r.state, r.notified) for r in stored.recipients], [(FAILED, False), (PENDING, False)])
        self.assertEqual(self.dsn_for("bob@example.test"), [])
        return qid

    def assert_one_dsn(self):
        [dsn] = self.dsn_for("bob@example.test")
        report = dsn.get_payload()[1].as_string()
        self.assertIn("Final-Recipient: rfc822; x@bad.test", report)
        self.assertNotIn("y@slow.test", report)

    def test_bounce_once_at_end_of_round(self):
        """
        One DSN, once the round is over, naming the failed recipient only;
        never a second.
        """
        relay = SlowDomainRelay(fail=("bad.test",))
        self.submit_two_domains(relay)
        relay.answer()
        self.assert_one_dsn()
        self.assertEqual(self.queued(), [])
        self.clock.advance(86400)
        self.assertEqual(len(self.dsn_for("bob@example.test")), 1)

    def test_bounce_once_after_restart(self):
        """
        A restart before the slow domain is done: the next run sends the
        one DSN for the failure it finds on disk, and does not try the
        failed recipient again.
        """
        self.submit_two_domains(SlowDomainRelay(fail=("bad.test",)))
        stopping = self.manager.stopService()
        self.clock.advance(STOP_GRACE)
        self.successResultOf(stopping)

        self.spool = Spool(self.queue_dir, self.disk, self.syncer, self.clock, log=self.log)
        self.notifier.spool = self.spool
        again = SlowDomainRelay()
        self.start(remote_delivery=again, notifier=self.notifier)
        self.assertEqual(again.calls, [["y@slow.test"]])
        again.answer()
        self.assert_one_dsn()
        self.assertEqual(self.queued(), [])


class AdminTests(NotifierTestCase):
    def test_flush(self):
        """
        flush makes deferred recipients due at once.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("busy")]})
        self.start(delivery)
        qid = self.submit([rcpt("alice@example.test")])
        self.assertEqual(self.delivered_files("alice@example.test"), [])
        self.assertEqual(self.manager.flush([qid, "NOSUCHID"]), [qid])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)

    def test_delete(self):
        """
        delete removes a message without delivering or bouncing it.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("busy")]})
        self.start(delivery, notifier=self.notifier)
        qid = self.submit([rcpt("alice@example.test")])
        self.assertEqual(self.successResultOf(self.manager.delete([qid, "NOSUCHID"])), [qid])
        self.assertEqual(self.queued(), [])
        self.clock.advance(3600)
        self.assertEqual(delivery.calls, ["alice@example.test"])
        self.assertEqual(self.delivered_files("bob@example.test"), [])


class InjectTests(NotifierTestCase):
    def test_inject(self):
        """
        An injected message is resolved, gets a Received: header and is
        committed; the manager delivers it.
        """
        self.start()
        envelope = self.successResultOf(inject(
            self.spool, self.chain, self.clock, hostname="mx.example.test", sender=mb("bob@example.test"),
            recipients=[mb("alice@example.test"), mb("nobody@example.test")], data=BODY, via="sendmail"))
        self.assertEqual([str(r.target) for r in envelope.recipients], ["alice@example.test"])
        [data] = self.delivered_files("alice@example.test")
        self.assertIn(b"\r\nReceived: by mx.example.test (mailappliance sendmail)\r\n\tid " +
                      envelope.queue_id.encode(), data)
        self.assertTrue(data.endswith(BODY))

    def test_content_recorded(self):
        """
        What the injected message holds is recorded in its envelope as for
        mail received over SMTP (our Received: header included), so that
        the relay decides alike for both; C{eight_bit} is recorded as the
        declaration.
        """
        self.start()
        for data, content in ((b"Subject: s\r\n\r\nplain\r\n", CONTENT_7BIT),
                              (b"Subject: s\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n", CONTENT_8BIT),
                              (b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nplain\r\n", CONTENT_8BIT_HEADERS)):
            envelope = self.successResultOf(inject(
                self.spool, self.chain, self.clock, hostname="mx.example.test", sender=mb("bob@example.test"),
                recipients=[mb("alice@example.test")], data=data, via="sendmail", eight_bit=not data.isascii()))
            self.assertEqual(envelope.content, content, data)
            self.assertEqual(envelope.body, "7BIT" if data.isascii() else "8BITMIME")

    def test_nobody(self):
        self.start()
        f = self.failureResultOf(inject(
            self.spool, self.chain, self.clock, hostname="mx.example.test", sender=None,
            recipients=[mb("nobody@example.test")], data=BODY, via="dsn"), NoDeliverableRecipient)
        self.assertIn("nobody@example.test", str(f.value))
        self.assertEqual(self.queued(), [])
