"""
End-to-end: inbound SMTP into local Maildirs, against the real twistd,
with smtplib and raw sockets.
"""

import os
import re
import smtplib
import socket

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.queue.ids import is_queue_id
from mailappliance.queue.spool import read_current_envelope
from tests.e2e.harness import ServerProcess, send_and_half_close, wait_until

USERS = {"alice@example.test": "a", "bob@example.test": "b", "carol@example.test": "c"}
ALIASES = (
    "team@example.test: alice@example.test, bob@example.test\n"
    "abuse: carol@example.test\n"
    "far@example.test: someone@remote.test, alice@example.test\n"
)


def split_delivered(data):
    """
    Split a delivered file into (prefix header lines, the rest).
    """
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path: "), lines[0]
    assert lines[1].startswith(b"Delivered-To: "), lines[1]
    assert lines[2].startswith(b"Received: "), lines[2]
    end = data.index(b"\r\n", data.index(b"Received: "))
    # The Received: field may be folded over several lines.
    while data[end + 2:end + 3] in (b" ", b"\t"):
        end = data.index(b"\r\n", end + 2)
    return data[: end + 2], data[end + 2:]


class RawSMTP:
    """
    A raw SMTP connection for what smtplib will not do (pipelining in one
    write, bare line ends).
    """

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data):
        self.sock.sendall(data)

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError("connection closed")
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def close(self):
        self.file.close()
        self.sock.close()


