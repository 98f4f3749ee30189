# -*- test-case-name: tests.test_flow -*-
"""
Tests for L{mailappliance.flow}: the sessions' output flow control and
closing with a deadline.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.flow import CLOSE_TIMEOUT, OutputFlow


class RecordingProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class UnregisterOrderTransport(StringTransport):
    """
    Records the order of C{unregisterProducer} and C{loseConnection}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def unregisterProducer(self) -> None:
        self.order.append("unregister")
        super().unregisterProducer()

    def loseConnection(self) -> None:
        self.order.append("lose")
        super().loseConnection()


class OutputFlowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.transport = UnregisterOrderTransport()
        self.clock = Clock()
        self.changes: list[bool] = []
        self.flow = OutputFlow(self.transport, self.clock, lambda: self.changes.append(self.flow.blocked))
        self.flow.start()

    def test_registered_as_streaming_producer(self) -> None:
        """
        L{OutputFlow.start} registers the flow as the transport's streaming
        producer.
        """
        self.assertIs(self.transport.producer, self.flow)
        self.assertTrue(self.transport.streaming)

    def test_pause_and_resume(self) -> None:
        """
        The transport's pause and resume set L{OutputFlow.blocked} and tell
        the session after each change.
        """
        self.assertFalse(self.flow.blocked)
        self.flow.pauseProducing()
        self.assertTrue(self.flow.blocked)
        self.flow.resumeProducing()
        self.assertFalse(self.flow.blocked)
        self.assertEqual(self.changes, [True, False])

    def test_attached_producer_follows(self) -> None:
        """
        An attached producer gets the transport's pauses and resumes and its
        stop; one attached while the transport is paused is paused at once;
        a detached one gets nothing more.
        """
        producer = RecordingProducer()
        self.flow.attach(producer)
        self.assertIs(self.flow.attached, producer)
        self.flow.pauseProducing()
        self.flow.resumeProducing()
        self.flow.stopProducing()
        self.assertEqual(producer.calls, ["pause", "resume", "stop"])
        self.assertIsNone(self.flow.attached)
        self.flow.pauseProducing()
        late = RecordingProducer()
        self.flow.attach(late)
        self.assertEqual(late.calls, ["pause"])
        self.flow.detach()
        self.flow.resumeProducing()
        self.assertEqual(late.calls, ["pause"])
        self.assertEqual(producer.calls, ["pause", "resume", "stop"])

    def test_close_unregisters_first(self) -> None:
        """
        L{OutputFlow.close} unregisters the producer before it closes (a TLS
        transport does not begin to close while a producer is registered),
        and closing twice closes once.
        """
        self.flow.close()
        self.flow.close()
        self.assertEqual(self.transport.order, ["unregister", "lose"])
        self.assertIsNone(self.transport.producer)

    def test_close_deadline(self) -> None:
        """
        A connection not gone L{CLOSE_TIMEOUT} seconds after L{OutputFlow.close}
        is aborted.
        """
        self.flow.close()
        self.clock.advance(CLOSE_TIMEOUT - 0.5)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.5)
        self.assertTrue(self.transport.disconnected)

    def test_closed_in_time(self) -> None:
        """
        Once the connection is lost, the deadline is forgotten.
        """
        self.flow.close()
        self.flow.connection_lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.transport.disconnected)
