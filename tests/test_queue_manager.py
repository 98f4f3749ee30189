# -*- test-case-name: tests.test_queue_manager -*-
"""
Tests for L{mailappliance.queue.manager}, end to end over a real temporary
folder: spool, Maildir delivery and the manager, with a synchronous disk
pool and a L{Clock}.
"""

import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailappliance.address import parse_mailbox
from mailappliance.disk import DirectorySyncer, SynchronousDiskPool
from mailappliance.interfaces import DeliveryError, ILocalDelivery
from mailappliance.maildir import MaildirDelivery, maildir_path
from mailappliance.queue.envelope import DELIVERED, FAILED, PENDING, Envelope, Recipient
from mailappliance.queue.manager import STOP_GRACE, IRemoteDelivery, QueueManager
from mailappliance.queue.rounds import delivered_to, delivery_prefix
from mailappliance.queue.spool import Spool, read_current_envelope

T0 = 1700000000.0


def listing(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
BODY = b"Received: from client\r\nSubject: hi\r\n\r\n.leading dot\r\n\xe9\r\n"


def mb(text):
    return parse_mailbox(text, allow_utf8=True)


def rcpt(target, local=True, original=None, **state):
    return Recipient(mb(original or target), mb(target), local, **state)


@implementer(ILocalDelivery)
class ScriptedDelivery:
    """
    Delivers through a real L{MaildirDelivery}, except that the first
    deliveries to some targets fail with given errors.
    """

    def __init__(self, real, failures=None):
        self.real = real
        self.failures = failures or {}
        self.calls = []

    def deliver(self, mailbox, prefix, body_path, body_size=None):
        self.calls.append(mailbox.key)
        errors = self.failures.get(mailbox.key)
        if errors:
            return fail(errors.pop(0))
        return self.real.deliver(mailbox, prefix, body_path, body_size)

    def deliver_data(self, mailbox, prefix, data):
        self.calls.append(("direct", mailbox.key))
        errors = self.failures.get(mailbox.key)
        if errors:
            return fail(errors.pop(0))
        return self.real.deliver_data(mailbox, prefix, data)

    def withdraw(self, path):
        return self.real.withdraw(path)


@implementer(ILocalDelivery)
class ManualDelivery:
    """
    A delivery whose results the test gives.
    """

    def __init__(self):
        self.pending = []

    def deliver(self, mailbox, prefix, body_path, body_size=None):
        d = Deferred()
        self.pending.append((mailbox.key, d))
        return d

    def deliver_data(self, mailbox, prefix, data):
        return self.deliver(mailbox, prefix, None)

    def withdraw(self, path):
        return succeed(None)


@implementer(IRemoteDelivery)
class SlowDomainRelay:
    """
    A relay that delivers the recipients of every domain but C{slow} when
    the test says (C{answer}, in the order the domains first appear),
    reporting each domain's outcome as it comes, and those of C{slow}
    last, with its result (as L{mailappliance.queue.relay.Relay} does).

    @ivar calls: the recipients' addresses of each call.
    @ivar answers: for each call, the domains still to answer, with their
        outcomes.
    """

    def __init__(self, slow="slow.test", fail=()):
        self.slow = slow
        self.fail = fail
        self.calls = []
        self.answers = []

    def deliver(self, envelope, recipients, body_path, report=None):
        self.calls.append([r.target.key for r in recipients])
        results = []
        for r in recipients:
            if r.target.domain in self.fail:
                results.append(r.with_state(state=FAILED, attempts=r.attempts + 1, status="5.1.1",
                                            last_error="550 5.1.1 no such user", remote_mta="mx." + r.target.domain))
            else:
                results.append(r.with_state(state=DELIVERED, attempts=r.attempts + 1, status="2.0.0"))
        domains = {}
        for position, r in enumerate(recipients):
            domains.setdefault(r.target.domain, []).append((position, results[position]))
        done = Deferred()
        slow = domains.pop(self.slow, None)
        pending = list(domains.items())
        if slow is not None:
            pending.append((self.slow, slow))
        self.answers.append([pending, report, done, results])
        return done

    def answer(self, call=-1):
        """
        The next domain of a call answers.
        """
        pending, report, done, results = self.answers[call]
        domain, outcomes = pending.pop(0)
        if pending:
            if report is not None:
                report(outcomes)
        else:
            done.callback(results)
        return domain


class ManagerTestCase(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.mail_root = os.path.join(self.root, "mail")
        self.queue_dir = os.path.join(self.root, "queue")
        self.disk = SynchronousDiskPool()
        self.syncer = DirectorySyncer(self.disk)
        self.clock = Clock()
        self.clock.advance(T0)
        self.events = []
        self.log = Logger(observer=lambda e: self.events.append(formatEvent(e)))
        self.maildir = MaildirDelivery(self.mail_root, "mx.example.test", self.disk, self.syncer)
        self.spool = Spool(self.queue_dir, self.disk, self.syncer, self.clock, log=self.log)

    def start(self, delivery=None, direct=False, **kwargs):
        """
        Start a manager. Unless C{direct}, the spool's C{on_direct} hook is
        taken away again, so that messages go through the queue (what
        most of these tests are about); L{DirectDeliveryTests} test it.
        """
        self.manager = QueueManager(self.spool, delivery or self.maildir, self.clock, log=self.log, **kwargs)
        self.manager.startService()
        self.assertEqual(self.spool.on_direct, self.manager.deliver_direct)
        if not direct:
            self.spool.on_direct = None
        self.addCleanup(lambda: self.manager.running and self.manager.stopService())
        return self.successResultOf(self.manager.recovered)

    def submit(self, recipients, sender="bob@example.test", body=BODY):
        writer = self.spool.new_message()
        writer.write(body)
        envelope = Envelope(
            queue_id=writer.queue_id,
            sender=mb(sender) if sender else None,
            recipients=tuple(recipients),
            arrival=self.clock.seconds(),
        )
        return self.successResultOf(writer.commit(envelope))

    def delivered_files(self, address):
        new = os.path.join(maildir_path(self.mail_root, mb(address)), "new")
        if not os.path.isdir(new):
            return []
        result = []
        for name in sorted(os.listdir(new)):
            with open(os.path.join(new, name), "rb") as f:
                result.append(f.read())
        return result

    def stored(self, qid):
        # Either layout: the .env once updated, else the embedded envelope.
        return read_current_envelope(self.spool.messages_dir, qid)

    def queued(self):
        return sorted(os.listdir(self.spool.messages_dir))

    def lines(self, qid):
        return [e for e in self.events if e.startswith(f"qid={qid} ")]


class LocalDeliveryTests(ManagerTestCase):
    def test_many_local_recipients(self):
        """
        One message to three local recipients makes three Maildir files,
        each with C{Return-Path:} and C{Delivered-To:} before the body,
        then leaves the queue.
        """
        self.start()
        targets = ["alice@example.test", "carol@example.test", "dave@other.test"]
        qid = self.submit([rcpt(t) for t in targets])
        for target in targets:
            self.assertEqual(
                self.delivered_files(target),
                [b"Return-Path: <bob@example.test>\r\nDelivered-To: " + target.encode() + b"\r\n" + BODY],
            )
        self.assertEqual(self.queued(), [])
        lines = self.lines(qid)
        self.assertEqual(lines[0], f"qid={qid} from=<bob@example.test> size={len(BODY)} nrcpt=3 status=queued")
        for line, target in zip(lines[1:4], targets):
            self.assertTrue(line.startswith(f"qid={qid} to=<{target}> status=delivered path={self.mail_root}/"), line)
        self.assertEqual(lines[4:], [f"qid={qid} status=removed"])

    def test_null_sender_and_utf8(self):
        """
        The null sender gives C{Return-Path: <>}; UTF-8 addresses are
        written as UTF-8.
        """
        self.start()
        self.submit([rcpt("jörg@example.test")], sender=None)
        self.assertEqual(
            self.delivered_files("jörg@example.test"),
            ["Return-Path: <>\r\nDelivered-To: jörg@example.test\r\n".encode() + BODY],
        )

    def test_prefix(self):
        """
        L{delivery_prefix} writes both lines with CRLF.
        """
        self.assertEqual(
            delivery_prefix(mb("a@b.test"), mb("C@d.test")),
            b"Return-Path: <a@b.test>\r\nDelivered-To: C@d.test\r\n",
        )

    def test_delivered_to_subaddress(self):
        """
        A copy for one sub-address of an account names that address in
        C{Delivered-To:}, tag and all; a copy for several addresses, or
        through an alias, names the account.
        """
        self.assertEqual(delivered_to([rcpt("alice@example.test", original="Alice+News@example.test")]),
                         mb("Alice+News@example.test"))
        self.assertEqual(delivered_to([rcpt("alice@example.test", original="alice+a@example.test"),
                                       rcpt("alice@example.test", original="ALICE+A@example.test")]),
                         mb("alice+a@example.test"))
        self.assertEqual(delivered_to([rcpt("alice@example.test", original="alice+a@example.test"),
                                       rcpt("alice@example.test", original="alice+b@example.test")]),
                         mb("alice@example.test"))
        self.assertEqual(delivered_to([rcpt("bob@example.test", original="x+tag@other.test")]), mb("bob@example.test"))
        self.assertEqual(delivered_to([rcpt("alice@example.test", original="team@example.test")]),
                         mb("alice@example.test"))

    def test_subaddress_through_the_queue(self):
        self.start()
        self.submit([rcpt("alice@example.test", original="alice+news@example.test")])
        self.assertEqual(
            self.delivered_files("alice@example.test"),
            [b"Return-Path: <bob@example.test>\r\nDelivered-To: alice+news@example.test\r\n" + BODY],
        )

    def test_same_target_once(self):
        """
        Two recipients of one message that lead to the same account (two
        aliases of one user) get one copy; both are recorded delivered.
        """
        delivery = ScriptedDelivery(self.maildir)
        self.start(delivery)
        self.submit(
            [
                rcpt("alice@example.test", original="team@example.test"),
                rcpt("Alice@example.test", original="boss@example.test"),
                rcpt("remote@far.test", local=False),
            ]
        )
        self.assertEqual(delivery.calls, ["alice@example.test"])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        [qid] = self.manager.queue_ids
        self.assertEqual([r.state for r in self.stored(qid).recipients], [DELIVERED, DELIVERED, PENDING])

    def test_already_failed_left_failed(self):
        """
        Recipients that arrive failed (unknown alias members) stay failed
        (logged at arrival); the message leaves the queue once the others
        are delivered.
        """
        self.start()
        qid = self.submit(
            [
                rcpt("nobody@example.test", state=FAILED, last_error="550 5.1.1 unknown"),
                rcpt("alice@example.test"),
            ]
        )
        self.assertEqual(self.delivered_files("nobody@example.test"), [])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertIn(f'qid={qid} to=<nobody@example.test> status=failed reason="550 5.1.1 unknown"', self.events)
        self.assertEqual(self.queued(), [])

    def test_all_failed_on_arrival(self):
        """
        A message whose recipients all arrived failed is removed at once.
        """
        self.start()
        qid = self.submit([rcpt("nobody@example.test", state=FAILED, last_error="x")])
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.lines(qid)[-1], f"qid={qid} status=removed")


class DirectDeliveryTests(ManagerTestCase):
    """
    L{QueueManager.deliver_direct}, the spool's C{on_direct} hook: a small
    message for local recipients only goes into the Maildirs before the
    commit fires, and into the queue only for what could not be
    delivered.
    """

    def test_all_local(self):
        """
        Every target gets its copy (with the prefix) before the commit
        fires; nothing is written to the queue; the log has one delivered
        line per target and no queue lines; the deliveries count in the
        status summary.
        """
        delivery = ScriptedDelivery(self.maildir)
        self.start(delivery, direct=True)
        targets = ["alice@example.test", "carol@example.test"]
        qid = self.submit([rcpt(t) for t in targets])
        for target in targets:
            self.assertEqual(
                self.delivered_files(target),
                [b"Return-Path: <bob@example.test>\r\nDelivered-To: " + target.encode() + b"\r\n" + BODY],
            )
        self.assertEqual(delivery.calls, [("direct", t) for t in targets])
        self.assertEqual(listing(self.spool.messages_dir) + listing(self.spool.tmp_dir), [])
        self.assertEqual(self.manager.queue_ids, [])
        lines = self.lines(qid)
        self.assertEqual(len(lines), 2, lines)
        for line, target in zip(lines, targets):
            self.assertTrue(line.startswith(f"qid={qid} to=<{target}> status=delivered path={self.mail_root}/"), line)
        self.assertEqual(self.manager.summary()["delivered_last_hour"], 2)

    def test_same_target_once(self):
        """
        Recipients leading to one account get one copy.
        """
        delivery = ScriptedDelivery(self.maildir)
        self.start(delivery, direct=True)
        self.submit([rcpt("alice@example.test", original="team@example.test"),
                     rcpt("Alice@example.test", original="boss@example.test")])
        self.assertEqual(delivery.calls, [("direct", "alice@example.test")])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(self.manager.queue_ids, [])

    def test_not_before_commit(self):
        """
        The commit fires only once every direct delivery is durable.
        """
        delivery = ManualDelivery()
        self.start(delivery, direct=True)
        writer = self.spool.new_message()
        writer.write(BODY)
        committing = writer.commit(Envelope(queue_id=writer.queue_id, sender=None, arrival=T0, recipients=(
            rcpt("alice@example.test"), rcpt("carol@example.test"))))
        self.assertNoResult(committing)
        delivery.pending[0][1].callback("path-a")
        self.assertNoResult(committing)
        delivery.pending[1][1].callback("path-c")
        self.assertEqual(self.successResultOf(committing), writer.queue_id)
        self.assertEqual(self.manager.queue_ids, [])

    def test_remote_recipient_queued(self):
        """
        A message with local and remote recipients: the local copy is
        delivered directly, and the message is queued with it recorded as
        delivered, so the queue only relays (no local delivery, no
        envelope update for it); the log says delivered, then queued.
        """
        delivery = ScriptedDelivery(self.maildir)
        self.start(delivery, direct=True)
        qid = self.submit([rcpt("alice@example.test"), rcpt("remote@far.test", local=False)])
        self.assertEqual(delivery.calls, [("direct", "alice@example.test")])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(self.manager.queue_ids, [qid])
        self.assertEqual([r.state for r in self.stored(qid).recipients], [DELIVERED, PENDING])
        self.assertFalse(os.path.exists(self.spool.envelope_path(qid)), "no envelope update")
        lines = self.lines(qid)
        self.assertTrue(lines[0].startswith(f"qid={qid} to=<alice@example.test> status=delivered"), lines)
        self.assertEqual(lines[1], f"qid={qid} from=<bob@example.test> size={len(BODY)} nrcpt=2 status=queued")

    def test_queue_commit_fails_copies_withdrawn(self):
        """
        When the queue cannot take the rest of the message (here the
        remote recipient's), the client is refused, so the local copy
        already delivered is taken back: its next attempt does not
        deliver it twice. Once queued, a copy stays.
        """
        delivery = ScriptedDelivery(self.maildir)
        self.start(delivery, direct=True)
        writer = self.spool.new_message()
        writer.write(BODY)
        self.patch(self.spool, "messages_dir", os.path.join(self.spool.queue_dir, "missing"))
        envelope = Envelope(queue_id=writer.queue_id, sender=mb("bob@example.test"), arrival=T0,
                            recipients=(rcpt("alice@example.test"), rcpt("remote@far.test", local=False)))
        self.failureResultOf(writer.commit(envelope), OSError)
        self.assertEqual(self.delivered_files("alice@example.test"), [])
        lines = self.lines(writer.queue_id)
        self.assertTrue(lines[0].startswith(f"qid={writer.queue_id} to=<alice@example.test> status=delivered"))
        self.assertIn("status=error", lines[1])
        self.assertTrue(lines[2].startswith(f"qid={writer.queue_id} to=<alice@example.test> status=withdrawn "),
                        lines)
        self.assertEqual(self.manager._direct_copies, {})
        # The copy taken back does not count as delivered.
        self.assertEqual(self.manager.summary()["delivered_last_hour"], 0)
        self.spool.messages_dir = os.path.join(self.spool.queue_dir, "messages")
        self.submit([rcpt("alice@example.test"), rcpt("remote@far.test", local=False)])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(self.manager._direct_copies, {})
        self.assertEqual(self.manager.summary()["delivered_last_hour"], 1)

    def test_remote_only_declined(self):
        """
        A message with no local recipient is left to the queue.
        """
        self.start(direct=True)
        envelope = Envelope(queue_id="x", sender=None, arrival=T0, recipients=(rcpt("r@far.test", local=False),))
        self.assertIsNone(self.manager.deliver_direct(envelope, BODY))

    def test_failed_recipient_queued(self):
        """
        Recipients that arrive failed need the queue (for the bounce): no
        direct delivery.
        """
        delivery = ScriptedDelivery(self.maildir)
        self.start(delivery, direct=True)
        self.submit([rcpt("nobody@example.test", state=FAILED, last_error="x"), rcpt("alice@example.test")])
        self.assertEqual(delivery.calls, ["alice@example.test"])

    def test_partial_failure_queued(self):
        """
        When one target fails, the message is queued with the delivered
        recipients recorded as delivered and the others pending; the
        queue tries those again at once, and nobody gets two copies.
        """
        delivery = ScriptedDelivery(self.maildir, {"carol@example.test": [DeliveryError("disk full")]})
        self.start(delivery, direct=True)
        qid = self.submit([rcpt("alice@example.test"), rcpt("carol@example.test")])
        self.assertEqual(delivery.calls, [("direct", "alice@example.test"), ("direct", "carol@example.test"),
                                          "carol@example.test"])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(len(self.delivered_files("carol@example.test")), 1)
        self.assertEqual(self.queued(), [])
        lines = self.lines(qid)
        self.assertTrue(lines[0].startswith(f"qid={qid} to=<alice@example.test> status=delivered"), lines)
        self.assertEqual(lines[1], f"qid={qid} from=<bob@example.test> size={len(BODY)} nrcpt=2 status=queued")
        self.assertTrue(lines[2].startswith(f"qid={qid} to=<carol@example.test> status=delivered"), lines)
        self.assertEqual(lines[3:], [f"qid={qid} status=removed"])
        self.assertEqual(self.manager.summary()["delivered_last_hour"], 2)

    def test_all_fail_queued(self):
        """
        When every target fails, the message is queued as it came and
        retried by the queue like any other.
        """
        error = DeliveryError("disk full")
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [error, error]})
        self.start(delivery, direct=True, retry_delay=30.0)
        qid = self.submit([rcpt("alice@example.test")])
        self.assertEqual(self.manager.queue_ids, [qid])
        recipient = self.stored(qid).recipients[0]
        self.assertEqual((recipient.state, recipient.attempts, recipient.last_error), (PENDING, 1, "disk full"))
        self.clock.advance(30)
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(self.manager.queue_ids, [])

    def test_unexpected_error(self):
        """
        An error that is not a L{DeliveryError} is logged with its
        traceback and the message is queued.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [ZeroDivisionError()]})
        self.start(delivery, direct=True)
        qid = self.submit([rcpt("alice@example.test")])
        self.assertIn(f"qid={qid} to=<alice@example.test> status=error", self.events)
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(self.queued(), [])

    def test_not_running(self):
        """
        A stopped manager takes its hook away; the hook itself declines
        when the service is not running.
        """
        self.start(direct=True)
        self.manager.stopService()
        self.assertIsNone(self.spool.on_direct)
        envelope = Envelope(queue_id="x", sender=None, arrival=T0, recipients=(rcpt("alice@example.test"),))
        self.assertIsNone(self.manager.deliver_direct(envelope, BODY))


class SubaddressDirectTests(ManagerTestCase):
    def test_direct(self):
        self.start(direct=True)
        self.submit([rcpt("alice@example.test", original="alice+news@example.test")])
        self.assertEqual(
            self.delivered_files("alice@example.test"),
            [b"Return-Path: <bob@example.test>\r\nDelivered-To: alice+news@example.test\r\n" + BODY],
        )

    def test_streamed(self):
        self.start(direct=True)
        body = b"Subject: big\r\n\r\n" + b"z" * 300_000 + b"\r\n"
        recipients = (rcpt("alice@example.test", original="alice+news@example.test"),)
        writer = self.spool.new_message(expected=(mb("bob@example.test"), recipients))
        writer.write(body)
        envelope = Envelope(queue_id=writer.queue_id, sender=mb("bob@example.test"), arrival=T0,
                            recipients=recipients)
        self.successResultOf(writer.commit(envelope))
        self.assertEqual(
            self.delivered_files("alice@example.test"),
            [b"Return-Path: <bob@example.test>\r\nDelivered-To: alice+news@example.test\r\n" + body],
        )


class StreamTests(ManagerTestCase):
    """
    L{QueueManager.stream_direct} and L{QueueManager.streamed}, the
    spool's C{on_stream}/C{on_streamed} hooks for bodies too large to hold
    in memory.
    """

    def test_one_local_mailbox_streamed(self):
        """
        A large body for one local mailbox (through any number of
        recipients leading to it) is written into its Maildir as it
        arrives: nothing is queued, the copy has the prefix, the log has
        the delivered line and the delivery counts in the summary.
        """
        self.start(direct=True)
        body = b"Subject: big\r\n\r\n" + b"z" * 300_000 + b"\r\n"
        writer = self.spool.new_message(expected=(mb("bob@example.test"), (
            rcpt("alice@example.test", original="team@example.test"), rcpt("Alice@example.test"))))
        writer.write(body)
        envelope = Envelope(queue_id=writer.queue_id, sender=mb("bob@example.test"), arrival=T0, recipients=(
            rcpt("alice@example.test", original="team@example.test"), rcpt("Alice@example.test")))
        qid = self.successResultOf(writer.commit(envelope))
        self.assertEqual(self.delivered_files("alice@example.test"),
                         [b"Return-Path: <bob@example.test>\r\nDelivered-To: alice@example.test\r\n" + body])
        self.assertEqual(listing(self.spool.messages_dir) + listing(self.spool.tmp_dir), [])
        [line] = self.lines(qid)
        self.assertTrue(line.startswith(f"qid={qid} to=<alice@example.test> status=delivered path="), line)
        self.assertEqual(self.manager.summary()["delivered_last_hour"], 2)

    def test_not_streamed(self):
        """
        Several mailboxes, a remote or failed recipient, none at all, or a
        stopped manager: no stream (the queue).
        """
        self.start(direct=True)
        bob = mb("bob@example.test")
        for recipients in [
            (rcpt("alice@example.test"), rcpt("carol@example.test")),
            (rcpt("alice@example.test"), rcpt("r@far.test", local=False)),
            (rcpt("alice@example.test"), rcpt("x@example.test", state=FAILED, last_error="550")),
            (),
        ]:
            self.assertIsNone(self.manager.stream_direct(bob, recipients), recipients)
        self.manager.stopService()
        self.assertIsNone(self.manager.stream_direct(bob, (rcpt("alice@example.test"),)))
        self.assertEqual((self.spool.on_stream, self.spool.on_streamed), (None, None))


class RemoteRecipientTests(ManagerTestCase):
    def test_remote_persist(self):
        """
        Without a relay, remote recipients stay pending on disk while local
        ones are delivered; the deferral is logged once per recipient and
        message, not on every round.
        """
        self.start()
        qid = self.submit([rcpt("alice@example.test"), rcpt("carol@far.test", local=False)])
        self.assertEqual(self.queued(), [qid, qid + ".env"])
        stored = self.stored(qid)
        self.assertEqual([r.state for r in stored.recipients], [DELIVERED, PENDING])
        self.assertEqual(stored.recipients[0].attempts, 1)
        self.assertEqual(stored.recipients[1].attempts, 0)
        deferred = f'qid={qid} to=<carol@far.test> status=deferred reason="relay not available yet"'
        self.assertEqual(self.events.count(deferred), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(self.events.count(deferred), 1)

    def test_remote_survives_restart(self):
        """
        After a restart the remote recipient is still queued and logged
        again (once); the local one is not delivered again.
        """
        self.start()
        qid = self.submit([rcpt("alice@example.test"), rcpt("carol@far.test", local=False)])
        self.manager.stopService()
        self.events.clear()
        self.assertEqual(self.start(), 1)
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(self.queued(), [qid, qid + ".env"])
        self.assertIn(f'qid={qid} to=<carol@far.test> status=deferred reason="relay not available yet"', self.events)

    def test_remote_delivery_seam(self):
        """
        With an L{IRemoteDelivery}, the manager hands it the due remote
        recipients, records what it returns, and calls again at the
        earliest C{next_attempt} it set.
        """
        calls = []

        @implementer(IRemoteDelivery)
        class Relay:
            def deliver(self, envelope, recipients, body_path, report=None):
                calls.append((envelope.queue_id, [r.target.key for r in recipients], body_path))
                if len(calls) == 1:
                    return succeed(
                        [
                            recipients[0].with_state(state=DELIVERED, attempts=1),
                            recipients[1].with_state(attempts=1, last_error="451 busy", next_attempt=T0 + 300),
                        ]
                    )
                return succeed([recipients[0].with_state(state=DELIVERED, attempts=2)])

        self.start(remote_delivery=Relay())
        qid = self.submit([rcpt("a@far.test", local=False), rcpt("b@far.test", local=False)])
        self.assertEqual(calls, [(qid, ["a@far.test", "b@far.test"], self.spool.body_path(qid))])
        stored = self.stored(qid)
        self.assertEqual([r.state for r in stored.recipients], [DELIVERED, PENDING])
        self.assertEqual(stored.recipients[1].last_error, "451 busy")
        self.assertNotIn("relay not available", "".join(self.events))
        self.clock.advance(299)
        self.assertEqual(len(calls), 1)
        self.clock.advance(1)
        self.assertEqual(calls[1][1], ["b@far.test"])
        self.assertEqual(self.queued(), [])

    def test_stop_closes_idle_connections(self):
        """
        When the manager has stopped, a relay with a C{close_idle} method
        (idle connections kept for the next message) is told to close them,
        once; a relay without one is fine.
        """
        closed = []

        @implementer(IRemoteDelivery)
        class Relay:
            def deliver(self, envelope, recipients, body_path, report=None):
                return succeed([r.with_state(state=DELIVERED, attempts=1) for r in recipients])

            def close_idle(self):
                closed.append(True)

        self.start(remote_delivery=Relay())
        self.submit([rcpt("a@far.test", local=False)])
        self.assertEqual(closed, [])
        self.successResultOf(self.manager.stopService())
        self.assertEqual(closed, [True])

    def test_remote_delivery_fails(self):
        """
        A failing relay is logged and its recipients retried after
        C{retry_delay}.
        """
        attempts = []

        @implementer(IRemoteDelivery)
        class Broken:
            def deliver(self, envelope, recipients, body_path, report=None):
                attempts.append(self)
                return fail(RuntimeError("boom"))

        self.start(remote_delivery=Broken(), retry_delay=30)
        qid = self.submit([rcpt("a@far.test", local=False)])
        stored = self.stored(qid)
        self.assertEqual((stored.recipients[0].state, stored.recipients[0].next_attempt), (PENDING, T0 + 30))
        self.clock.advance(30)
        self.assertEqual(len(attempts), 2)
        self.assertIn(f'qid={qid} status=error reason="remote delivery failed"', self.events)


class RetryTests(ManagerTestCase):
    def test_temporary_failure_retried(self):
        """
        A temporary failure is recorded on disk (attempts, error, next
        attempt) and retried after C{retry_delay}, then the message leaves.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("disk full")]})
        self.start(delivery, retry_delay=60)
        qid = self.submit([rcpt("alice@example.test"), rcpt("carol@example.test")])
        stored = self.stored(qid)
        self.assertEqual(stored.recipients[0], rcpt("alice@example.test", attempts=1, last_error="disk full", next_attempt=T0 + 60))
        self.assertEqual(stored.recipients[1].state, DELIVERED)
        self.assertIn(f'qid={qid} to=<alice@example.test> status=deferred reason="disk full" delay=60', self.events)
        self.clock.advance(59)
        self.assertEqual(delivery.calls, ["alice@example.test", "carol@example.test"])
        self.clock.advance(1)
        self.assertEqual(delivery.calls[2:], ["alice@example.test"])
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(len(self.delivered_files("carol@example.test")), 1)
        self.assertEqual(self.queued(), [])

    def test_permanent_failure(self):
        """
        A permanent failure marks the recipient failed with its reason and
        logs it; with nothing else pending the message leaves the queue.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("not a directory", permanent=True)]})
        self.start(delivery)
        qid = self.submit([rcpt("alice@example.test"), rcpt("x@far.test", local=False)])
        stored = self.stored(qid)
        self.assertEqual(stored.recipients[0], rcpt("alice@example.test", state=FAILED, attempts=1, last_error="not a directory"))
        self.assertIn(f'qid={qid} to=<alice@example.test> status=failed reason="not a directory"', self.events)
        self.clock.advance(3600)
        self.assertEqual(delivery.calls, ["alice@example.test"])

    def test_unexpected_error_is_temporary(self):
        """
        An exception that is not a L{DeliveryError} is logged and treated
        as temporary.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [ZeroDivisionError("bug")]})
        self.start(delivery, retry_delay=10)
        qid = self.submit([rcpt("alice@example.test")])
        self.assertEqual(self.stored(qid).recipients[0].next_attempt, T0 + 10)
        self.clock.advance(10)
        self.assertEqual(self.queued(), [])

    def test_persisted_schedule_after_restart(self):
        """
        After a restart, a recipient waiting for a retry is tried at its
        persisted C{next_attempt}, not at once.
        """
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": [DeliveryError("busy")]})
        self.start(delivery, retry_delay=100)
        qid = self.submit([rcpt("alice@example.test")])
        self.manager.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(40)
        self.start(delivery, retry_delay=100)
        self.assertEqual(len(delivery.calls), 1)
        self.clock.advance(59)
        self.assertEqual(len(delivery.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(delivery.calls), 2)
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.lines(qid)[-1], f"qid={qid} status=removed")

    def test_update_failure(self):
        """
        If the envelope update fails, the outcome is kept in memory (no
        second delivery in this run) and the write is tried again.
        """
        delivery = ScriptedDelivery(self.maildir)
        self.start(delivery, retry_delay=5)
        real_update = self.spool.update
        failures = [OSError(28, "No space left on device")]

        def update(envelope):
            if failures:
                return fail(failures.pop())
            return real_update(envelope)

        self.spool.update = update
        qid = self.submit([rcpt("alice@example.test"), rcpt("x@far.test", local=False)])
        self.assertIn(f'qid={qid} status=error reason="envelope update failed: [Errno 28] No space left on device"', self.events)
        self.assertEqual(self.stored(qid).recipients[0].state, PENDING)
        self.clock.advance(5)
        self.assertEqual(self.stored(qid).recipients[0].state, DELIVERED)
        self.assertEqual(delivery.calls, ["alice@example.test"])


