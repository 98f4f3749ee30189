"""
Tests for L{mailappliance.queue.relay}: grouping, routing failures, the
retry schedule, expiry, loop detection and the early report of each
destination's outcome, with a fake router and a fake SMTP client; and the
relay in the queue manager's rounds over a real spool.
"""

import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mailappliance.address import parse_mailbox
from mailappliance.disk import SynchronousDiskPool
from mailappliance.queue.envelope import (
    CONTENT_7BIT,
    CONTENT_8BIT,
    CONTENT_8BIT_HEADERS,
    CONTENT_UNKNOWN,
    DELIVERED,
    FAILED,
    PENDING,
    Envelope,
    Recipient,
)
from mailappliance.queue.manager import STOP_GRACE, IRemoteDelivery
from mailappliance.queue.relay import (
    MAX_HOPS,
    PER_DESTINATION_LIMIT,
    Relay,
    RetryPolicy,
)
from mailappliance.queue.routing import RouteHost, RoutingError
from mailappliance.queue.spool import Spool
from mailappliance.smtp.client import ClientOptions
from mailappliance.smtp.client_outcome import DELIVERED as OK
from mailappliance.smtp.client_outcome import (
    PERMANENT,
    TEMPORARY,
    DeliveryOutcome,
    RecipientResult,
)
from tests.test_queue_manager import ManagerTestCase
from tests.test_queue_manager import rcpt as queued_rcpt

T0 = 1700000000.0


class FakeRouter:
    def __init__(self, errors=None):
        self.errors = errors or {}
        self.asked = []

    def route(self, domain):
        self.asked.append(domain)
        if domain in self.errors:
            return defer.fail(self.errors[domain])
        return defer.succeed([RouteHost("mx." + domain, ("192.0.2.1",), 25)])


class FakeClient:
    """
    Answers each recipient from a table: address -> (status, reply, code).
    """

    def __init__(self, table=None):
        self.table = table or {}
        self.calls = []
        self.caches = []
        self.messages = []

    def __call__(self, reactor, hosts, message, options, disk=None, cache=None):
        self.calls.append((hosts[0].name, message.recipients))
        self.messages.append(message)
        self.caches.append(cache)
        results = []
        for r in message.recipients:
            status, reply, code = self.table.get(r, (OK, "250 2.0.0 ok", "2.0.0"))
            results.append(RecipientResult(r, status, reply, code, hosts[0].name, True))
        return defer.succeed(DeliveryOutcome(tuple(results), host=hosts[0].name, address="192.0.2.1", port=25))


def rcpt(address, **kw):
    m = parse_mailbox(address)
    return Recipient(m, m, False, **kw)


