# -*- test-case-name: tests.test_smtp_client_cache -*-
"""
Tests for L{mailappliance.smtp.client_cache} and connection reuse by
L{mailappliance.smtp.client.deliver}: the real client against
L{mailappliance.testing.FakeSMTPPeer} in memory, on a
L{MemoryReactorClock}.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mailappliance import testing
from mailappliance.queue.routing import RouteHost
from mailappliance.smtp.client import ClientOptions, OutboundMessage, deliver
from mailappliance.smtp.client_cache import IDLE_TIME_LIMIT, SessionCache

BODY = b"Subject: hello\r\n\r\n.dot\r\nbye\r\n"
SMARTHOST = RouteHost("smarthost.test", ("192.0.2.1",), 587)


class ReuseTests(SynchronousTestCase):
    """
    Messages to the same address over one connection, kept between them
    in a L{SessionCache}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.body_path = os.path.join(directory, "body")
        with open(self.body_path, "wb") as f:
            f.write(BODY)
        self.cache = SessionCache(self.reactor)
        self.peer = testing.FakeSMTPPeer()

    def send(self, recipient: str = "bob@remote.test", hosts=(SMARTHOST,), **options):
        options.setdefault("tls", "none")
        message = OutboundMessage("alice@local.test", (recipient,), self.body_path, len(BODY), queue_id="Q")
        return deliver(self.reactor, hosts, message, ClientOptions("client.test", **options), cache=self.cache)

    def statuses(self, d) -> list[tuple[str, str]]:
        return [(r.recipient, r.status) for r in self.successResultOf(d).results]

    def first(self):
        """
        Deliver one message over a new connection, which is parked.

        @return: the L{IOPump} of the connection.
        """
        d = self.send("first@remote.test")
        pump = testing.connect_pending(self.reactor, self.peer)
        pump.flush()
        self.assertEqual(self.statuses(d), [("first@remote.test", "delivered")])
        self.assertEqual(len(self.cache), 1)
        return pump

    def test_second_message_same_connection(self) -> None:
        """
        The second message goes over the first one's connection: no new
        connection, no second greeting or EHLO, no QUIT in between; the
        outcome names the host as before.
        """
        pump = self.first()

        d = self.send("second@remote.test")
        self.assertEqual(self.reactor.tcpClients, [])
        pump.flush()

        outcome = self.successResultOf(d)
        self.assertEqual([(r.recipient, r.status) for r in outcome.results], [("second@remote.test", "delivered")])
        self.assertEqual((outcome.host, outcome.address, outcome.port), ("smarthost.test", "192.0.2.1", 587))
        [session] = self.peer.sessions
        self.assertEqual(session.messages, [b"Subject: hello\r\n\r\n.dot\r\nbye\r\n"] * 2)
        self.assertEqual([c.split(b" ")[0].split(b":")[0] for c in session.commands],
                         [b"EHLO", b"MAIL", b"RCPT", b"DATA", b"MAIL", b"RCPT", b"DATA"])
        self.assertEqual(len(self.cache), 1)

    def test_idle_connection_closed(self) -> None:
        """
        A connection idle for L{IDLE_TIME_LIMIT} seconds is closed with
        QUIT; the next message opens a new one.
        """
        pump = self.first()

        self.reactor.advance(IDLE_TIME_LIMIT - 0.1)
        self.assertEqual(len(self.cache), 1)
        self.reactor.advance(0.1)
        pump.flush()

        self.assertEqual(len(self.cache), 0)
        self.assertEqual(self.peer.sessions[0].commands[-1], b"QUIT")
        self.assertTrue(pump.client.transport.disconnected)
        self.send()
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_closed_by_server_while_idle(self) -> None:
        """
        A connection the server closed while idle is not used: the next
        message opens a new one.
        """
        pump = self.first()
        pump.server.transport.loseConnection()
        pump.flush()

        d = self.send()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        testing.connect_pending(self.reactor, self.peer).flush()

        self.assertEqual(self.statuses(d), [("bob@remote.test", "delivered")])
        self.assertEqual(len(self.peer.sessions), 2)

    def test_reply_while_idle(self) -> None:
        """
        A connection that received something while idle (a 421 before the
        server closes) is not used; it is closed.
        """
        pump = self.first()
        pump.server.transport.write(b"421 4.4.2 idle too long\r\n")
        pump.flush()

        self.send()

        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(len(self.cache), 0)
        pump.flush()
        self.assertTrue(pump.client.transport.disconnected)

    def test_lost_on_reuse_then_new_connection(self) -> None:
        """
        If a parked connection fails when it is used (the server closed it
        as the MAIL went out), the message goes over a new connection to
        the same address; no host failure is recorded.
        """
        pump = self.first()
        self.peer.drop_at = "mail"

        d = self.send()
        pump.flush()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.peer.drop_at = None
        testing.connect_pending(self.reactor, self.peer).flush()

        self.assertEqual(self.statuses(d), [("bob@remote.test", "delivered")])
        self.assertEqual(self.peer.sessions[1].messages, [BODY])

    def test_refused_on_reuse_then_new_connection(self) -> None:
        """
        A 421 to MAIL on a parked connection also sends the message over a
        new connection, and the old one is closed.
        """
        pump = self.first()
        self.peer.mail_reply = "421 4.3.2 shutting down"

        d = self.send()
        pump.flush()
        self.peer.mail_reply = "250 2.1.0 OK"
        self.assertEqual(len(self.reactor.tcpClients), 1)
        testing.connect_pending(self.reactor, self.peer).flush()

        self.assertEqual(self.statuses(d), [("bob@remote.test", "delivered")])
        self.assertEqual(self.peer.sessions[0].commands[-1], b"QUIT")

    def test_failed_transaction_not_parked(self) -> None:
        """
        A transaction that did not end with a 2xx to the end of the data
        ends with QUIT, as without a cache.
        """
        self.peer.final_reply = "554 5.6.0 no"
        d = self.send()
        testing.connect_pending(self.reactor, self.peer).flush()

        self.assertEqual(self.statuses(d), [("bob@remote.test", "permanent")])
        self.assertEqual(len(self.cache), 0)
        self.assertEqual(self.peer.sessions[0].commands[-1], b"QUIT")

    def test_transaction_limit(self) -> None:
        """
        A connection that has carried C{max_transactions} is closed rather
        than parked.
        """
        self.cache = SessionCache(self.reactor, max_transactions=2)
        pump = self.first()
        d = self.send()
        pump.flush()
        self.assertEqual(self.statuses(d), [("bob@remote.test", "delivered")])

        self.assertEqual(len(self.cache), 0)
        self.assertEqual(self.peer.sessions[0].commands[-1], b"QUIT")
        self.assertTrue(pump.client.transport.disconnected)

    def test_keyed_by_tls(self) -> None:
        """
        A connection opened without TLS is not used for a delivery that
        wants TLS.
        """
        self.first()
        self.send(tls="opportunistic")
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_close_all(self) -> None:
        """
        L{SessionCache.close_all} closes every idle connection with QUIT
        and leaves no timer behind.
        """
        pump = self.first()
        self.cache.close_all()
        pump.flush()
        self.assertEqual(len(self.cache), 0)
        self.assertEqual(self.peer.sessions[0].commands[-1], b"QUIT")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_without_cache_quits(self) -> None:
        """
        Without a cache every delivery ends with QUIT (unchanged).
        """
        message = OutboundMessage("alice@local.test", ("bob@remote.test",), self.body_path, len(BODY))
        d = deliver(self.reactor, (SMARTHOST,), message, ClientOptions("client.test", tls="none"))
        testing.connect_pending(self.reactor, self.peer).flush()
        self.assertEqual(self.statuses(d), [("bob@remote.test", "delivered")])
        self.assertEqual(self.peer.sessions[0].commands[-1], b"QUIT")