class RecoveryTests(ManagerTestCase):
    def put(self, envelope, body=BODY):
        os.makedirs(self.spool.messages_dir, exist_ok=True)
        with open(self.spool.body_path(envelope.queue_id), "wb") as f:
            f.write(body)
        with open(self.spool.envelope_path(envelope.queue_id), "wb") as f:
            f.write(envelope.to_bytes())

    def test_resume_half_done(self):
        """
        A message a previous run half delivered: only the pending
        recipients are delivered, then it leaves the queue.
        """
        qid = "0000000000000AAA"
        self.put(
            Envelope(
                queue_id=qid,
                sender=mb("bob@example.test"),
                recipients=(rcpt("alice@example.test", state=DELIVERED, attempts=1), rcpt("carol@example.test")),
                arrival=T0 - 10,
                size=len(BODY),
            )
        )
        delivery = ScriptedDelivery(self.maildir)
        self.assertEqual(self.start(delivery), 1)
        self.assertEqual(delivery.calls, ["carol@example.test"])
        self.assertEqual(len(self.delivered_files("carol@example.test")), 1)
        self.assertEqual(self.queued(), [])
        self.assertNotIn("status=queued", "".join(self.events))

    def test_committed_while_stopped(self):
        """
        A message committed while the manager was not running (the crash
        window between the 250 and delivery) is delivered at the next
        start.
        """
        qid = self.submit([rcpt("alice@example.test")])
        self.assertEqual(self.queued(), [qid])
        self.start()
        self.assertEqual(len(self.delivered_files("alice@example.test")), 1)
        self.assertEqual(self.queued(), [])

    def test_recovered_not_taken_twice(self):
        """
        A message both recovered and announced by C{on_commit} (committed
        while recovery scanned) is delivered once.
        """
        delivery = ScriptedDelivery(self.maildir)
        qid = self.submit([rcpt("alice@example.test"), rcpt("x@far.test", local=False)])
        self.start(delivery)
        self.manager.enqueue(self.stored(qid))
        self.assertEqual(delivery.calls, ["alice@example.test"])


