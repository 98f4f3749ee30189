"""
Tests for L{mailappliance.smtp.factory.SMTPFactory.drain}: shutting the
sessions down on SIGTERM.
"""

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.testing import SMTPHarness


class DrainTests(SynchronousTestCase):
    def test_idle_closed_at_once(self):
        """
        An idle session gets 421 4.3.2 and is closed; the drain is done.
        """
        h = SMTPHarness()
        h.send(b"EHLO x\r\n")
        d = h.factory.drain(10)
        self.assertTrue(h.output().startswith(b"421 4.3.2 "))
        self.assertTrue(h.closed)
        h.lose()
        h.clock.advance(0.1)
        self.successResultOf(d)

    def test_transaction_finishes(self):
        """
        A session in DATA may finish its message (250), then gets 421.
        """
        h = SMTPHarness()
        h.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        d = h.factory.drain(10)
        self.assertNoResult(d)
        self.assertFalse(h.closed)
        out = h.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
        self.assertIn(b"250 2.0.0", out)
        self.assertTrue(out.endswith(b"\r\n") and b"421 4.3.2" in out.split(b"250 2.0.0", 1)[1])
        self.assertTrue(h.closed)
        # The 421 is logged as itself, not as a reply to DATA.
        self.assertEqual(h.log_lines()[-1], "service=smtp event=reject peer=192.0.2.1 session=s1 code=421 status=4.3.2 "
                                            'reason="mx.example.test Service shutting down, try again later"')
        h.lose()
        h.clock.advance(0.1)
        self.successResultOf(d)

    def test_grace_expires(self):
        """
        A session still busy after the grace period gets 421 and is
        dropped.
        """
        h = SMTPHarness()
        h.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\n")
        d = h.factory.drain(10)
        h.clock.advance(9.9)
        self.assertNoResult(d)
        h.output()
        h.clock.advance(0.2)
        self.successResultOf(d)
        self.assertTrue(h.output().startswith(b"421 4.3.2 "))
        self.assertTrue(h.transport.disconnecting or getattr(h.transport, "disconnected", False))

    def test_grace_expires_during_data(self):
        """
        A message still arriving when the grace period ends is discarded
        at once (its partial file removed while the disk pool runs), not
        when the connection's loss is noticed later.
        """
        h = SMTPHarness()
        h.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        h.send(b"Subject: s\r\n\r\npart of the body\r\n")
        [writer] = h.spool.writers
        h.factory.drain(10)
        h.clock.advance(10.1)
        self.assertEqual(writer.state, "aborted")
        self.assertIn('reason="connection dropped at shutdown during DATA"', h.log_lines()[-1])
        h.lose()
        self.assertEqual(writer.state, "aborted")

    def test_new_session_refused(self):
        """
        A session that arrives while draining gets 421 at once.
        """
        first = SMTPHarness()
        first.factory.drain(10)
        second = SMTPHarness(factory=first.factory, connect=False)
        self.assertTrue(second.connect().startswith(b"421 4.3.2 "))