class RelayTestCase(SynchronousTestCase):
    """
    A relay on a fake router and SMTP client, and a spooled body.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.events = []
        self.body = FilePath(self.mktemp())
        self.body.setContent(b"Received: x\r\nSubject: s\r\n\r\nbody\r\n")

    def relay(self, client=None, router=None, **kw):
        self.client = client or FakeClient()
        self.router = router or FakeRouter()
        return Relay(None, self.router, ClientOptions("mx.example.test"),
                     RetryPolicy(initial=300, maximum=3600, lifetime=86400), SynchronousDiskPool(),
                     clock=self.clock, deliver=self.client, rng=random.Random(4),
                     log=Logger(observer=lambda e: self.events.append(formatEvent(e))), **kw)

    def envelope(self, *recipients, arrival=T0, size=None):
        size = len(self.body.getContent()) if size is None else size
        return Envelope("QID", parse_mailbox("alice@example.test"), tuple(recipients), arrival, size=size)

    def deliver_all(self, relay, envelope):
        return self.successResultOf(relay.deliver(envelope, envelope.recipients, self.body.path))


class RelayTests(RelayTestCase):
    def test_interface(self):
        self.assertTrue(verifyObject(IRemoteDelivery, self.relay()))

    def test_at_most_100_recipients_per_transaction(self):
        """
        250 recipients for one domain go in transactions of 100 (RFC 5321
        section 4.5.3.1.8), in order, all in this attempt.
        """
        relay = self.relay()
        e = self.envelope(*[rcpt(f"u{n}@one.test") for n in range(250)])
        results = self.deliver_all(relay, e)
        self.assertEqual([r.state for r in results], [DELIVERED] * 250)
        self.assertEqual([len(recipients) for _, recipients in self.client.calls], [100, 100, 50])
        self.assertEqual([r.target.local for r in results], [f"u{n}" for n in range(250)])

    def test_each_batch_reported_at_once(self):
        """
        The outcomes of a destination's first transactions are reported as
        each finishes, while the next is still in flight, so that a stop or
        crash then does not send those recipients the message again.
        """
        pending = []

        def slow(reactor, hosts, message, options, disk=None, cache=None):
            d = defer.Deferred()
            pending.append((d, message))
            return d

        relay = self.relay(client=slow)
        reported = []
        e = self.envelope(*[rcpt(f"u{n}@one.test") for n in range(150)])
        result = relay.deliver(e, e.recipients, self.body.path, report=reported.extend)
        d, message = pending.pop(0)
        d.callback(DeliveryOutcome(tuple(RecipientResult(r, OK, "250 ok", "2.0.0", "h", True)
                                         for r in message.recipients), host="h", address="1", port=25))
        self.assertNoResult(result)
        self.assertEqual([i for i, _ in reported], list(range(100)))
        self.assertEqual({r.state for _, r in reported}, {DELIVERED})
        d, message = pending.pop(0)
        self.assertEqual(len(message.recipients), 50)
        d.callback(DeliveryOutcome(tuple(RecipientResult(r, OK, "250 ok", "2.0.0", "h", True)
                                         for r in message.recipients), host="h", address="1", port=25))
        self.assertEqual(len(self.successResultOf(result)), 150)
        self.assertEqual(len(reported), 100)

    def test_too_many_recipients_sent_at_once_in_another_transaction(self):
        """
        Recipients a server refused with 452 "too many recipients" while
        it took others go in the next transaction at once; a 452 with no
        progress (nobody taken) waits for the retry.
        """

        class Limited(FakeClient):
            # Takes at most 2 recipients per transaction.
            def __call__(self, reactor, hosts, message, options, disk=None, cache=None):
                self.calls.append((hosts[0].name, message.recipients))
                results = [RecipientResult(r, OK, "250 2.0.0 ok", "2.0.0", hosts[0].name, True)
                           if n < 2 else
                           RecipientResult(r, TEMPORARY, "452 4.5.3 too many recipients", "4.5.3", hosts[0].name, True)
                           for n, r in enumerate(message.recipients)]
                return defer.succeed(DeliveryOutcome(tuple(results), host=hosts[0].name, address="192.0.2.1",
                                                     port=25))

        relay = self.relay(Limited())
        e = self.envelope(*[rcpt(f"u{n}@one.test") for n in range(5)])
        results = self.deliver_all(relay, e)
        self.assertEqual([r.state for r in results], [DELIVERED] * 5)
        self.assertEqual([len(recipients) for _, recipients in self.client.calls], [5, 3, 1])
        self.assertEqual([r.status for r in results], ["2.0.0"] * 5)

        class Full(FakeClient):
            def __call__(self, reactor, hosts, message, options, disk=None, cache=None):
                self.calls.append((hosts[0].name, message.recipients))
                results = [RecipientResult(r, TEMPORARY, "452 4.5.3 too many recipients", "4.5.3", hosts[0].name,
                                           True) for r in message.recipients]
                return defer.succeed(DeliveryOutcome(tuple(results), host=hosts[0].name, address="192.0.2.1",
                                                     port=25))

        relay = self.relay(Full())
        results = self.deliver_all(relay, self.envelope(rcpt("a@one.test"), rcpt("b@one.test")))
        self.assertEqual(len(self.client.calls), 1)
        self.assertEqual([r.state for r in results], ["pending", "pending"])
        self.assertGreater(results[0].next_attempt, T0)

    def test_grouped_by_domain(self):
        """
        One transaction per destination domain; all delivered.
        """
        relay = self.relay()
        e = self.envelope(rcpt("a@one.test"), rcpt("b@two.test"), rcpt("c@one.test"))
        results = self.deliver_all(relay, e)
        self.assertEqual([r.state for r in results], [DELIVERED] * 3)
        self.assertEqual(sorted(self.client.calls), [("mx.one.test", ("a@one.test", "c@one.test")),
                                                     ("mx.two.test", ("b@two.test",))])
        self.assertIn('qid=QID to=<a@one.test> relay=mx.one.test[192.0.2.1]:25 delay=0.0 tls=no status=sent '
                      'dsn=2.0.0 reply="250 2.0.0 ok"', self.events)

    def test_smarthost_one_group(self):
        """
        With a smarthost all remote recipients of a message, whatever their
        domain, are one transaction.
        """
        relay = self.relay(smarthost=True)
        self.deliver_all(relay, self.envelope(rcpt("a@one.test"), rcpt("b@two.test")))
        self.assertEqual(len(self.client.calls), 1)

    def test_close_idle(self):
        """
        L{Relay.close_idle} closes the smarthost's idle connections; with
        MX routing there are none and it does nothing.
        """
        relay = self.relay(smarthost=True)
        closed = []
        relay.sessions.close_all = lambda: closed.append(True)
        relay.close_idle()
        self.assertEqual(closed, [True])
        self.relay().close_idle()

    def test_smarthost_connections_reused(self):
        """
        With a smarthost the client is given the relay's one session cache
        for every message, so connections carry on from one to the next;
        with MX routing it is given none.
        """
        relay = self.relay(smarthost=True)
        self.deliver_all(relay, self.envelope(rcpt("a@one.test")))
        self.deliver_all(relay, self.envelope(rcpt("b@two.test")))
        self.assertIsNotNone(relay.sessions)
        self.assertEqual(self.client.caches, [relay.sessions, relay.sessions])
        mx = self.relay()
        self.deliver_all(mx, self.envelope(rcpt("a@one.test")))
        self.assertEqual(self.client.caches, [None])

    def test_permanent_and_temporary(self):
        """
        A 5xx fails the recipient with the remote reply; a 4xx schedules a
        retry after retry_initial (with jitter).
        """
        client = FakeClient({"a@one.test": (PERMANENT, "550 5.1.1 no such user", "5.1.1"),
                             "b@one.test": (TEMPORARY, "451 4.3.0 try later", "4.3.0")})
        a, b = self.deliver_all(self.relay(client), self.envelope(rcpt("a@one.test"), rcpt("b@one.test")))
        self.assertEqual((a.state, a.status, a.last_error, a.remote_mta), (FAILED, "5.1.1", "550 5.1.1 no such user",
                                                                           "mx.one.test"))
        self.assertEqual((b.state, b.attempts, b.status), (PENDING, 1, "4.3.0"))
        self.assertTrue(T0 + 270 <= b.next_attempt <= T0 + 330, b.next_attempt - T0)

    def test_backoff_doubles_to_max(self):
        """
        The delay doubles after each failure up to retry_max.
        """
        client = FakeClient({"b@one.test": (TEMPORARY, "421 busy", "4.0.0")})
        relay = self.relay(client)
        r = rcpt("b@one.test")
        delays = []
        for _ in range(6):
            e = self.envelope(r)
            [r] = self.deliver_all(relay, e)
            delays.append(r.next_attempt - self.clock.seconds())
        for delay, expected in zip(delays, [300, 600, 1200, 2400, 3600, 3600]):
            self.assertTrue(0.9 * expected <= delay <= 1.1 * expected, delays)

    def test_expiry(self):
        """
        Past max_queue_lifetime a temporary failure becomes a failure (4.4.7)
        keeping the last error; just before it, the retry is capped at the
        expiry time.
        """
        client = FakeClient({"b@one.test": (TEMPORARY, "421 busy", "4.0.0")})
        relay = self.relay(client)
        [r] = self.deliver_all(relay, self.envelope(rcpt("b@one.test"), arrival=T0 - 86400 + 60))
        self.assertEqual((r.state, r.next_attempt), (PENDING, T0 + 60))
        [r] = self.deliver_all(relay, self.envelope(rcpt("b@one.test"), arrival=T0 - 86400))
        self.assertEqual((r.state, r.status), (FAILED, "4.4.7"))
        self.assertIn("last error: 421 busy", r.last_error)

    def test_routing_errors(self):
        """
        NXDOMAIN fails permanently (5.1.2); SERVFAIL defers.
        """
        router = FakeRouter({"gone.test": RoutingError("domain gone.test does not exist", True, "5.1.2"),
                             "flaky.test": RoutingError("MX lookup failed: SERVFAIL", False, "4.4.3")})
        a, b = self.deliver_all(self.relay(router=router), self.envelope(rcpt("a@gone.test"), rcpt("b@flaky.test")))
        self.assertEqual((a.state, a.status), (FAILED, "5.1.2"))
        self.assertEqual((b.state, b.status), (PENDING, "4.4.3"))
        self.assertEqual(self.client.calls, [])

    def test_loop_counts_body_only(self):
        """
        Loop detection counts the C{Received:} fields of the body only
        (the first C{envelope.size} bytes): what follows in the queue file
        is not counted.
        """
        body = b"Received: x\r\n" * MAX_HOPS
        self.body.setContent(body + b"Received: from the envelope\r\nMAQ2 0000000028 00000000\n")
        [r] = self.deliver_all(self.relay(), self.envelope(rcpt("a@one.test"), size=len(body)))
        self.assertEqual(r.state, "delivered")
        self.assertEqual(len(self.client.calls), 1)

    def test_loop(self):
        """
        A message with more than MAX_HOPS Received: headers bounces (5.4.6)
        without being sent.
        """
        self.body.setContent(b"Received: x\r\n" * (MAX_HOPS + 1) + b"\r\nbody\r\n")
        [r] = self.deliver_all(self.relay(), self.envelope(rcpt("a@one.test")))
        self.assertEqual((r.state, r.status), (FAILED, "5.4.6"))
        self.assertEqual(self.client.calls, [])

    def test_concurrency_limit(self):
        """
        At most max_concurrent transactions at once.
        """
        pending = []

        def slow(reactor, hosts, message, options, disk=None, cache=None):
            d = defer.Deferred()
            pending.append((d, message))
            return d

        relay = self.relay(client=slow, max_concurrent=2)
        e = self.envelope(rcpt("a@one.test"), rcpt("b@two.test"), rcpt("c@three.test"))
        d = relay.deliver(e, e.recipients, self.body.path)
        self.assertEqual(len(pending), 2)
        for _ in range(3):
            waiting, message = pending.pop(0)
            waiting.callback(DeliveryOutcome(tuple(RecipientResult(r, OK, "250 ok", "2.0.0", "h", True)
                                                   for r in message.recipients), host="h", address="1", port=25))
        self.assertEqual([r.state for r in self.successResultOf(d)], [DELIVERED] * 3)


class ContentTests(RelayTestCase):
    """
    What the next hop must offer (C{BODY=8BITMIME}, C{SMTPUTF8}) follows
    what the message holds, recorded at reception, not what the client
    declared; the SMTP client then bounces (5.6.3, 5.6.7) at a server
    that lacks what is needed, and sends the parameter to one that has it
    (L{tests.test_smtp_client.ExtensionTests}).
    """

    def needs(self, recipient="bob@remote.test", sender="alice@example.test", **fields):
        """
        @return: C{(eight_bit, smtputf8)} of the message the relay gave the
            SMTP client for an envelope with C{fields}.
        """
        envelope = Envelope("QID", parse_mailbox(sender, allow_utf8=True),
                            (rcpt(recipient),), T0, size=len(self.body.getContent()), **fields)
        relay = self.relay()
        [outcome] = self.deliver_all(relay, envelope)
        self.assertEqual(outcome.state, DELIVERED)
        [message] = self.client.messages
        return message.eight_bit, message.smtputf8

    def test_declared_8bitmime_but_7bit(self):
        """
        Declared C{BODY=8BITMIME}, all ASCII: no C{BODY=8BITMIME} needed,
        so it may go to a server without 8BITMIME as it is.
        """
        self.assertEqual(self.needs(body="8BITMIME", content=CONTENT_7BIT), (False, False))

    def test_declared_smtputf8_but_ascii(self):
        """
        Declared C{SMTPUTF8}, ASCII addresses and header section: no
        C{SMTPUTF8} (RFC 6531 section 3.4), also when the body is 8-bit
        (then 8BITMIME is what it needs).
        """
        self.assertEqual(self.needs(smtputf8=True, content=CONTENT_7BIT), (False, False))
        self.assertEqual(self.needs(smtputf8=True, body="8BITMIME", content=CONTENT_8BIT), (True, False))

    def test_8bit_declared(self):
        """
        Really 8-bit and declared: needs 8BITMIME (a server without it
        means a 5.6.3 bounce, not raw 8-bit octets).
        """
        self.assertEqual(self.needs(body="8BITMIME", content=CONTENT_8BIT), (True, False))

    def test_8bit_undeclared(self):
        """
        Really 8-bit but not declared: needs 8BITMIME all the same (sent
        labelled C{BODY=8BITMIME}, or bounced 5.6.3 by a 7-bit server).
        """
        self.assertEqual(self.needs(body="7BIT", content=CONTENT_8BIT), (True, False))
        self.assertEqual(self.needs(body="7BIT", content=CONTENT_8BIT_HEADERS), (True, False))

    def test_utf8_headers(self):
        """
        Declared C{SMTPUTF8} with 8-bit octets in the header section:
        needs SMTPUTF8 (and 8BITMIME).
        """
        self.assertEqual(self.needs(smtputf8=True, body="8BITMIME", content=CONTENT_8BIT_HEADERS), (True, True))

    def test_utf8_addresses(self):
        """
        A non-ASCII sender or recipient local part always needs SMTPUTF8,
        whatever the content.
        """
        self.assertEqual(self.needs(sender="j\u00f6rg@example.test", smtputf8=True, content=CONTENT_7BIT),
                         (False, True))
        self.assertEqual(self.needs(recipient="j\u00f6rg@remote.test", smtputf8=True, content=CONTENT_7BIT),
                         (False, True))

    def test_unknown_content_as_declared(self):
        """
        An envelope queued before the content was recorded: as declared.
        """
        self.assertEqual(self.needs(body="8BITMIME", smtputf8=True, content=CONTENT_UNKNOWN), (True, True))
        self.assertEqual(self.needs(body="7BIT", content=CONTENT_UNKNOWN), (False, False))


class RetryTogetherTests(RelayTestCase):
    """
    Recipients of one message and destination that fail temporarily
    together are retried together: one next attempt for all of them (one
    draw of the jitter per message, destination and round).
    """

    addresses = [f"g{n}@remote.test" for n in range(1, 6)]

    def greylisting(self):
        return FakeClient({a: (TEMPORARY, "450 4.7.1 greylisted", "4.7.1") for a in self.addresses})

    def test_same_next_attempt(self):
        """
        Five recipients greylisted in one transaction get the same
        C{next_attempt}, within the jitter of C{retry_initial}.
        """
        results = self.deliver_all(self.relay(self.greylisting()), self.envelope(*map(rcpt, self.addresses)))
        self.assertEqual([r.state for r in results], [PENDING] * 5)
        [retry] = {r.next_attempt for r in results}
        self.assertTrue(T0 + 270 <= retry <= T0 + 330, retry - T0)

    def test_same_next_attempt_after_routing_error(self):
        """
        A temporary routing failure gives its recipients one next attempt.
        """
        router = FakeRouter({"flaky.test": RoutingError("MX lookup failed: SERVFAIL", False, "4.4.3")})
        results = self.deliver_all(self.relay(router=router),
                                   self.envelope(rcpt("a@flaky.test"), rcpt("b@flaky.test"), rcpt("c@flaky.test")))
        self.assertEqual(len({r.next_attempt for r in results}), 1, [r.next_attempt for r in results])

    def test_backoff_of_most_tried(self):
        """
        Recipients with different histories that fail together share the
        backoff of the most-tried of them.
        """
        client = FakeClient({a: (TEMPORARY, "421 busy", "4.0.0") for a in ("a@one.test", "b@one.test")})
        a, b = self.deliver_all(self.relay(client), self.envelope(rcpt("a@one.test", attempts=2),
                                                                   rcpt("b@one.test")))
        self.assertEqual(a.next_attempt, b.next_attempt)
        self.assertTrue(T0 + 1080 <= a.next_attempt <= T0 + 1320, a.next_attempt - T0)
        self.assertEqual((a.attempts, b.attempts), (3, 1))

    def test_other_outcomes_unchanged(self):
        """
        Recipients delivered or failed in the same transaction keep their
        own outcome (no next attempt).
        """
        client = FakeClient({"a@one.test": (TEMPORARY, "450 greylisted", "4.7.1"),
                             "b@one.test": (PERMANENT, "550 5.1.1 no such user", "5.1.1")})
        a, b, c = self.deliver_all(self.relay(client),
                                   self.envelope(rcpt("a@one.test"), rcpt("b@one.test"), rcpt("c@one.test")))
        self.assertEqual([(r.state, r.next_attempt) for r in (b, c)], [(FAILED, 0.0), (DELIVERED, 0.0)])
        self.assertEqual(a.state, PENDING)


class ReportTests(RelayTestCase):
    """
    The outcome of each destination's transaction is given to C{report}
    as soon as it ends while another is still in flight.
    """

    def setUp(self):
        super().setUp()
        self.pending = {}

    def slow(self, reactor, hosts, message, options, disk=None, cache=None):
        d = defer.Deferred()
        self.pending[hosts[0].name] = (d, message)
        return d

    def answer(self, host, status=OK):
        d, message = self.pending.pop(host)
        d.callback(DeliveryOutcome(tuple(RecipientResult(r, status, "250 ok", "2.0.0", host, True)
                                         for r in message.recipients), host=host, address="1", port=25))

    def test_each_destination_reported(self):
        """
        The first destination to finish is reported (positions in the
        recipients given); the last comes with the result only.
        """
        reports = []
        e = self.envelope(rcpt("a@one.test"), rcpt("b@two.test"), rcpt("c@one.test"))
        d = self.relay(self.slow).deliver(e, e.recipients, self.body.path, report=reports.append)
        self.assertEqual(sorted(self.pending), ["mx.one.test", "mx.two.test"])
        self.answer("mx.one.test")
        self.assertNoResult(d)
        self.assertEqual([[(p, r.target.key, r.state) for p, r in outcomes] for outcomes in reports],
                         [[(0, "a@one.test", DELIVERED), (2, "c@one.test", DELIVERED)]])
        self.answer("mx.two.test")
        self.assertEqual(len(reports), 1)
        results = self.successResultOf(d)
        self.assertEqual([r.state for r in results], [DELIVERED] * 3)
        self.assertEqual(results[0], reports[0][0][1])

    def test_one_destination_not_reported(self):
        """
        With one destination there is nothing to report early.
        """
        reports = []
        e = self.envelope(rcpt("a@one.test"), rcpt("b@one.test"))
        self.successResultOf(self.relay().deliver(e, e.recipients, self.body.path, report=reports.append))
        self.assertEqual(reports, [])

    def test_failing_destination(self):
        """
        When one destination's attempt fails unexpectedly, the call fails
        only once the others are done, and what they did is reported.
        """
        reports = []
        e = self.envelope(rcpt("a@one.test"), rcpt("b@two.test"))
        d = self.relay(self.slow).deliver(e, e.recipients, self.body.path, report=reports.append)
        self.pending.pop("mx.two.test")[0].errback(RuntimeError("boom"))
        self.assertNoResult(d)
        self.answer("mx.one.test")
        self.failureResultOf(d, RuntimeError)
        self.assertEqual([[(p, r.target.key, r.state) for p, r in outcomes] for outcomes in reports],
                         [[(0, "a@one.test", DELIVERED)]])


class ParallelRelayTests(SynchronousTestCase):
    """
    How many transactions run at once: C{max_concurrent} over all, and
    with MX routing L{PER_DESTINATION_LIMIT} per destination domain; a
    smarthost may have all C{max_concurrent}.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.body = FilePath(self.mktemp())
        self.body.setContent(b"Subject: s\r\n\r\nbody\r\n")
        self.pending = []

    def slow(self, reactor, hosts, message, options, disk=None, cache=None):
        d = defer.Deferred()
        self.pending.append((d, message))
        return d

    def relay(self, **kw):
        return Relay(None, FakeRouter(), ClientOptions("mx.example.test"), RetryPolicy(), SynchronousDiskPool(),
                     clock=self.clock, deliver=self.slow, rng=random.Random(4),
                     log=Logger(observer=lambda e: None), **kw)

    def send(self, relay, messages, *addresses):
        """
        Hand C{messages} one-recipient messages per address to the relay.

        @return: the L{Deferred}s of their results.
        """
        results = []
        for n in range(messages):
            for address in addresses:
                e = Envelope(f"Q{n}", parse_mailbox("alice@example.test"), (rcpt(address),), T0, size=30)
                results.append(relay.deliver(e, e.recipients, self.body.path))
        return results

    def test_slow_dns_holds_no_slot(self):
        """
        Destinations whose DNS does not answer do not take the overall
        slots (they count SMTP sessions): mail for a healthy domain goes
        at once.
        """

        class HangingRouter(FakeRouter):
            def route(self, domain):
                if domain.startswith("dead"):
                    return defer.Deferred()
                return super().route(domain)

        relay = Relay(None, HangingRouter(), ClientOptions("mx.example.test"), RetryPolicy(), SynchronousDiskPool(),
                      clock=self.clock, deliver=self.slow, rng=random.Random(4),
                      log=Logger(observer=lambda e: None), max_concurrent=2)
        self.send(relay, 1, "a@dead1.test", "b@dead2.test", "c@dead3.test")
        self.send(relay, 1, "d@alive.test")
        self.assertEqual([m.recipients for _, m in self.pending], [("d@alive.test",)])

    def test_smarthost_lookups_bounded(self):
        """
        With a smarthost, no more attempts (each looks its address up) run
        at once than max_concurrent.
        """

        class CountingRouter(FakeRouter):
            def route(self, domain):
                self.asked.append(domain)
                return defer.Deferred()

        router = CountingRouter()
        relay = Relay(None, router, ClientOptions("mx.example.test"), RetryPolicy(), SynchronousDiskPool(),
                      clock=self.clock, deliver=self.slow, rng=random.Random(4),
                      log=Logger(observer=lambda e: None), max_concurrent=3, smarthost=True)
        self.send(relay, 10, "a@one.test")
        self.assertEqual(len(router.asked), 3)

    def finish_one(self):
        d, message = self.pending.pop(0)
        d.callback(DeliveryOutcome(tuple(RecipientResult(r, OK, "250 ok", "2.0.0", "h", True)
                                         for r in message.recipients), host="h", address="1", port=25))

    def test_smarthost_uses_every_slot(self):
        """
        With a smarthost, 30 messages for one remote domain run 20 at once
        (C{max_concurrent}), not L{PER_DESTINATION_LIMIT}; as one finishes
        the next starts; all are delivered.
        """
        relay = self.relay(max_concurrent=20, smarthost=True)
        results = self.send(relay, 30, "bob@remote.test")
        self.assertEqual(len(self.pending), 20)
        self.finish_one()
        self.assertEqual(len(self.pending), 20)
        while self.pending:
            self.finish_one()
        self.assertEqual([self.successResultOf(d)[0].state for d in results], [DELIVERED] * 30)

    def test_smarthost_many_domains(self):
        """
        With a smarthost the overall limit holds over messages for many
        domains too.
        """
        relay = self.relay(max_concurrent=5, smarthost=True)
        self.send(relay, 4, "a@one.test", "b@two.test")
        self.assertEqual(len(self.pending), 5)

    def test_mx_per_destination(self):
        """
        With MX routing, messages for one domain run at most
        L{PER_DESTINATION_LIMIT} at once, while another domain gets its own
        share of the overall limit.
        """
        relay = self.relay(max_concurrent=20)
        results = self.send(relay, 10, "bob@remote.test")
        self.assertEqual(len(self.pending), PER_DESTINATION_LIMIT)
        self.send(relay, 10, "carol@other.test")
        self.assertEqual(len(self.pending), 2 * PER_DESTINATION_LIMIT)
        while self.pending:
            self.finish_one()
        self.assertEqual([self.successResultOf(d)[0].state for d in results], [DELIVERED] * 10)
        self.assertEqual(relay._destinations, {})