class SchedulingTests(ManagerTestCase):
    def test_one_round_at_a_time(self):
        """
        While a round of a message is in flight, another trigger (a timer, a
        second announcement) does not start a second delivery of the same
        recipient; the round that follows finds nothing due.
        """
        delivery = ManualDelivery()
        self.start(delivery)
        qid = self.submit([rcpt("alice@example.test")])
        self.assertEqual(len(delivery.pending), 1)
        self.manager._run(qid)
        self.clock.advance(1000)
        self.assertEqual(len(delivery.pending), 1)
        delivery.pending[0][1].callback("/path")
        self.assertEqual(len(delivery.pending), 1)
        self.assertEqual(self.queued(), [])

    def test_outcome_written_when_known(self):
        """
        The outcome of a local delivery is written (one envelope update)
        as soon as it is known while another delivery of the round is
        still in flight; the last one is written by the end of the round.
        """
        delivery = ManualDelivery()
        self.start(delivery)
        updates = []
        real_update = self.spool.update
        self.spool.update = lambda envelope: (updates.append(envelope), real_update(envelope))[1]
        qid = self.submit([rcpt("a@example.test"), rcpt("b@example.test"), rcpt("c@far.test", local=False)])
        self.assertEqual(len(delivery.pending), 2)
        delivery.pending[0][1].callback("/a")
        self.assertEqual(len(updates), 1)
        self.assertEqual([r.state for r in updates[0].recipients], [DELIVERED, PENDING, PENDING])
        self.assertEqual(self.stored(qid), updates[0])
        delivery.pending[1][1].errback(DeliveryError("later"))
        self.assertEqual(len(updates), 2)
        self.assertEqual([(r.state, r.attempts) for r in updates[1].recipients],
                         [(DELIVERED, 1), (PENDING, 1), (PENDING, 0)])
        self.assertEqual(self.stored(qid), updates[1])

    def test_outcomes_known_together_written_once(self):
        """
        Outcomes known at once (here, deliveries that finish at once) make
        one envelope update for the round, not one each.
        """
        self.start()
        updates = []
        real_update = self.spool.update
        self.spool.update = lambda envelope: (updates.append(envelope), real_update(envelope))[1]
        qid = self.submit([rcpt("a@example.test"), rcpt("b@example.test"), rcpt("c@example.test"),
                           rcpt("d@far.test", local=False)])
        self.assertEqual(len(updates), 1)
        self.assertEqual([r.state for r in self.stored(qid).recipients], [DELIVERED, DELIVERED, DELIVERED, PENDING])

    def test_concurrency_limit(self):
        """
        No more than C{max_local_concurrency} local deliveries run at once,
        over all messages.
        """
        delivery = ManualDelivery()
        self.start(delivery, max_local_concurrency=2)
        for name in "abcde":
            self.submit([rcpt(f"{name}@example.test")])
        self.assertEqual([key for key, d in delivery.pending], ["a@example.test", "b@example.test"])
        delivery.pending[0][1].callback("/a")
        self.assertEqual(len(delivery.pending), 3)
        for _, d in list(delivery.pending[1:]):
            d.callback("/x")
        for _, d in list(delivery.pending[3:]):
            if not d.called:
                d.callback("/x")
        self.assertEqual(self.queued(), [])

    def test_stop_waits_for_round(self):
        """
        C{stopService} fires once the rounds in flight have recorded their
        outcomes; no new round starts after it.
        """
        delivery = ManualDelivery()
        self.start(delivery)
        qid = self.submit([rcpt("alice@example.test"), rcpt("x@far.test", local=False)])
        stopping = self.manager.stopService()
        self.assertNoResult(stopping)
        delivery.pending[0][1].callback("/done")
        self.successResultOf(stopping)
        self.assertEqual(self.stored(qid).recipients[0].state, DELIVERED)
        self.assertEqual(self.spool.on_commit, None)
        self.submit([rcpt("bob@example.test")])
        self.assertEqual(len(delivery.pending), 1)

    def test_removed_by_someone_else(self):
        """
        A message removed from the queue by another process (the
        administrator) is dropped when its envelope update finds it gone,
        not retried for ever.
        """
        busy = [DeliveryError("busy"), DeliveryError("busy")]
        delivery = ScriptedDelivery(self.maildir, {"alice@example.test": busy})
        self.start(delivery, retry_delay=5)
        qid = self.submit([rcpt("x@far.test", local=False), rcpt("alice@example.test")])
        self.successResultOf(self.spool.remove(qid))
        self.clock.advance(5)
        self.assertEqual(delivery.calls, ["alice@example.test"] * 2)
        self.assertEqual(self.manager.queue_ids, [])
        self.assertEqual(self.lines(qid)[-1], f'qid={qid} status=removed reason="no longer in the queue"')
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.queued(), [])


