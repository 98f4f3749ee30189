"""
Tests for L{mailappliance.pop3.server} and L{mailappliance.pop3.commands}:
sessions over L{StringTransport}, time over L{Clock}, mailboxes in real
temporary Maildirs. Dialogues are tables of (client sends, server answers).

The helpers here (L{Harness}, L{FakeChecker}, L{ManualDiskPool}) are also
used by the other C{tests.test_pop3_*} modules.
"""

from __future__ import annotations

import base64
import ipaddress
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailappliance.disk import SynchronousDiskPool
from mailappliance.flow import CLOSE_TIMEOUT
from mailappliance.pop3 import server as server_module
from mailappliance.pop3.locks import MailboxLocks
from mailappliance.pop3.server import POP3Factory
from mailappliance.pop3.settings import POP3Settings

TRUSTED = IPv4Address("TCP", "127.0.0.1", 40000)
UNTRUSTED = IPv4Address("TCP", "192.0.2.7", 40000)
UNTRUSTED_2 = IPv4Address("TCP", "198.51.100.9", 40000)
EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))

ALICE = "alice@example.test"
PASSWORD = b"correct horse"

# Three messages, in POP3 order: a CRLF file with W=, an LF file (size
# measured), a CRLF file with lines for TOP.
MSG1 = b"Subject: one\r\n\r\nfirst body\r\n"
MSG1_NAME = "1000.M1P1Q1.host,S=28,W=28"
MSG2 = b"Subject: two\n\n.dot\nend\n"
MSG2_WIRE = b"Subject: two\r\n\r\n..dot\r\nend\r\n"
MSG2_NAME = "1001.M1P1Q1.host"
MSG3 = b"Subject: three\r\n\r\nl1\r\nl2\r\nl3\r\n"
MSG3_NAME = "1002.M1P1Q1.host,S=30,W=30"

GREETING = b"+OK mail.example.test POP3 ready\r\n"
LOGGED_IN = b"+OK Logged in, 3 messages (85 octets)\r\n"
CAPA_PLAIN = (
    b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
    b"PIPELINING\r\nSASL PLAIN\r\nIMPLEMENTATION mailappliance\r\n.\r\n"
)
CAPA_STLS = (
    b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
    b"PIPELINING\r\nSASL PLAIN\r\nSTLS\r\nIMPLEMENTATION mailappliance\r\n.\r\n"
)