class RelayRoundTests(ManagerTestCase):
    """
    The relay in the queue manager's rounds, over a real spool.
    """

    def make_relay(self, client):
        return Relay(None, FakeRouter(), ClientOptions("mx.example.test"),
                     RetryPolicy(initial=300, maximum=3600, lifetime=86400), self.disk, clock=self.clock,
                     deliver=client, rng=random.Random(4), log=self.log)

    def test_greylisted_retried_in_one_transaction(self):
        """
        Five recipients of one message greylisted (450) on the first try
        are retried together, in one transaction, and delivered.
        """
        seen = set()
        calls = []

        def greylisting(reactor, hosts, message, options, disk=None, cache=None):
            calls.append(message.recipients)
            results = []
            for r in message.recipients:
                if r in seen:
                    results.append(RecipientResult(r, OK, "250 2.0.0 ok", "2.0.0", hosts[0].name, True))
                else:
                    seen.add(r)
                    results.append(RecipientResult(r, TEMPORARY, "450 4.7.1 greylisted", "4.7.1", hosts[0].name,
                                                   True))
            return defer.succeed(DeliveryOutcome(tuple(results), host=hosts[0].name, address="192.0.2.1", port=25))

        self.start(remote_delivery=self.make_relay(greylisting))
        addresses = tuple(f"g{n}@remote.test" for n in range(1, 6))
        qid = self.submit([queued_rcpt(a, local=False) for a in addresses])
        self.assertEqual(calls, [addresses])
        # Time passes as it does, not in one jump that would make every
        # schedule due at once.
        for _ in range(330):
            self.clock.advance(1)
        self.assertEqual(calls, [addresses, addresses])
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.lines(qid)[-1], f"qid={qid} status=removed")

    def test_restart_while_a_domain_is_slow(self):
        """
        One domain accepts at once, the other does not answer: its
        recipient is on disk as delivered at once, so after a restart
        (a new manager and relay on the same spool) only the slow
        domain's recipient is sent.
        """
        sent = []

        def client(reactor, hosts, message, options, disk=None, cache=None):
            sent.append(message.recipients)
            if hosts[0].name == "mx.slow.test" and len(sent) == 2:
                return defer.Deferred()
            return defer.succeed(DeliveryOutcome(
                tuple(RecipientResult(r, OK, "250 2.0.0 ok", "2.0.0", hosts[0].name, True)
                      for r in message.recipients), host=hosts[0].name, address="192.0.2.1", port=25))

        self.start(remote_delivery=self.make_relay(client))
        qid = self.submit([queued_rcpt("a@fast.test", local=False), queued_rcpt("b@slow.test", local=False)])
        self.assertEqual(sent, [("a@fast.test",), ("b@slow.test",)])
        self.assertEqual([r.state for r in self.stored(qid).recipients], [DELIVERED, PENDING])
        stopping = self.manager.stopService()
        self.clock.advance(STOP_GRACE)
        self.successResultOf(stopping)

        self.spool = Spool(self.queue_dir, self.disk, self.syncer, self.clock, log=self.log)
        self.start(remote_delivery=self.make_relay(client))
        self.assertEqual(sent, [("a@fast.test",), ("b@slow.test",), ("b@slow.test",)])
        self.assertEqual(self.queued(), [])