class InboundTests(SynchronousTestCase):
    def start(self, **kw):
        kw.setdefault("users", USERS)
        kw.setdefault("aliases", ALIASES)
        kw.setdefault("services", ("smtp",))
        return ServerProcess(self, **kw).start()

    def client(self, server):
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60)
        self.addCleanup(client.close)
        return client

    def test_greeting_and_ehlo(self):
        """
        The greeting and EHLO name our host and advertise the extensions.
        """
        server = self.start()
        client = self.client(server)
        code, text = client.ehlo("client.example.test")
        self.assertEqual(code, 250)
        for extension in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8"):
            self.assertTrue(client.has_extn(extension), extension)
        self.assertEqual(client.esmtp_features["size"], "26214400")
        client.quit()

    def test_many_recipients_byte_exact(self):
        """
        One message to three local recipients makes three Maildir files, each
        the message byte for byte after Return-Path:, Delivered-To: and
        Received:. Dot-lines and 8-bit bytes survive.
        """
        server = self.start()
        body = ("From: zed@remote.test\r\nSubject: test\r\n\r\n.dot\r\n..two\r\n8-bit: Grüße \xff\r\n"
                .encode("latin-1")) + b"end\r\n"
        client = self.client(server)
        refused = client.sendmail("zed@remote.test", ["alice@example.test", "Bob@Example.TEST", "carol@example.test"],
                                  body, mail_options=["BODY=8BITMIME"])
        self.assertEqual(refused, {})
        client.quit()
        for address in ("alice@example.test", "bob@example.test", "carol@example.test"):
            [data] = server.wait_for_messages(address, 1)
            prefix, rest = split_delivered(data)
            self.assertEqual(rest, body)
            self.assertTrue(prefix.startswith(b"Return-Path: <zed@remote.test>\r\nDelivered-To: " +
                                              address.encode() + b"\r\nReceived: from "), prefix)
            self.assertIn(b"by mail.example.test (mailappliance) with ESMTP id ", prefix)
        name = os.path.basename(server.maildir_files("alice@example.test")[0])
        self.assertRegex(name, r"^\d+\.M\d+P\d+Q\d+\..+,S=\d+,W=\d+$")
        size = int(re.search(r",S=(\d+)", name).group(1))
        self.assertEqual(size, os.path.getsize(server.maildir_files("alice@example.test")[0]))

    def test_delivered_directly_or_queued(self):
        """
        A message for local recipients only is in the Maildirs when the
        250 comes (direct delivery, nothing queued). A recipient whose
        Maildir cannot be made (a file in the way) sends the message
        through the queue instead: the others keep their single copy, and
        the sender gets one bounce naming the failed recipient.
        """
        server = self.start()
        client = self.client(server)
        client.sendmail("zed@remote.test", ["alice@example.test"], b"Subject: direct\r\n\r\nnow\r\n")
        # No waiting: the copy is durable before the 250.
        [path] = server.maildir_files("alice@example.test")
        with open(path, "rb") as f:
            self.assertIn(b"\r\n\r\nnow\r\n", f.read())
        self.assertEqual(os.listdir(os.path.join(server.data_dir, "queue", "messages")), [])

        carol = server.maildir("carol@example.test")
        os.makedirs(os.path.dirname(carol), exist_ok=True)
        with open(carol, "w") as f:
            f.write("in the way\n")
        refused = client.sendmail("bob@example.test", ["alice@example.test", "carol@example.test"],
                                  b"Subject: half\r\n\r\nhalf\r\n")
        self.assertEqual(refused, {})
        client.quit()
        [bounce] = server.wait_for_messages("bob@example.test", 1)
        self.assertIn(b"carol@example.test", bounce)
        self.assertIn(b"Not a directory", bounce)
        self.assertEqual(len(server.maildir_files("alice@example.test")), 2)
        log = server.wait_for_log("status=removed")
        qid = re.search(r"qid=(\w+) to=<carol@example.test> status=failed", log).group(1)
        self.assertIn(f"qid={qid} to=<alice@example.test> status=delivered", log)
        messages = os.path.join(server.data_dir, "queue", "messages")
        wait_until(lambda: os.listdir(messages) == [], 10, what="an empty queue")
        self.assertEqual(len(server.maildir_files("alice@example.test")), 2)

    def test_large_message_streamed_or_queued(self):
        """
        A 1 MiB message for one mailbox is written into it as it arrives:
        in the Maildir byte for byte when the 250 comes, never in the
        queue (no queue lines in the log). The same message for two
        mailboxes goes through the queue, and each gets its copy.
        """
        server = self.start()
        client = self.client(server)
        line = b"0123456789" * 7 + b"abcdefgh\r\n"
        body = b"Subject: big\r\n\r\n" + line * (1024 * 1024 // len(line))
        client.sendmail("zed@remote.test", ["alice@example.test"], body)
        [path] = server.maildir_files("alice@example.test")
        with open(path, "rb") as f:
            self.assertEqual(split_delivered(f.read())[1], body)
        messages = os.path.join(server.data_dir, "queue", "messages")
        self.assertEqual(os.listdir(messages), [])
        qid = re.search(r"qid=(\w+) to=<alice@example.test> status=delivered", server.log()).group(1)
        self.assertNotIn(f"qid={qid} from=", server.log())

        client.sendmail("zed@remote.test", ["bob@example.test", "carol@example.test"], body)
        client.quit()
        for address in ("bob@example.test", "carol@example.test"):
            [data] = server.wait_for_messages(address, 1)
            self.assertEqual(split_delivered(data)[1], body)
        self.assertIn(" status=queued", server.log())
        wait_until(lambda: os.listdir(messages) == [], 10, what="an empty queue")

    def test_no_headers_and_empty(self):
        """
        A message with no header section arrives as sent after an empty
        line that ends our header section (else its first line would read
        as a malformed field after our Received:), a large one streamed
        into the Maildir too; an empty one arrives as sent.
        """
        server = self.start()
        client = self.client(server)
        line = b"no header line, just body text, " * 3 + b"\r\n"
        large = line * (512 * 1024 // len(line))
        client.sendmail("zed@remote.test", ["alice@example.test"], b"just a body line\r\n")
        client.sendmail("zed@remote.test", ["alice@example.test"], b"")
        client.sendmail("zed@remote.test", ["alice@example.test"], large)
        client.quit()
        stored = []
        for data in server.wait_for_messages("alice@example.test", 3):
            # Return-Path:, Delivered-To:, our Received: (folded), then
            # the rest exactly.
            header, rest = split_delivered(data)
            self.assertEqual(header.count(b"\r\n"), 5, header)
            self.assertRegex(header.split(b"\r\n")[4], rb"^\tfor <alice@example.test>; .* \+0000$")
            stored.append(rest)
        stored.sort(key=len)
        # smtplib sends an empty message as one empty line.
        self.assertEqual(stored[:2], [b"\r\n", b"\r\njust a body line\r\n"])
        # Not assertEqual: its diff of 512 KiB that differ takes minutes.
        self.assertTrue(stored[2] == b"\r\n" + large, stored[2][:200])

    def test_large_message_and_memory(self):
        """
        A 20 MB message arrives byte-exact, and the server's memory stays
        bounded while it streams.
        """
        server = self.start()
        line = b"0123456789" * 7 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
        before = rss_kib(server.process.pid)
        client = self.client(server)
        client.sendmail("zed@remote.test", ["alice@example.test"], body)
        client.quit()
        peak = peak_rss_kib(server.process.pid)
        [data] = server.wait_for_messages("alice@example.test", 1, timeout=60)
        self.assertEqual(split_delivered(data)[1], body)
        # Generous: the whole message is 20 MiB; holding it would add that.
        self.assertLess(peak - before, 15 * 1024, f"RSS grew from {before} KiB to a peak of {peak} KiB")

    def test_aliases_and_subaddress(self):
        """
        An alias fans out, a bare local-part alias applies to the local
        domain, and user+tag reaches user.
        """
        server = self.start()
        client = self.client(server)
        client.sendmail("zed@remote.test", ["team@example.test"], b"Subject: team\r\n\r\nx\r\n")
        client.sendmail("zed@remote.test", ["abuse@example.test"], b"Subject: abuse\r\n\r\nx\r\n")
        client.sendmail("zed@remote.test", ["alice+lists@example.test"], b"Subject: tagged\r\n\r\nx\r\n")
        client.quit()
        alice = server.wait_for_messages("alice@example.test", 2)
        self.assertEqual(sorted(b"tagged" in d for d in alice), [False, True])
        # The tag stays in the copy for the user's filters.
        [tagged] = [d for d in alice if b"tagged" in d]
        self.assertIn(b"\r\nDelivered-To: alice+lists@example.test\r\n", tagged)
        [untagged] = [d for d in alice if b"tagged" not in d]
        self.assertIn(b"\r\nDelivered-To: alice@example.test\r\n", untagged)
        [bob] = server.wait_for_messages("bob@example.test", 1)
        self.assertIn(b"Subject: team", bob)
        self.assertIn(b"Delivered-To: bob@example.test\r\n", bob)
        [carol] = server.wait_for_messages("carol@example.test", 1)
        self.assertIn(b"Subject: abuse", carol)

    def test_unknown_user(self):
        """
        An unknown local recipient gets 550 5.1.1; the others in the same
        transaction are delivered.
        """
        server = self.start()
        client = self.client(server)
        client.ehlo("x")
        client.mail("zed@remote.test")
        self.assertEqual(client.rcpt("nobody@example.test")[0], 550)
        code, text = client.rcpt("nobody@example.test")
        self.assertTrue(text.startswith(b"5.1.1"), text)
        self.assertEqual(client.rcpt("alice@example.test")[0], 250)
        self.assertEqual(client.data(b"Subject: x\r\n\r\nx\r\n")[0], 250)
        client.quit()
        server.wait_for_messages("alice@example.test", 1)

    def test_session_ids_in_the_log(self):
        """
        Each log line of a session carries its session id, so that two
        sessions from one address can be told apart.
        """
        server = self.start()
        first, second = self.client(server), self.client(server)
        first.ehlo("one")
        second.ehlo("two")
        first.mail("zed@remote.test")
        self.assertEqual(first.rcpt("nobody@example.test")[0], 550)
        second.mail("zed@remote.test")
        self.assertEqual(second.rcpt("alice@example.test")[0], 250)
        self.assertEqual(second.data(b"Subject: x\r\n\r\nx\r\n")[0], 250)
        first.quit()
        second.quit()
        server.wait_sessions_closed()
        lines = [line for line in server.log().splitlines() if "service=smtp " in line]
        ids = {}
        for event in ("connect", "reject", "queued", "disconnect"):
            for line in lines:
                if f" event={event} " in line:
                    ids.setdefault(event, set()).add(re.search(r" peer=127\.0\.0\.1 session=(\w+)( |$)", line).group(1))
        [rejected] = ids["reject"]
        [queued] = ids["queued"]
        self.assertNotEqual(rejected, queued)
        self.assertTrue({rejected, queued} <= ids["connect"] and {rejected, queued} <= ids["disconnect"], lines)

    def test_utf8_local_part_in_either_normal_form(self):
        """
        A UTF-8 local part reaches its mailbox whether the client sends it
        composed or decomposed (one user, one folder; RFC 6532 section 3.1).
        """
        server = self.start(users=dict(USERS, **{"zo\u00eb@example.test": "z"}))
        client = self.client(server)
        client.command_encoding = "utf-8"
        client.ehlo("x")
        for local in ("zo\u00eb", "zoe\u0308", "ZOE\u0308"):
            code, text = client.docmd("MAIL FROM:<x@remote.test> SMTPUTF8")
            self.assertEqual(code, 250, text)
            code, text = client.docmd(f"RCPT TO:<{local}@example.test>")
            self.assertEqual(code, 250, text)
            self.assertEqual(client.data(b"Subject: x\r\n\r\nx\r\n")[0], 250)
        client.quit()
        messages = server.wait_for_messages("zo\u00eb@example.test", 3)
        self.assertEqual(len(messages), 3)
        folders = os.listdir(os.path.dirname(server.maildir("zo\u00eb@example.test")))
        self.assertEqual([f for f in folders if f.startswith("zo")], ["zo\u00eb"])

    def test_addresses_without_brackets(self):
        """
        A scanner-style client that leaves out the angle brackets
        (C{MAIL FROM:a@b}) is served, as Postfix serves it.
        """
        server = self.start()
        raw = RawSMTP(server.ports["smtp"])
        self.addCleanup(raw.close)
        raw.send(b"HELO scanner\r\nMAIL FROM:scanner@remote.test\r\nRCPT TO: alice@example.test\r\nDATA\r\n")
        self.assertEqual([raw.reply()[:3] for _ in range(4)], [b"250", b"250", b"250", b"354"])
        raw.send(b"Subject: scan\r\n\r\npage 1\r\n.\r\nQUIT\r\n")
        self.assertEqual(raw.reply()[:3], b"250")
        [data] = server.wait_for_messages("alice@example.test", 1)
        self.assertIn(b"Return-Path: <scanner@remote.test>\r\n", data)

    def test_relay_denied_untrusted(self):
        """
        From outside trusted_networks, mail for another domain gets
        554 5.7.1; local mail is still accepted.
        """
        server = self.start(options={"smtp": 'trusted_networks = ["192.0.2.0/24"]'})
        client = self.client(server)
        client.ehlo("x")
        client.mail("zed@remote.test")
        code, text = client.rcpt("victim@elsewhere.test")
        self.assertEqual((code, text[:5]), (554, b"5.7.1"))
        self.assertEqual(client.rcpt("alice@example.test")[0], 250)
        client.quit()

    def test_postmaster(self):
        """
        RFC 5321 section 4.5.1: C{<Postmaster>}, and postmaster@ a local
        domain without a mailbox of that name, reach the configured
        postmaster, also from an untrusted client, when the host name is
        not a local domain.
        """
        server = self.start(options={"smtp": 'trusted_networks = ["192.0.2.0/24"]',
                                     "server": 'postmaster = "carol@example.test"'})
        client = self.client(server)
        client.ehlo("x")
        client.mail("zed@remote.test")
        self.assertEqual(client.rcpt("<Postmaster>")[0], 250)
        self.assertEqual(client.rcpt("postmaster@example.test")[0], 250)
        self.assertEqual(client.data(b"Subject: to the postmaster\r\n\r\nx\r\n")[0], 250)
        client.quit()
        [delivered] = server.wait_for_messages("carol@example.test", 1)
        self.assertIn(b"Subject: to the postmaster", delivered)

    def test_alias_to_remote_is_queued(self):
        """
        A local alias with a remote member is accepted; the remote copy stays
        in the queue (relay) while the local one is delivered before the
        250 (direct delivery) and recorded so in the queued envelope.
        """
        server = self.start()
        client = self.client(server)
        client.sendmail("zed@remote.test", ["far@example.test"], b"Subject: far\r\n\r\nx\r\n")
        client.quit()
        self.assertEqual(len(server.maildir_files("alice@example.test")), 1)
        messages = os.path.join(server.data_dir, "queue", "messages")
        queued = [n for n in os.listdir(messages) if is_queue_id(n)]
        self.assertEqual(len(queued), 1, os.listdir(messages))
        envelope = read_current_envelope(messages, queued[0])
        states = {str(r.target): r.state for r in envelope.recipients}
        self.assertEqual(states, {"someone@remote.test": "pending", "alice@example.test": "delivered"})

    def test_pipelined_transaction_in_one_write(self):
        """
        A whole transaction in one write gets its replies in order.
        """
        server = self.start()
        raw = RawSMTP(server.ports["smtp"])
        self.addCleanup(raw.close)
        raw.send(b"EHLO client.test\r\nMAIL FROM:<zed@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                 b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                 b"Subject: piped\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        codes = [raw.reply()[:9] for _ in range(8)]
        self.assertEqual(codes[0][:4], b"250-")
        self.assertEqual(codes[1:], [b"250 2.1.0", b"250 2.1.5", b"550 5.1.1", b"250 2.1.5", b"354 2.0.0",
                                     b"250 2.0.0", b"221 2.0.0"])
        server.wait_for_messages("alice@example.test", 1)
        server.wait_for_messages("bob@example.test", 1)

    def test_pipelined_then_half_closed(self):
        """
        A whole transaction pipelined in one write, then the write side
        closed (as C{printf ... | nc -N host 25} does): every reply
        arrives, QUIT's included, and the message is delivered.
        """
        server = self.start()
        received = send_and_half_close(
            server.ports["smtp"],
            b"EHLO x\r\nMAIL FROM:<zed@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            b"Subject: half-closed\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        )
        codes = [line[:4] for line in received.split(b"\r\n") if line[3:4] == b" "]
        self.assertEqual(codes, [b"220 ", b"250 ", b"250 ", b"250 ", b"354 ", b"250 ", b"221 "], received)
        [delivered] = server.wait_for_messages("alice@example.test", 1)
        self.assertIn(b"Subject: half-closed\r\n\r\nbody\r\n", delivered)

    def test_size_refusals(self):
        """
        SIZE= over the limit gets 552 5.3.4 at MAIL; an over-size body is
        consumed to its end and refused with 552 5.3.4; the session goes on.
        """
        server = self.start(options={"smtp": "max_message_size = 10000"})
        client = self.client(server)
        client.ehlo("x")
        self.assertEqual(client.esmtp_features["size"], "10000")
        code, text = client.mail("zed@remote.test", ["SIZE=20000"])
        self.assertEqual((code, text[:5]), (552, b"5.3.4"))
        client.rset()
        client.mail("zed@remote.test")
        client.rcpt("alice@example.test")
        code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 20000 + b"\r\n.\r\nRSET\r\n")
        self.assertEqual((code, text[:5]), (552, b"5.3.4"))
        self.assertEqual(client.noop()[0], 250)
        client.quit()
        self.assertEqual(server.maildir_files("alice@example.test"), [])

    def test_smuggling_refused(self):
        """
        Bare LF/CR never end DATA: a smuggled second message is neither
        delivered nor executed, the message is refused with a 5xx.
        """
        server = self.start()
        for ending in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"):
            raw = RawSMTP(server.ports["smtp"])
            raw.send(b"EHLO x\r\n")
            raw.reply()
            raw.send(b"MAIL FROM:<zed@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            self.assertEqual([raw.reply()[:3] for _ in range(3)], [b"250", b"250", b"354"])
            raw.send(b"Subject: outer\r\n\r\nhello" + ending +
                     b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                     b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
            reply = raw.reply()
            self.assertEqual(reply[:1], b"5", (ending, reply))
            raw.send(b"QUIT\r\n")
            self.assertEqual(raw.reply()[:3], b"221")
            raw.close()
        self.assertEqual(server.maildir_files("alice@example.test"), [])
        self.assertEqual(server.maildir_files("bob@example.test"), [])

    def test_sigkill_after_250_delivers_once(self):
        """
        SIGKILL right after the 250, then a restart: the message is delivered
        exactly once.
        """
        server = self.start()
        raw = RawSMTP(server.ports["smtp"])
        raw.send(b"EHLO x\r\nMAIL FROM:<zed@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        for _ in range(4):
            raw.reply()
        raw.send(b"Subject: crash\r\n\r\nsurvive me\r\n.\r\n")
        self.assertEqual(raw.reply()[:3], b"250")
        server.kill()
        raw.close()
        server.start()
        [data] = server.wait_for_messages("alice@example.test", 1)
        self.assertIn(b"survive me", data)
        # Give the restarted queue a moment to (wrongly) deliver again, then
        # check there is still exactly one copy and the queue is empty.
        messages = os.path.join(server.data_dir, "queue", "messages")
        wait_until(lambda: os.listdir(messages) == [], 10, what="an empty queue")
        self.assertEqual(len(server.maildir_files("alice@example.test")), 1)
        self.assertEqual(os.listdir(os.path.join(server.maildir("alice@example.test"), "tmp")), [])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

