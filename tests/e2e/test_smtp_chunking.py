"""
End-to-end: CHUNKING (RFC 3030 BDAT) against the real twistd, with a raw
socket client pipelining a multi-chunk message.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import ServerProcess, wait_until
from tests.e2e.test_smtp_inbound import USERS, RawSMTP, split_delivered

# Dot-lines, an end-of-data marker and commands inside the data, 8-bit
# bytes, and a CRLF split across two chunks: all stored as sent.
CHUNKS = (
    b"From: zed@remote.test\r\nSubject: chunked\r\n\r\n.\r\n..two\r\nRSET\r",
    b"\nMAIL FROM:<evil@remote.test>\r\n8-bit: Gr\xc3\xbc\xc3\x9fe \xff\r\n",
    b"x" * 70000 + b"\r\nend\r\n",
)


class ChunkingTests(SynchronousTestCase):
    def test_pipelined_chunks(self):
        """
        EHLO offers CHUNKING; MAIL, RCPT, three BDAT chunks and QUIT in
        one write get their replies in order, and the Maildir file holds
        the chunks byte for byte after our header lines.
        """
        server = ServerProcess(self, users=USERS, services=("smtp",)).start()
        raw = RawSMTP(server.ports["smtp"])
        self.addCleanup(raw.close)
        raw.send(b"EHLO client.test\r\n")
        self.assertRegex(raw.reply(), rb"\r\n250[ -]CHUNKING\r\n")
        stream = b"MAIL FROM:<zed@remote.test> BODY=8BITMIME\r\nRCPT TO:<alice@example.test>\r\n"
        for index, chunk in enumerate(CHUNKS):
            last = b" LAST" if index == len(CHUNKS) - 1 else b""
            stream += b"BDAT %d%s\r\n" % (len(chunk), last) + chunk
        raw.send(stream + b"QUIT\r\n")
        replies = [raw.reply() for _ in range(6)]
        self.assertEqual(replies[:4], [
            b"250 2.1.0 Ok\r\n",
            b"250 2.1.5 Ok\r\n",
            b"250 2.0.0 Ok: %d octets received\r\n" % len(CHUNKS[0]),
            b"250 2.0.0 Ok: %d octets received\r\n" % len(CHUNKS[1]),
        ])
        self.assertRegex(replies[4], rb"^250 2\.0\.0 Ok: queued as \S+\r\n$")
        self.assertEqual(replies[5], b"221 2.0.0 mail.example.test Bye\r\n")
        [data] = server.wait_for_messages("alice@example.test", 1)
        prefix, rest = split_delivered(data)
        self.assertEqual(rest, b"".join(CHUNKS))
        self.assertIn(b"with ESMTP id ", prefix)

    def test_refused_chunk_consumed(self):
        """
        BDAT without a transaction is refused after its octets are read
        (commands in them never run); a bare LF in a chunked message
        refuses it at LAST; nothing is delivered and the session goes on.
        """
        server = ServerProcess(self, users=USERS, services=("smtp",)).start()
        raw = RawSMTP(server.ports["smtp"])
        self.addCleanup(raw.close)
        hidden = b"MAIL FROM:<evil@remote.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT 1 LAST\r\nx"
        raw.send(b"EHLO client.test\r\n" + b"BDAT %d LAST\r\n" % len(hidden) + hidden + b"NOOP\r\n")
        raw.reply()
        self.assertEqual([raw.reply()[:9] for _ in range(2)], [b"503 5.5.1", b"250 2.0.0"])
        raw.send(b"MAIL FROM:<zed@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                 b"BDAT 4\r\nab\nc" + b"BDAT 2 LAST\r\n\r\n" + b"QUIT\r\n")
        self.assertEqual([raw.reply()[:9] for _ in range(5)],
                         [b"250 2.1.0", b"250 2.1.5", b"250 2.0.0", b"550 5.6.0", b"221 2.0.0"])
        self.assertEqual(server.maildir_files("alice@example.test"), [])
        # The refused message's spool file is gone, and nothing was queued.
        queue = os.path.join(server.data_dir, "queue")
        wait_until(lambda: os.listdir(os.path.join(queue, "tmp")) == [], 10, what="an empty queue/tmp")
        self.assertEqual(os.listdir(os.path.join(queue, "messages")), [])