class OutcomeWriteTests(ManagerTestCase):
    """
    The outcome of each delivery of a round (a local target, a remote
    destination's transaction) is written as soon as it is known, one
    envelope update per batch, not once the slowest destination is done.
    """

    def hold_updates(self):
        """
        Make envelope updates wait until L{release}, as on a busy disk.
        C{self.updates} lists the envelopes of the updates started.
        """
        self.updates = []
        self.held = []
        real_update = self.spool.update

        def update(envelope):
            self.updates.append(envelope)
            d = Deferred()
            self.held.append((envelope, real_update, d))
            return d

        self.spool.update = update

    def release(self):
        """
        The oldest held update goes to disk.
        """
        self.assertEqual(len(self.held), 1, "one update at a time per message")
        envelope, real_update, d = self.held.pop(0)
        real_update(envelope).chainDeferred(d)

    def test_first_domain_written_before_slow_one(self):
        """
        A message to two domains, one answering at once and one slow: the
        first one's outcome is on disk before the second arrives; the
        message leaves the queue once both are done.
        """
        relay = SlowDomainRelay()
        self.start(remote_delivery=relay)
        qid = self.submit([rcpt("a@fast.test", local=False), rcpt("b@slow.test", local=False)])
        self.assertEqual(relay.calls, [["a@fast.test", "b@slow.test"]])
        self.assertEqual(relay.answer(), "fast.test")
        self.assertEqual([(r.state, r.attempts, r.status) for r in self.stored(qid).recipients],
                         [(DELIVERED, 1, "2.0.0"), (PENDING, 0, "")])
        self.assertEqual(relay.answer(), "slow.test")
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.lines(qid)[-1], f"qid={qid} status=removed")
        self.assertEqual(relay.calls, [["a@fast.test", "b@slow.test"]])

    def test_restart_does_not_deliver_again(self):
        """
        A restart while a slow domain holds the round (the service stops
        after its grace time): the next run, a new manager recovering from
        the same spool, relays only the slow domain's recipient; the one
        already accepted by the other domain is not sent again.
        """
        relay = SlowDomainRelay()
        self.start(remote_delivery=relay)
        qid = self.submit([rcpt("a@fast.test", local=False), rcpt("b@slow.test", local=False)])
        relay.answer()
        stopping = self.manager.stopService()
        self.clock.advance(STOP_GRACE)
        self.successResultOf(stopping)

        self.spool = Spool(self.queue_dir, self.disk, self.syncer, self.clock, log=self.log)
        again = SlowDomainRelay()
        self.assertEqual(self.start(remote_delivery=again), 1)
        self.assertEqual(again.calls, [["b@slow.test"]])
        again.answer()
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.lines(qid)[-1], f"qid={qid} status=removed")

    def test_local_outcome_written_while_relay_slow(self):
        """
        A local delivery's outcome is written while the message's remote
        destination is still in flight.
        """
        delivery = ManualDelivery()
        relay = SlowDomainRelay()
        self.start(delivery, remote_delivery=relay)
        qid = self.submit([rcpt("alice@example.test"), rcpt("b@slow.test", local=False)])
        delivery.pending[0][1].callback("/a")
        self.assertEqual([r.state for r in self.stored(qid).recipients], [DELIVERED, PENDING])
        relay.answer()
        self.assertEqual(self.queued(), [])

    def test_outcomes_coalesced_while_writing(self):
        """
        Outcomes that arrive while an update is in flight are written
        together by the next one (one update at a time); the end of the
        round waits for the update in flight, then removes the message
        (no further update).
        """
        relay = SlowDomainRelay()
        self.start(remote_delivery=relay)
        self.hold_updates()
        qid = self.submit([rcpt("a@one.test", local=False), rcpt("b@two.test", local=False),
                           rcpt("c@three.test", local=False), rcpt("d@slow.test", local=False)])
        self.assertEqual(relay.answer(), "one.test")
        self.assertEqual([[r.state for r in e.recipients] for e in self.updates],
                         [[DELIVERED, PENDING, PENDING, PENDING]])
        self.assertEqual(relay.answer(), "two.test")
        self.assertEqual(relay.answer(), "three.test")
        self.assertEqual(len(self.updates), 1)
        self.release()
        self.assertEqual([r.state for r in self.stored(qid).recipients], [DELIVERED, PENDING, PENDING, PENDING])
        self.assertEqual([[r.state for r in e.recipients] for e in self.updates[1:]],
                         [[DELIVERED, DELIVERED, DELIVERED, PENDING]])
        self.assertEqual(relay.answer(), "slow.test")
        self.assertEqual(self.queued(), [qid, qid + ".env"], "not removed while an update is in flight")
        self.release()
        self.assertEqual(len(self.updates), 2)
        self.assertEqual(self.held, [])
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.lines(qid)[-1], f"qid={qid} status=removed")

    def test_one_write_when_all_arrive_during_a_write(self):
        """
        When every other outcome arrives while the first update is in
        flight, the end of the round writes them (here: removes the
        message) without an update of its own in between.
        """
        relay = SlowDomainRelay()
        self.start(remote_delivery=relay)
        self.hold_updates()
        qid = self.submit([rcpt("a@one.test", local=False), rcpt("b@two.test", local=False),
                           rcpt("c@slow.test", local=False)])
        relay.answer()
        relay.answer()
        relay.answer()
        self.assertEqual(len(self.updates), 1)
        self.release()
        self.assertEqual(len(self.updates), 1)
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.lines(qid)[-1], f"qid={qid} status=removed")

    def test_one_destination_one_write(self):
        """
        A round with one delivery (one remote domain) writes once, at its
        end, as before: here an update, since a recipient is deferred.
        """
        @implementer(IRemoteDelivery)
        class Deferring:
            def deliver(self, envelope, recipients, body_path, report=None):
                return succeed([r.with_state(attempts=1, last_error="451 busy", next_attempt=T0 + 300)
                                for r in recipients])

        self.start(remote_delivery=Deferring())
        updates = []
        real_update = self.spool.update
        self.spool.update = lambda envelope: (updates.append(envelope), real_update(envelope))[1]
        self.submit([rcpt("a@far.test", local=False), rcpt("b@far.test", local=False)])
        self.assertEqual(len(updates), 1)

    def test_reported_outcomes_kept_when_relay_fails(self):
        """
        If the relay fails after reporting some outcomes, those stand:
        only the others are retried after C{retry_delay}.
        """
        calls = []

        @implementer(IRemoteDelivery)
        class Breaking:
            def deliver(self, envelope, recipients, body_path, report=None):
                calls.append([r.target.key for r in recipients])
                if len(calls) == 1:
                    report([(0, recipients[0].with_state(state=DELIVERED, attempts=1))])
                    return fail(RuntimeError("boom"))
                return succeed([r.with_state(state=DELIVERED, attempts=r.attempts + 1) for r in recipients])

        self.start(remote_delivery=Breaking(), retry_delay=30)
        qid = self.submit([rcpt("a@fast.test", local=False), rcpt("b@slow.test", local=False)])
        self.assertEqual([(r.state, r.next_attempt) for r in self.stored(qid).recipients],
                         [(DELIVERED, 0.0), (PENDING, T0 + 30)])
        self.clock.advance(30)
        self.assertEqual(calls, [["a@fast.test", "b@slow.test"], ["b@slow.test"]])
        self.assertEqual(self.queued(), [])

    def test_early_write_failure(self):
        """
        If the update of an early outcome fails, it is logged, the outcome
        stays in memory (no second delivery) and the end of the round
        writes it with the others.
        """
        relay = SlowDomainRelay()
        self.start(remote_delivery=relay)
        real_update = self.spool.update
        failures = [OSError(28, "No space left on device")]

        def update(envelope):
            if failures:
                return fail(failures.pop())
            return real_update(envelope)

        self.spool.update = update
        qid = self.submit([rcpt("a@fast.test", local=False), rcpt("b@slow.test", local=False),
                           rcpt("c@later.test", local=False, next_attempt=T0 + 600)])
        relay.answer()
        self.assertIn(f'qid={qid} status=error reason="envelope update failed: [Errno 28] No space left on device"',
                      self.events)
        self.assertEqual([r.state for r in self.stored(qid).recipients], [PENDING, PENDING, PENDING])
        relay.answer()
        self.assertEqual([r.state for r in self.stored(qid).recipients], [DELIVERED, DELIVERED, PENDING])
        self.assertEqual(relay.calls, [["a@fast.test", "b@slow.test"]])