def plain(authcid: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    return base64.b64encode(authzid + b"\x00" + authcid + b"\x00" + password)


@implementer(ICredentialsChecker)
class FakeChecker:
    """
    Checks passwords from a dict; the avatar id is the lower-cased name.
    With C{manual=True}, answers only when the test fires C{pending}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: dict[str, bytes], manual: bool = False):
        self.users = users
        self.manual = manual
        self.pending: list[tuple[object, Deferred]] = []
        self.seen: list[tuple[bytes, bytes]] = []

    def requestAvatarId(self, credentials):
        self.seen.append((credentials.username, credentials.password))
        if self.manual:
            d = Deferred()
            self.pending.append((credentials, d))
            return d
        return self.check(credentials)

    def check(self, credentials):
        name = credentials.username.decode("utf-8", "replace").lower()
        if name in self.users and self.users[name] == credentials.password:
            return succeed(name)
        return fail(UnauthorizedLogin())

    def answer_next(self):
        credentials, d = self.pending.pop(0)
        self.check(credentials).chainDeferred(d)


class ManualDiskPool:
    """
    A disk pool whose work runs only when the test says so.
    """

    def __init__(self):
        self.calls: list[tuple] = []

    def run(self, function, *args, **kwargs):
        d = Deferred()
        self.calls.append((function, args, kwargs, d))
        return d

    def run_next(self):
        function, args, kwargs, d = self.calls.pop(0)
        maybeDeferred(function, *args, **kwargs).chainDeferred(d)

    def run_all(self):
        while self.calls:
            self.run_next()


@implementer(ITLSTransport)
class TLSCapableTransport(StringTransport):
    """
    A L{StringTransport} that records startTLS and TCP_NODELAY.
    """

    tls_context = None
    no_delay = None
    aborted = False

    def startTLS(self, contextFactory, normal=True):
        self.tls_context = contextFactory

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True


class Client:
    """
    One session: a protocol on a transport, with a cursor on its output.
    """

    def __init__(self, factory, peer, transport_class=TLSCapableTransport):
        self.transport = transport_class(peerAddress=peer)
        self.protocol = factory.buildProtocol(peer)
        self.protocol._session = "s1"
        self.protocol.makeConnection(self.transport)
        self._seen = 0

    def output(self) -> bytes:
        value = self.transport.value()
        new, self._seen = value[self._seen :], len(value)
        return new

    def send(self, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        return self.output()

    def drop(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Harness:
    """
    A factory over a temporary mail root, with a clock, a log and its own
    lock registry.
    """

    def __init__(self, test, tls=None, checker=None, disk=None, **settings):
        self.test = test
        self.root = os.path.abspath(test.mktemp())
        self.clock = Clock()
        self.events: list[dict] = []
        self.checker = checker if checker is not None else FakeChecker({ALICE: PASSWORD, "bob@example.test": b"b"})
        self.disk = disk if disk is not None else SynchronousDiskPool()
        self.factory = POP3Factory(
            self.checker,
            self.mailbox_path,
            self.disk,
            POP3Settings("mail.example.test", **settings),
            tls=tls,
            clock=self.clock,
            log=Logger(namespace="test", observer=self.events.append),
            locks=MailboxLocks(),
        )

    def mailbox_path(self, avatar: str) -> str:
        local, domain = avatar.rsplit("@", 1)
        return os.path.join(self.root, domain, local)

    def deliver(self, sub: str, name: str, data: bytes, avatar: str = ALICE) -> str:
        folder = os.path.join(self.mailbox_path(avatar), sub)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def standard_mailbox(self):
        self.deliver("new", MSG1_NAME, MSG1)
        self.deliver("cur", MSG2_NAME + ":2,", MSG2)
        self.deliver("new", MSG3_NAME, MSG3)

    def listing(self, avatar: str = ALICE) -> dict[str, list[str]]:
        box = self.mailbox_path(avatar)
        return {
            sub: sorted(os.listdir(os.path.join(box, sub))) if os.path.isdir(os.path.join(box, sub)) else []
            for sub in ("new", "cur")
        }

    def connect(self, peer=TRUSTED, transport_class=TLSCapableTransport) -> Client:
        client = Client(self.factory, peer, transport_class)
        self.test.assertEqual(client.output()[:3], GREETING[:3])
        return client

    def login(self, peer=TRUSTED) -> Client:
        client = self.connect(peer)
        self.test.assertEqual(
            client.send(b"USER alice@example.test\r\nPASS correct horse\r\n"),
            b"+OK Send your password\r\n" + LOGGED_IN,
        )
        return client

    def log_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


def run_dialogue(test, client: Client, steps):
    for number, (send, expect) in enumerate(steps):
        test.assertEqual(client.send(send), expect, f"step {number}: {send!r}")


class GreetingAndCapaTests(SynchronousTestCase):
    def test_greeting(self):
        """
        The greeting names the host; TCP_NODELAY is set.
        """
        h = Harness(self)
        client = Client(h.factory, TRUSTED)
        self.assertEqual(client.output(), GREETING)
        self.assertIs(client.transport.no_delay, True)

    def test_capa_without_tls(self):
        """
        Without TLS configured, no STLS; the rest is listed before and
        after login.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.connect()
        self.assertEqual(client.send(b"CAPA\r\n"), CAPA_PLAIN)
        client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        self.assertEqual(client.send(b"capa\r\n"), CAPA_PLAIN)

    def test_capa_with_tls(self):
        """
        With TLS configured and a transport that can start it, STLS is
        listed before login; not after STLS, nor after login.
        """
        context = object()
        h = Harness(self, tls=context)
        h.standard_mailbox()
        client = h.connect()
        self.assertEqual(client.send(b"CAPA\r\n"), CAPA_STLS)
        client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        self.assertEqual(client.send(b"CAPA\r\n"), CAPA_PLAIN)
        other = h.connect()
        self.assertEqual(other.send(b"STLS\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.assertIs(other.transport.tls_context, context)
        self.assertEqual(other.send(b"CAPA\r\n"), CAPA_PLAIN)

    def test_capa_transport_without_tls_support(self):
        """
        A transport that cannot start TLS gets no STLS offer, and STLS is
        refused.
        """
        h = Harness(self, tls=object())
        client = h.connect(transport_class=StringTransport)
        self.assertEqual(client.send(b"CAPA\r\n"), CAPA_PLAIN)
        self.assertEqual(client.send(b"STLS\r\n"), b"-ERR STLS not available\r\n")


class StateMachineTests(SynchronousTestCase):
    def test_transaction_commands_before_login(self):
        """
        Every TRANSACTION command before login gets -ERR; the session goes
        on.
        """
        h = Harness(self)
        client = h.connect()
        for command in [
            b"STAT",
            b"LIST",
            b"LIST 1",
            b"RETR 1",
            b"TOP 1 1",
            b"UIDL",
            b"UIDL 1",
            b"DELE 1",
            b"RSET",
            b"NOOP",
        ]:
            self.assertEqual(client.send(command + b"\r\n"), b"-ERR Not logged in\r\n", command)
        self.assertEqual(client.send(b"CAPA\r\n"), CAPA_PLAIN)

    def test_authorization_commands_after_login(self):
        """
        USER, PASS, AUTH and STLS after login get -ERR.
        """
        h = Harness(self, tls=object())
        h.standard_mailbox()
        client = h.login()
        for command in [b"USER bob@example.test", b"PASS b", b"AUTH PLAIN", b"AUTH", b"STLS"]:
            self.assertEqual(client.send(command + b"\r\n"), b"-ERR Not valid after login\r\n", command)
        self.assertEqual(client.send(b"STAT\r\n"), b"+OK 3 85\r\n")

    def test_unknown_and_garbage(self):
        """
        Unknown keywords and arbitrary bytes (NUL, non-UTF-8, bare CR, an
        empty line, a space first) get -ERR and never end the session, in
        either state.
        """
        h = Harness(self)
        h.standard_mailbox()
        garbage = [
            b"XYZZY",
            b"",
            b" NOOP",
            b"\x00\x00",
            b"\xff\xfe\xfd",
            b"NO\rOP",
            b"N\x00OP",
            b"LIST\x00",
            b"\xc3\xa9t\xc3\xa9",
            b"APOP alice x",
            b"LAST",
            b"RPOP x",
            b"AUTHENTICATE",
        ]
        client = h.connect()
        for line in garbage:
            self.assertEqual(client.send(line + b"\r\n"), b"-ERR Unknown command\r\n", line)
        client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        for line in garbage:
            self.assertEqual(client.send(line + b"\r\n"), b"-ERR Unknown command\r\n", line)
        self.assertEqual(client.send(b"STAT\r\n"), b"+OK 3 85\r\n")

    def test_too_many_bad_commands(self):
        """
        The 20th unknown, misplaced or overlong command in a row closes the
        session (as Dovecot does), without QUIT's deletions; a valid
        command in between starts the count again.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.login()
        self.assertEqual(client.send(b"DELE 1\r\n"), b"+OK Message 1 deleted\r\n")
        for _ in range(19):
            self.assertEqual(client.send(b"XYZZY\r\n"), b"-ERR Unknown command\r\n")
        self.assertEqual(client.send(b"NOOP\r\n"), b"+OK\r\n")
        for _ in range(18):
            client.send(b"XYZZY\r\n")
        self.assertEqual(client.send(b"USER x\r\n"), b"-ERR Not valid after login\r\n")
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(client.send(b"x" * 300 + b"\r\nNOOP\r\n"),
                         b"-ERR Line too long; too many bad commands, closing\r\n")
        self.assertTrue(client.transport.disconnecting)
        client.drop()
        self.assertEqual(len(h.listing()["new"]) + len(h.listing()["cur"]), 3)
        self.assertIn("service=pop3 event=close user=alice@example.test peer=127.0.0.1 session=s1 "
                      "reason=too-many-bad-commands", h.log_lines())

    def test_http_request(self):
        """
        An HTTP request line as the first command ends the session at once
        (a browser or proxy was made to talk to us); later, it is just an
        unknown command.
        """
        h = Harness(self)
        client = h.connect()
        self.assertEqual(client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                         b"-ERR This is a POP3 server, not HTTP\r\n")
        self.assertTrue(client.transport.disconnecting)
        client = h.connect()
        self.assertEqual(client.send(b"CAPA\r\n")[:3], b"+OK")
        self.assertEqual(client.send(b"GET / HTTP/1.1\r\n"), b"-ERR Unknown command\r\n")
        self.assertFalse(client.transport.disconnecting)

    def test_no_argument_commands_reject_arguments(self):
        """
        STAT, RSET, NOOP, CAPA, QUIT with an argument get -ERR.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.login()
        for command in [b"STAT 1", b"RSET x", b"NOOP 1", b"CAPA x", b"QUIT now"]:
            self.assertEqual(client.send(command + b"\r\n"), b"-ERR Too many arguments\r\n")
        self.assertFalse(client.transport.disconnecting)

    def test_keyword_case_insensitive(self):
        """
        Keywords are case-insensitive; trailing spaces are tolerated.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.connect()
        run_dialogue(
            self,
            client,
            [
                (b"user alice@example.test\r\n", b"+OK Send your password\r\n"),
                (b"pAsS correct horse\r\n", LOGGED_IN),
                (b"stat \r\n", b"+OK 3 85\r\n"),
                (b"noop\n", b"+OK\r\n"),
            ],
        )


class TransactionTests(SynchronousTestCase):
    def setUp(self):
        self.h = Harness(self)
        self.h.standard_mailbox()
        self.client = self.h.login()

    def test_stat_list_uidl(self):
        """
        STAT, LIST and UIDL with and without argument; sizes are CRLF sizes.
        """
        run_dialogue(
            self,
            self.client,
            [
                (b"STAT\r\n", b"+OK 3 85\r\n"),
                (b"LIST\r\n", b"+OK 3 messages (85 octets)\r\n1 28\r\n2 27\r\n3 30\r\n.\r\n"),
                (b"LIST 2\r\n", b"+OK 2 27\r\n"),
                (
                    b"UIDL\r\n",
                    (
                        b"+OK Unique-ID listing follows\r\n1 1000.M1P1Q1.host,S=28,W=28\r\n2 1001.M1P1Q1.host\r\n"
                        b"3 1002.M1P1Q1.host,S=30,W=30\r\n.\r\n"
                    ),
                ),
                (b"UIDL 3\r\n", b"+OK 3 1002.M1P1Q1.host,S=30,W=30\r\n"),
                (b"NOOP\r\n", b"+OK\r\n"),
            ],
        )

    def test_retr(self):
        """
        RETR sends the size, the message with CRLF line ends and stuffed
        dots, and the terminator.
        """
        run_dialogue(
            self,
            self.client,
            [
                (b"RETR 1\r\n", b"+OK 28 octets\r\n" + MSG1 + b".\r\n"),
                (b"RETR 2\r\n", b"+OK 27 octets\r\n" + MSG2_WIRE + b".\r\n"),
            ],
        )
        self.assertIsNone(self.client.transport.producer.attached)

    def test_top(self):
        """
        TOP sends the header, the blank line and n body lines.
        """
        run_dialogue(
            self,
            self.client,
            [
                (b"TOP 3 0\r\n", b"+OK Top of message follows\r\nSubject: three\r\n\r\n.\r\n"),
                (b"TOP 3 2\r\n", b"+OK Top of message follows\r\nSubject: three\r\n\r\nl1\r\nl2\r\n.\r\n"),
                (b"TOP 3 99999999999999999999\r\n", b"+OK Top of message follows\r\n" + MSG3 + b".\r\n"),
                (b"TOP 2 1\r\n", b"+OK Top of message follows\r\nSubject: two\r\n\r\n..dot\r\n.\r\n"),
            ],
        )

    def test_bad_message_numbers(self):
        """
        Missing, non-numeric, negative, zero, out-of-range and huge numbers
        get -ERR for every command that takes one, and crash nothing.
        """
        cases = [
            (b"0", b"-ERR No such message\r\n"),
            (b"4", b"-ERR No such message\r\n"),
            (b"-1", b"-ERR Invalid message number\r\n"),
            (b"abc", b"-ERR Invalid message number\r\n"),
            (b"1x", b"-ERR Invalid message number\r\n"),
            (b"+1", b"-ERR Invalid message number\r\n"),
            (b"1.0", b"-ERR Invalid message number\r\n"),
            (b"\xff", b"-ERR Invalid message number\r\n"),
            (b"99999999999999999999999999999999", b"-ERR No such message\r\n"),
            (b"4294967297", b"-ERR No such message\r\n"),
        ]
        for command in [b"LIST", b"UIDL", b"RETR", b"DELE", b"TOP"]:
            for number, reply in cases:
                line = command + b" " + number + (b" 1" if command == b"TOP" else b"")
                self.assertEqual(self.client.send(line + b"\r\n"), reply, line)
        run_dialogue(
            self,
            self.client,
            [
                (b"RETR\r\n", b"-ERR Missing argument\r\n"),
                (b"DELE\r\n", b"-ERR Missing argument\r\n"),
                (b"TOP 1\r\n", b"-ERR Missing argument\r\n"),
                (b"TOP\r\n", b"-ERR Missing argument\r\n"),
                (b"RETR 1 2\r\n", b"-ERR Too many arguments\r\n"),
                (b"LIST 1 2\r\n", b"-ERR Too many arguments\r\n"),
                (b"TOP 1 -1\r\n", b"-ERR Invalid line count\r\n"),
                (b"TOP 1 x\r\n", b"-ERR Invalid line count\r\n"),
                (b"STAT\r\n", b"+OK 3 85\r\n"),
            ],
        )

    def test_dele_hides_message(self):
        """
        A deleted message vanishes from STAT, LIST and UIDL, and RETR, TOP,
        LIST n, UIDL n and DELE of it get -ERR (DELE 0 deletes nothing).
        """
        run_dialogue(
            self,
            self.client,
            [
                (b"DELE 0\r\n", b"-ERR No such message\r\n"),
                (b"DELE 2\r\n", b"+OK Message 2 deleted\r\n"),
                (b"STAT\r\n", b"+OK 2 58\r\n"),
                (b"LIST\r\n", b"+OK 2 messages (58 octets)\r\n1 28\r\n3 30\r\n.\r\n"),
                (
                    b"UIDL\r\n",
                    (
                        b"+OK Unique-ID listing follows\r\n1 1000.M1P1Q1.host,S=28,W=28\r\n"
                        b"3 1002.M1P1Q1.host,S=30,W=30\r\n.\r\n"
                    ),
                ),
                (b"LIST 2\r\n", b"-ERR Message 2 is deleted\r\n"),
                (b"UIDL 2\r\n", b"-ERR Message 2 is deleted\r\n"),
                (b"RETR 2\r\n", b"-ERR Message 2 is deleted\r\n"),
                (b"TOP 2 0\r\n", b"-ERR Message 2 is deleted\r\n"),
                (b"DELE 2\r\n", b"-ERR Message 2 is deleted\r\n"),
                (b"RSET\r\n", b"+OK 3 messages (85 octets)\r\n"),
                (b"STAT\r\n", b"+OK 3 85\r\n"),
                (b"LIST 2\r\n", b"+OK 2 27\r\n"),
            ],
        )

    def test_quit_applies_changes(self):
        """
        After QUIT: deleted files are gone, retrieved ones are in cur/ with
        the S flag, the rest untouched; the reply is +OK and the connection
        closes; the session is logged with its counts.
        """
        run_dialogue(
            self,
            self.client,
            [
                (b"RETR 1\r\n", b"+OK 28 octets\r\n" + MSG1 + b".\r\n"),
                (b"TOP 3 1\r\n", b"+OK Top of message follows\r\nSubject: three\r\n\r\nl1\r\n.\r\n"),
                (b"RETR 2\r\n", b"+OK 27 octets\r\n" + MSG2_WIRE + b".\r\n"),
                (b"DELE 2\r\n", b"+OK Message 2 deleted\r\n"),
                (b"QUIT\r\n", b"+OK Bye\r\n"),
            ],
        )
        self.assertTrue(self.client.transport.disconnecting)
        self.assertEqual(self.h.listing(), {"new": [MSG3_NAME], "cur": [MSG1_NAME + ":2,S"]})
        self.assertIn(
            "service=pop3 event=logout user=alice@example.test peer=127.0.0.1 session=s1 retrieved=2 deleted=1 failed=0",
            self.h.log_lines(),
        )
        self.client.drop()
        self.assertFalse(self.h.factory.locks.is_locked(self.h.mailbox_path(ALICE)))

    def test_rset_then_quit_keeps_all(self):
        """
        RSET undoes DELE: QUIT then removes nothing.
        """
        before = self.h.listing()
        self.client.send(b"DELE 1\r\nDELE 3\r\nRSET\r\nQUIT\r\n")
        self.assertEqual(self.h.listing(), before)

    def test_dropped_connection_changes_nothing(self):
        """
        A connection lost without QUIT deletes and marks nothing, and
        frees the mailbox.
        """
        before = self.h.listing()
        self.client.send(b"RETR 1\r\nDELE 1\r\nDELE 2\r\n")
        self.client.drop()
        self.assertEqual(self.h.listing(), before)
        self.assertFalse(self.h.factory.locks.is_locked(self.h.mailbox_path(ALICE)))
        self.assertEqual(self.h.factory.connections, 0)
        self.assertIn(
            "service=pop3 event=disconnect user=alice@example.test peer=127.0.0.1 session=s1 retrieved=1 deleted=0 "
            "changes=discarded",
            self.h.log_lines(),
        )

    def test_commands_after_quit_ignored(self):
        """
        Lines pipelined after QUIT are not answered.
        """
        self.assertEqual(self.client.send(b"QUIT\r\nSTAT\r\nNOOP\r\n"), b"+OK Bye\r\n")
        self.assertEqual(self.client.send(b"STAT\r\n"), b"")

    def test_vanished_message(self):
        """
        A message removed by someone else since login gets -ERR [SYS/PERM]
        for RETR and TOP; the session goes on.
        """
        os.unlink(os.path.join(self.h.mailbox_path(ALICE), "new", MSG1_NAME))
        run_dialogue(
            self,
            self.client,
            [
                (b"RETR 1\r\n", b"-ERR [SYS/PERM] Message 1 no longer exists\r\n"),
                (b"TOP 1 0\r\n", b"-ERR [SYS/PERM] Message 1 no longer exists\r\n"),
                (b"DELE 1\r\n", b"+OK Message 1 deleted\r\n"),
                (b"QUIT\r\n", b"+OK Bye\r\n"),
            ],
        )

    def test_renamed_message_found(self):
        """
        A message whose flags another reader changed is still retrieved.
        """
        box = self.h.mailbox_path(ALICE)
        os.rename(os.path.join(box, "cur", MSG2_NAME + ":2,"), os.path.join(box, "cur", MSG2_NAME + ":2,F"))
        self.assertEqual(self.client.send(b"RETR 2\r\n"), b"+OK 27 octets\r\n" + MSG2_WIRE + b".\r\n")
        self.client.send(b"QUIT\r\n")
        self.assertEqual(self.h.listing()["cur"], [MSG2_NAME + ":2,FS"])

    def test_new_mail_not_seen_until_next_session(self):
        """
        Mail delivered during a session is not in its snapshot; the next
        session sees it.
        """
        self.h.deliver("new", "2000.M1P1Q1.host,S=5,W=5", b"new\r\n")
        self.assertEqual(self.client.send(b"STAT\r\n"), b"+OK 3 85\r\n")
        self.assertEqual(self.client.send(b"LIST 4\r\n"), b"-ERR No such message\r\n")
        self.client.send(b"QUIT\r\n")
        self.client.drop()
        client = self.h.connect()
        self.assertEqual(
            client.send(b"USER alice@example.test\r\nPASS correct horse\r\n"),
            b"+OK Send your password\r\n+OK Logged in, 4 messages (90 octets)\r\n",
        )
        self.assertEqual(client.send(b"UIDL 4\r\n"), b"+OK 4 2000.M1P1Q1.host,S=5,W=5\r\n")


class EmptyMailboxTests(SynchronousTestCase):
    def test_no_mailbox_yet(self):
        """
        A user without any mail (no Maildir yet) sees an empty mailbox, and
        QUIT creates nothing.
        """
        h = Harness(self)
        client = h.connect()
        run_dialogue(
            self,
            client,
            [
                (
                    b"USER bob@example.test\r\nPASS b\r\n",
                    b"+OK Send your password\r\n+OK Logged in, 0 messages (0 octets)\r\n",
                ),
                (b"STAT\r\n", b"+OK 0 0\r\n"),
                (b"LIST\r\n", b"+OK 0 messages (0 octets)\r\n.\r\n"),
                (b"UIDL\r\n", b"+OK Unique-ID listing follows\r\n.\r\n"),
                (b"RETR 1\r\n", b"-ERR No such message\r\n"),
                (b"QUIT\r\n", b"+OK Bye\r\n"),
            ],
        )
        self.assertFalse(os.path.exists(h.mailbox_path("bob@example.test")))


class LockingTests(SynchronousTestCase):
    def test_in_use(self):
        """
        A second login to a mailbox in use gets -ERR [IN-USE] and stays in
        AUTHORIZATION; after the first session quits, it can log in.
        """
        h = Harness(self)
        h.standard_mailbox()
        first = h.login()
        second = h.connect()
        run_dialogue(
            self,
            second,
            [
                (b"USER alice@example.test\r\n", b"+OK Send your password\r\n"),
                (b"PASS correct horse\r\n", b"-ERR [IN-USE] Mailbox is in use by another session\r\n"),
                (b"STAT\r\n", b"-ERR Not logged in\r\n"),
                (
                    b"AUTH PLAIN " + plain(b"alice@example.test", PASSWORD) + b"\r\n",
                    b"-ERR [IN-USE] Mailbox is in use by another session\r\n",
                ),
            ],
        )
        first.send(b"QUIT\r\n")
        first.drop()
        self.assertEqual(
            second.send(b"USER alice@example.test\r\nPASS correct horse\r\n"), b"+OK Send your password\r\n" + LOGGED_IN
        )

    def test_released_on_drop(self):
        """
        A dropped session frees the mailbox at once.
        """
        h = Harness(self)
        h.standard_mailbox()
        h.login().drop()
        h.login()

    def test_lock_held_until_update_done(self):
        """
        With a slow disk, the lock is held from login until the UPDATE
        work has finished, even if the client goes away right after QUIT.
        """
        disk = ManualDiskPool()
        h = Harness(self, disk=disk)
        h.standard_mailbox()
        key = h.mailbox_path(ALICE)
        client = h.connect()
        client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        self.assertTrue(h.factory.locks.is_locked(key))
        disk.run_next()  # the scan
        self.assertEqual(client.output(), LOGGED_IN)
        client.send(b"DELE 1\r\nQUIT\r\n")
        client.drop()
        self.assertTrue(h.factory.locks.is_locked(key))
        disk.run_all()
        self.assertFalse(h.factory.locks.is_locked(key))
        self.assertEqual(h.listing()["new"], [MSG3_NAME])

    def test_drop_during_scan(self):
        """
        A connection lost while the mailbox is being scanned leaves no lock
        behind.
        """
        disk = ManualDiskPool()
        h = Harness(self, disk=disk)
        h.standard_mailbox()
        client = h.connect()
        client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        client.drop()
        disk.run_all()
        self.assertFalse(h.factory.locks.is_locked(h.mailbox_path(ALICE)))


class LoginTests(SynchronousTestCase):
    def test_user_pass(self):
        """
        USER then PASS logs in; the password may contain spaces; the name
        is case-insensitive; the log line names user, peer and method but
        not the password.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.connect()
        self.assertEqual(
            client.send(b"USER Alice@Example.TEST\r\nPASS correct horse\r\n"), b"+OK Send your password\r\n" + LOGGED_IN
        )
        self.assertEqual(h.checker.seen, [(b"Alice@Example.TEST", b"correct horse")])
        lines = h.log_lines()
        self.assertIn(
            "service=pop3 event=login status=ok user=alice@example.test peer=127.0.0.1 session=s1 method=USER tls=no messages=3",
            lines,
        )
        self.assertFalse(any("horse" in line for line in lines))

    def test_log_escapes_name(self):
        """
        A login name with spaces, "=" and control bytes cannot forge log
        fields or lines: they are escaped.
        """
        h = Harness(self)
        client = h.connect()
        client.send(b"USER a b=c\n")
        client.send(b"PASS x\r\n")
        h.clock.advance(1)
        self.assertIn(
            "service=pop3 event=login status=failed user=a\\x20b\\x3dc peer=127.0.0.1 session=s1 method=USER delay=1.0",
            h.log_lines(),
        )
        client.send(b"USER \x1b[31m\xff\r\nPASS x\r\n")
        h.clock.advance(2)
        self.assertIn("user=\\x1b[31m\\xff peer=", h.log_lines()[-1])

    def test_pass_without_user(self):
        """
        PASS first gets -ERR; USER without a name gets -ERR.
        """
        h = Harness(self)
        client = h.connect()
        self.assertEqual(client.send(b"PASS x\r\n"), b"-ERR Send USER first\r\n")
        self.assertEqual(client.send(b"USER\r\n"), b"-ERR Missing argument\r\n")
        self.assertEqual(client.send(b"USER \r\n"), b"-ERR Missing argument\r\n")

    def test_auth_plain_initial_response(self):
        """
        AUTH PLAIN with an initial response logs in.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.connect()
        self.assertEqual(client.send(b"AUTH PLAIN " + plain(b"alice@example.test", PASSWORD) + b"\r\n"), LOGGED_IN)
        self.assertIn("method=PLAIN", h.log_lines()[-1])

    def test_auth_plain_continuation(self):
        """
        AUTH PLAIN without an initial response gets an empty challenge,
        then the response logs in; an authzid equal to the name is fine.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.connect()
        run_dialogue(
            self,
            client,
            [
                (b"auth plain\r\n", b"+ \r\n"),
                (plain(b"alice@example.test", PASSWORD, b"alice@example.test") + b"\r\n", LOGGED_IN),
            ],
        )

    def test_auth_errors(self):
        """
        Cancel, bad base64, an empty initial response, another authzid,
        an unknown mechanism, too many arguments: each a clean -ERR, and
        the session can still log in.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.connect()
        run_dialogue(
            self,
            client,
            [
                (b"AUTH\r\n", b"+OK Supported mechanisms follow\r\nPLAIN\r\n.\r\n"),
                (b"AUTH PLAIN\r\n", b"+ \r\n"),
                (b"*\r\n", b"-ERR Authentication cancelled\r\n"),
                (b"AUTH PLAIN\r\n", b"+ \r\n"),
                (b"not base64!\r\n", b"-ERR [AUTH] Invalid base64 data\r\n"),
                (b"AUTH PLAIN %%%\r\n", b"-ERR [AUTH] Invalid base64 data\r\n"),
                (b"AUTH PLAIN =\r\n", b"-ERR [AUTH] Malformed PLAIN response\r\n"),
                (b"AUTH PLAIN *\r\n", b"-ERR Authentication cancelled\r\n"),
                (
                    b"AUTH PLAIN " + plain(b"alice@example.test", PASSWORD, b"bob@example.test") + b"\r\n",
                    b"-ERR [AUTH] Authorization identity must be the login name\r\n",
                ),
                (b"AUTH LOGIN\r\n", b"-ERR Unsupported authentication mechanism\r\n"),
                (b"AUTH CRAM-MD5\r\n", b"-ERR Unsupported authentication mechanism\r\n"),
                (b"AUTH PLAIN a b\r\n", b"-ERR Too many arguments\r\n"),
                (b"AUTH PLAIN\r\n", b"+ \r\n"),
                (b"\r\n", b"-ERR [AUTH] Malformed PLAIN response\r\n"),
                (b"AUTH PLAIN " + plain(b"alice@example.test", PASSWORD) + b"\r\n", LOGGED_IN),
            ],
        )
        self.assertEqual(len(h.checker.seen), 1)

    def test_long_auth_response(self):
        """
        An AUTH line or SASL response longer than 255 octets (a long
        password) is accepted; one longer than the SASL limit gets -ERR and
        ends the exchange.
        """
        long_password = b"p" * 250
        h = Harness(self, checker=FakeChecker({ALICE: long_password}))
        client = h.connect()
        response = plain(b"alice@example.test", long_password)
        self.assertGreater(len(response), 255)
        self.assertEqual(client.send(b"AUTH PLAIN\r\n"), b"+ \r\n")
        self.assertEqual(client.send(b"A" * 5000 + b"\r\n"), b"-ERR Line too long\r\n")
        self.assertEqual(client.send(b"NOOP\r\n"), b"-ERR Not logged in\r\n")
        self.assertEqual(client.send(b"AUTH PLAIN " + response + b"\r\n"), b"+OK Logged in, 0 messages (0 octets)\r\n")

    def test_checker_error(self):
        """
        A checker that fails with something other than a bad password gets
        a temporary error, without a delay, and is logged.
        """

        @implementer(ICredentialsChecker)
        class Broken:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials):
                raise RuntimeError("database down")

        h = Harness(self, checker=Broken())
        client = h.connect()
        self.assertEqual(
            client.send(b"USER alice@example.test\r\nPASS x\r\n"),
            b"+OK Send your password\r\n-ERR [SYS/TEMP] Authentication temporarily unavailable\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)
        self.assertIn("status=error", h.log_lines()[-1])


class BusyAndAbandonedLoginTests(SynchronousTestCase):
    def test_too_many_logins(self):
        """
        When the password checks are full, a login gets -ERR [SYS/TEMP] at
        once, logged on one line.
        """
        from mailappliance.accounts.verifier import TooManyLogins

        @implementer(ICredentialsChecker)
        class Busy:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials):
                raise TooManyLogins()

        h = Harness(self, checker=Busy())
        client = h.connect()
        self.assertEqual(client.send(b"USER alice@example.test\r\nPASS x\r\n"),
                         b"+OK Send your password\r\n-ERR [SYS/TEMP] Too many logins at once, try again later\r\n")
        self.assertEqual(h.log_lines()[-1], "service=pop3 event=login status=busy user=alice@example.test "
                                            "peer=127.0.0.1 session=s1 method=USER")

    def test_abandoned_failure_logged_and_counted(self):
        """
        A wrong password whose client left before the answer is still
        logged and counted against its address (so that a guessing client
        that never waits is seen, and slowed).
        """

        @implementer(ICredentialsChecker)
        class Later:
            credentialInterfaces = (IUsernamePassword,)

            def __init__(self):
                self.pending = []

            def requestAvatarId(self, credentials):
                d = Deferred()
                self.pending.append(d)
                return d

        checker = Later()
        h = Harness(self, checker=checker)
        client = h.connect()
        client.send(b"USER alice@example.test\r\nPASS wrong\r\n")
        client.drop()
        checker.pending[0].errback(UnauthorizedLogin())
        self.assertEqual(h.log_lines()[-1], "service=pop3 event=login status=failed user=alice@example.test "
                                            "peer=127.0.0.1 session=s1 method=USER delay=-")
        self.assertEqual(h.factory.throttle.recent_failures("127.0.0.1"), 1)


class FailedLoginDelayTests(SynchronousTestCase):
    def test_delays_grow_and_close(self):
        """
        Failed logins are answered after 1, 2 and 4 seconds, never sooner;
        after the third the connection is closed. The log names the user
        and the delay, not the password.
        """
        h = Harness(self, trusted_networks=EVERYWHERE)
        client = h.connect(UNTRUSTED)
        for delay, reply in [
            (1, b"-ERR [AUTH] Authentication failed\r\n"),
            (2, b"-ERR [AUTH] Authentication failed\r\n"),
            (4, b"-ERR [AUTH] Authentication failed; closing connection\r\n"),
        ]:
            self.assertEqual(client.send(b"AUTH PLAIN " + plain(b"alice@example.test", b"wrong") + b"\r\n"), b"")
            h.clock.advance(delay - 0.01)
            self.assertEqual(client.output(), b"")
            h.clock.advance(0.01)
            self.assertEqual(client.output(), reply)
        self.assertTrue(client.transport.disconnecting)
        self.assertIn(
            "service=pop3 event=login status=failed user=alice@example.test peer=192.0.2.7 session=s1 method=PLAIN delay=4.0",
            h.log_lines(),
        )
        self.assertFalse(any("wrong" in line for line in h.log_lines()))

    def test_delay_continues_on_reconnect(self):
        """
        The delay follows the address across connections: the fourth
        failure from it waits 8 seconds.
        """
        h = Harness(self)
        first = h.connect()
        for delay in (1, 2, 4):
            first.send(b"USER alice@example.test\r\nPASS wrong\r\n")
            h.clock.advance(delay)
        first.drop()
        client = h.connect()
        self.assertEqual(client.send(b"USER alice@example.test\r\nPASS wrong\r\n"), b"+OK Send your password\r\n")
        h.clock.advance(7.9)
        self.assertEqual(client.output(), b"")
        h.clock.advance(0.1)
        self.assertEqual(client.output(), b"-ERR [AUTH] Authentication failed\r\n")

    def test_other_sessions_not_delayed(self):
        """
        While a failed login waits, other sessions (from the same address
        or another) are answered at once, and another address starts at
        one second.
        """
        h = Harness(self, trusted_networks=EVERYWHERE)
        h.standard_mailbox()
        guesser = h.connect(UNTRUSTED_2)
        guesser.send(b"USER alice@example.test\r\nPASS wrong\r\n")
        h.clock.advance(1)
        guesser.send(b"USER alice@example.test\r\nPASS wrong\r\n")
        neighbour = h.connect(UNTRUSTED_2)
        self.assertEqual(neighbour.send(b"CAPA\r\n"), CAPA_PLAIN)
        stranger = h.connect(TRUSTED)
        self.assertEqual(
            stranger.send(b"USER alice@example.test\r\nPASS correct horse\r\n"),
            b"+OK Send your password\r\n" + LOGGED_IN,
        )
        other = h.connect(TRUSTED)
        other.send(b"USER bob@example.test\r\nPASS nope\r\n")
        h.clock.advance(1)
        self.assertEqual(other.output(), b"-ERR [AUTH] Authentication failed\r\n")
        self.assertEqual(guesser.output(), b"")
        h.clock.advance(1)
        self.assertEqual(guesser.output(), b"-ERR [AUTH] Authentication failed\r\n")

    def test_pipelined_commands_wait_for_delay(self):
        """
        Commands pipelined behind a failed login are answered after it, in
        order.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.connect()
        self.assertEqual(
            client.send(
                b"USER alice@example.test\r\nPASS wrong\r\nUSER alice@example.test\r\nPASS correct horse\r\nSTAT\r\n"
            ),
            b"+OK Send your password\r\n",
        )
        h.clock.advance(1)
        self.assertEqual(
            client.output(),
            b"-ERR [AUTH] Authentication failed\r\n+OK Send your password\r\n" + LOGGED_IN + b"+OK 3 85\r\n",
        )

    def test_drop_during_delay(self):
        """
        A connection lost during the delay cancels the reply quietly.
        """
        h = Harness(self)
        client = h.connect()
        client.send(b"USER alice@example.test\r\nPASS wrong\r\n")
        client.drop()
        h.clock.advance(20)
        self.assertEqual(client.output(), b"")
        self.assertEqual(h.clock.getDelayedCalls(), [])


class PlaintextPolicyTests(SynchronousTestCase):
    def test_untrusted_without_tls_configured(self):
        """
        From an untrusted address without TLS, USER, PASS and AUTH PLAIN
        are refused with [AUTH]; the password is never checked.
        """
        h = Harness(self)
        client = h.connect(UNTRUSTED)
        refusal = b"-ERR [AUTH] Plaintext login not allowed from this address\r\n"
        run_dialogue(
            self,
            client,
            [
                (b"USER alice@example.test\r\n", refusal),
                (b"PASS correct horse\r\n", refusal),
                (b"AUTH PLAIN\r\n", refusal),
                (b"AUTH PLAIN " + plain(b"alice@example.test", PASSWORD) + b"\r\n", refusal),
            ],
        )
        self.assertEqual(h.checker.seen, [])

    def test_untrusted_must_use_stls(self):
        """
        With TLS configured the refusal points at STLS; after STLS the
        login is allowed and the log says tls=yes.
        """
        h = Harness(self, tls=object())
        h.standard_mailbox()
        client = h.connect(UNTRUSTED)
        run_dialogue(
            self,
            client,
            [
                (b"USER alice@example.test\r\n", b"-ERR [AUTH] Plaintext login requires STLS\r\n"),
                (b"STLS\r\n", b"+OK Begin TLS negotiation\r\n"),
                (b"USER alice@example.test\r\n", b"+OK Send your password\r\n"),
                (b"PASS correct horse\r\n", LOGGED_IN),
            ],
        )
        self.assertIn("tls=yes", h.log_lines()[-1])

    def test_trusted_networks_setting(self):
        """
        The trusted networks come from the settings; an IPv4-mapped IPv6
        peer counts as its IPv4 address.
        """
        h = Harness(self, trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),))
        mapped = IPv6Address("TCP", "::ffff:192.0.2.200", 1)
        self.assertEqual(h.connect(mapped).send(b"USER x\r\n"), b"+OK Send your password\r\n")
        self.assertEqual(h.connect(UNTRUSTED).send(b"USER x\r\n"), b"+OK Send your password\r\n")
        self.assertEqual(
            h.connect(TRUSTED).send(b"USER x\r\n"), b"-ERR [AUTH] Plaintext login not allowed from this address\r\n"
        )


class STLSCommandTests(SynchronousTestCase):
    def test_stls_discards_pipelined_plaintext(self):
        """
        Lines sent after STLS in the same packet are dropped unread
        (RFC 2595 section 4): they get no reply and are not run.
        """
        h = Harness(self, tls=object())
        h.standard_mailbox()
        client = h.connect(UNTRUSTED)
        self.assertEqual(
            client.send(b"STLS\r\nUSER alice@example.test\r\nPASS correct horse\r\nCAPA\r\n"),
            b"+OK Begin TLS negotiation\r\n",
        )
        self.assertEqual(h.checker.seen, [])
        self.assertEqual(client.send(b"PASS correct horse\r\n"), b"-ERR Send USER first\r\n")

    def test_stls_resets_user(self):
        """
        A USER given before STLS is forgotten.
        """
        h = Harness(self, tls=object())
        client = h.connect()
        client.send(b"USER alice@example.test\r\nSTLS\r\n")
        self.assertEqual(client.send(b"PASS correct horse\r\n"), b"-ERR Send USER first\r\n")

    def test_stls_twice_and_with_argument(self):
        """
        A second STLS is refused; so is STLS with an argument, and STLS
        when no TLS is configured.
        """
        h = Harness(self, tls=object())
        client = h.connect()
        self.assertEqual(client.send(b"STLS x\r\n"), b"-ERR Too many arguments\r\n")
        self.assertEqual(client.send(b"STLS\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(client.send(b"STLS\r\n"), b"-ERR TLS is already active\r\n")
        self.assertEqual(Harness(self).connect().send(b"STLS\r\n"), b"-ERR STLS not available\r\n")


class PipeliningTests(SynchronousTestCase):
    def test_replies_in_order_with_slow_checker_and_disk(self):
        """
        A whole session in one packet, with a checker and a disk that
        answer later: nothing is answered out of order; each reply waits
        for the one before it.
        """
        checker = FakeChecker({ALICE: PASSWORD}, manual=True)
        disk = ManualDiskPool()
        h = Harness(self, checker=checker, disk=disk)
        h.standard_mailbox()
        client = h.connect()
        self.assertEqual(
            client.send(
                b"CAPA\r\nUSER alice@example.test\r\nPASS correct horse\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nLIST\r\nQUIT\r\n"
            ),
            CAPA_PLAIN + b"+OK Send your password\r\n",
        )
        checker.answer_next()
        self.assertEqual(client.output(), b"")
        disk.run_next()  # scan
        self.assertEqual(client.output(), LOGGED_IN + b"+OK 3 85\r\n")
        self.assertEqual(len(disk.calls), 1)
        disk.run_next()  # message 1: open, read, close
        self.assertEqual(
            client.output(),
            b"+OK 28 octets\r\n" + MSG1 + b".\r\n+OK Message 1 deleted\r\n+OK 2 messages (57 octets)\r\n"
            b"2 27\r\n3 30\r\n.\r\n",
        )
        disk.run_all()  # message 2 read ahead (then dropped), update
        self.assertEqual(client.output(), b"+OK Bye\r\n")
        self.assertEqual(h.listing()["new"], [MSG3_NAME])

    def test_half_closed_after_pipelining(self):
        """
        A client that pipelines a whole session and then half-closes the
        connection (C{printf ... | nc -N}) gets every reply, QUIT's
        included, and its deletions are made; then the server closes.
        """
        checker = FakeChecker({ALICE: PASSWORD}, manual=True)
        disk = ManualDiskPool()
        h = Harness(self, checker=checker, disk=disk)
        h.standard_mailbox()
        client = h.connect()
        self.assertEqual(client.send(b"USER alice@example.test\r\nPASS correct horse\r\nDELE 1\r\nQUIT\r\n"),
                         b"+OK Send your password\r\n")
        client.protocol.readConnectionLost()
        self.assertFalse(client.transport.disconnecting)
        checker.answer_next()
        disk.run_all()
        self.assertEqual(client.output(), LOGGED_IN + b"+OK Message 1 deleted\r\n+OK Bye\r\n")
        self.assertTrue(client.transport.disconnecting)
        self.assertNotIn(MSG1_NAME, h.listing()["new"])

    def test_half_closed_without_quit(self):
        """
        Half-closed without QUIT: the commands sent are answered, then the
        server closes, and nothing is deleted (no UPDATE state).
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.connect()
        self.assertEqual(client.send(b"USER alice@example.test\r\nPASS correct horse\r\nDELE 1\r\nNOO"),
                         b"+OK Send your password\r\n" + LOGGED_IN + b"+OK Message 1 deleted\r\n")
        self.assertFalse(client.transport.disconnecting)
        client.protocol.readConnectionLost()
        self.assertEqual(client.output(), b"")
        self.assertTrue(client.transport.disconnecting)
        client.drop()
        self.assertIn(MSG1_NAME, h.listing()["new"])

    def test_input_paused_when_backlog_grows(self):
        """
        While a command waits, a flood of pipelined input pauses reading
        from the connection; reading resumes once the backlog is worked
        through.
        """
        checker = FakeChecker({ALICE: PASSWORD}, manual=True)
        h = Harness(self, checker=checker)
        h.standard_mailbox()
        client = h.connect()
        client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        client.send(b"NOOP\r\n" * 20000)
        self.assertEqual(client.transport.producerState, "paused")
        checker.answer_next()
        self.assertEqual(client.output(), LOGGED_IN + b"+OK\r\n" * 20000)
        self.assertEqual(client.transport.producerState, "producing")


class LimitsTests(SynchronousTestCase):
    def test_overlong_command(self):
        """
        A command line over 255 octets gets -ERR and the session goes on.
        """
        h = Harness(self)
        client = h.connect()
        self.assertEqual(client.send(b"USER " + b"a" * 248 + b"\r\n"), b"+OK Send your password\r\n")
        self.assertEqual(client.send(b"USER " + b"a" * 249 + b"\r\n"), b"-ERR Line too long\r\n")
        self.assertEqual(client.send(b"CAPA\r\n"), CAPA_PLAIN)

    def test_output_backpressure(self):
        """
        While the transport holds more than it can send (it paused the
        session's output), no further command is answered and reading
        stops once the waiting input passes its limit, so a client that
        sends commands but never reads cannot make the server buffer
        replies without end; when the transport drains, the commands
        waiting are answered in order.
        """
        h = Harness(self)
        client = h.connect()
        flow = client.transport.producer
        flow.pauseProducing()
        self.assertEqual(client.send(b"CAPA\r\nNOOP\r\n"), b"")
        self.assertEqual(client.transport.producerState, "producing")
        client.send(b"CAPA\r\n" * (server_module.MAX_PENDING_INPUT // 6 + 1))
        self.assertEqual(client.output(), b"")
        self.assertEqual(client.transport.producerState, "paused")
        flow.resumeProducing()
        self.assertTrue(client.output().startswith(CAPA_PLAIN + b"-ERR Not logged in\r\n" + CAPA_PLAIN))
        self.assertEqual(client.transport.producerState, "producing")

    def test_endless_line(self):
        """
        An endless line costs no memory and gets one -ERR when it ends.
        """
        h = Harness(self)
        client = h.connect()
        for _ in range(2000):
            self.assertEqual(client.send(b"x" * 4096), b"")
            self.assertLess(client.protocol._reader.buffered, 8192)
        self.assertEqual(client.send(b"\r\nNOOP\r\n"), b"-ERR Line too long\r\n-ERR Not logged in\r\n")

    def test_max_connections(self):
        """
        Over max_connections, a new connection gets -ERR [SYS/TEMP] and is
        closed; a slot frees when a session ends.
        """
        h = Harness(self, max_connections=2)
        a = h.connect()
        h.connect(UNTRUSTED)
        third = Client(h.factory, UNTRUSTED_2)
        self.assertEqual(third.output(), b"-ERR [SYS/TEMP] Too many connections, try again later\r\n")
        self.assertTrue(third.transport.disconnecting)
        third.drop()
        self.assertEqual(h.factory.connections, 2)
        a.drop()
        self.assertEqual(Client(h.factory, UNTRUSTED_2).output(), GREETING)

    def test_max_connections_per_ip(self):
        """
        Over max_connections_per_ip from one address, -ERR [SYS/TEMP];
        other addresses are still served.
        """
        h = Harness(self, max_connections_per_ip=1)
        h.connect(UNTRUSTED)
        again = Client(h.factory, UNTRUSTED)
        self.assertEqual(again.output(), b"-ERR [SYS/TEMP] Too many connections, try again later\r\n")
        self.assertEqual(again.send(b"CAPA\r\n"), b"")
        self.assertEqual(Client(h.factory, UNTRUSTED_2).output(), GREETING)

    def test_idle_timeout(self):
        """
        A session idle for idle_timeout is closed without a reply (RFC
        1939 section 3); input resets the timer.
        """
        h = Harness(self, idle_timeout=600)
        client = h.connect()
        h.clock.advance(599)
        client.send(b"CAPA\r\n")
        h.clock.advance(599)
        self.assertFalse(client.transport.disconnecting)
        client.output()
        h.clock.advance(1)
        self.assertEqual(client.output(), b"")
        self.assertTrue(client.transport.disconnecting)
        client.drop()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_idle_timeout_client_not_reading(self):
        """
        A session closed at its idle time-out whose connection does not go
        (a client that reads nothing, or never ends its TLS handshake) is
        aborted L{CLOSE_TIMEOUT} seconds later, and its place in the
        connection limits is freed.
        """
        h = Harness(self, idle_timeout=600)
        client = h.connect()
        h.clock.advance(600)
        self.assertTrue(client.transport.disconnecting)
        self.assertFalse(client.transport.aborted)
        h.clock.advance(CLOSE_TIMEOUT - 1)
        self.assertFalse(client.transport.aborted)
        h.clock.advance(1)
        self.assertTrue(client.transport.aborted)
        client.drop()
        self.assertEqual(h.factory.connections, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_idle_timeout_while_streaming(self):
        """
        A client that stops reading a message is cut off at the timeout.
        """
        disk = ManualDiskPool()
        h = Harness(self, disk=disk, idle_timeout=60)
        h.standard_mailbox()
        h.deliver("new", "2000.M1P1Q1.host", b"x" * 100 + b"\r\n" * 100000)
        client = h.connect()
        client.send(b"USER alice@example.test\r\nPASS correct horse\r\n")
        disk.run_next()
        client.send(b"RETR 4\r\n")
        disk.run_next()  # open, read the first chunk
        self.assertIsNotNone(client.transport.producer)
        client.transport.producer.pauseProducing()
        h.clock.advance(60)
        self.assertTrue(client.transport.aborted)
        client.drop()
        disk.run_all()


class ArbitraryInputTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=300),
                st.sampled_from(
                    [
                        b"RETR 1\r\n",
                        b"TOP 2 1\r\n",
                        b"DELE 1\r\n",
                        b"LIST\r\n",
                        b"UIDL 9\r\n",
                        b"RSET\r\n",
                        b"AUTH PLAIN\r\n",
                        b"USER alice@example.test\r\n",
                        b"PASS wrong\r\n",
                        b"STLS\r\n",
                        b"CAPA\r\n",
                        b"\r\n",
                        b"\r",
                        b"\n",
                        b"AUTH PLAIN ",
                        b"x" * 300,
                    ]
                ),
            ),
            max_size=12,
        ),
        st.booleans(),
    )
    def test_never_crashes(self, chunks, logged_in):
        """
        Arbitrary bytes, in any chunking, before or after login, never
        raise and never end in an internal error.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.login() if logged_in else h.connect()
        for chunk in chunks:
            client.send(chunk)
        h.clock.advance(20)
        client.send(b"\r\nNOOP\r\n")
        self.assertNotIn(b"Internal server error", client.transport.value())
        self.assertFalse(any(e.get("log_failure") is not None for e in h.events))
        client.drop()


class InternalErrorTests(SynchronousTestCase):
    def test_unexpected_exception(self):
        """
        An unexpected exception in a command is logged with its traceback,
        answered with -ERR [SYS/TEMP] and closes that session only.
        """
        h = Harness(self)
        h.standard_mailbox()
        client = h.login()
        other = h.connect()

        def broken(session, argument):
            raise ZeroDivisionError()

        self.patch(server_module.commands, "handler_for", lambda keyword, state: broken)
        self.assertEqual(client.send(b"STAT\r\n"), b"-ERR [SYS/TEMP] Internal server error\r\n")
        self.assertTrue(client.transport.disconnecting)
        self.assertFalse(other.transport.disconnecting)
        self.assertTrue(any(e.get("log_failure") is not None for e in h.events))

    def test_mailbox_unreadable(self):
        """
        A mailbox that cannot be read gets -ERR [SYS/TEMP] and is not left
        locked.
        """
        h = Harness(self)
        os.makedirs(os.path.dirname(h.mailbox_path(ALICE)))
        with open(h.mailbox_path(ALICE), "wb") as f:
            f.write(b"a file, not a folder")
        client = h.connect()
        self.assertEqual(
            client.send(b"USER alice@example.test\r\nPASS correct horse\r\n"),
            b"+OK Send your password\r\n-ERR [SYS/TEMP] Cannot open the mailbox\r\n",
        )
        self.assertFalse(h.factory.locks.is_locked(h.mailbox_path(ALICE)))
