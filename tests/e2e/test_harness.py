"""
The end-to-end harness itself: a server start survives a port that was
taken between C{free_port} and twistd's bind.
"""

import smtplib
import socket

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import harness


class PortRaceTests(SynchronousTestCase):
    def take_port(self):
        """
        @return: a port on 127.0.0.1 that a listening socket holds for the
            rest of the test.
        """
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        self.addCleanup(blocker.close)
        return blocker.getsockname()[1]

    def first_port_taken(self, taken):
        real, calls = harness.free_port, []

        def free_port():
            calls.append(None)
            return taken if len(calls) == 1 else real()

        self.patch(harness, "free_port", free_port)

    def test_taken_port_chosen_again(self):
        """
        If a port given to the server is taken when twistd binds it (so
        that twistd exits), the ports are chosen again and the server
        starts; the failed attempt's log is kept.
        """
        taken = self.take_port()
        self.first_port_taken(taken)
        server = harness.ServerProcess(self, services=("smtp", "pop3")).start()
        self.assertNotEqual(server.ports["smtp"], taken)
        self.assertIn("Address already in use", open(server.log_path + ".0").read())
        client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
        self.addCleanup(client.close)
        self.assertEqual(client.ehlo()[0], 250)
        client.quit()

    def test_other_listener_not_taken_for_the_server(self):
        """
        A port on which someone else accepts connections is not mistaken
        for the server's: the start waits for twistd's own bind.
        """
        taken = self.take_port()
        self.first_port_taken(taken)
        server = harness.ServerProcess(self, services=("smtp",)).start()
        self.assertNotEqual(server.ports["smtp"], taken)
        self.assertIn(f"listen=tcp:{server.ports['smtp']}:", server.log())

    def test_free_port_not_handed_out_twice(self):
        """
        C{free_port} never returns a port it returned before in this
        process, though the kernel may offer it again.
        """
        first = harness.free_port()
        fresh = next(p for p in range(1024, 65536) if p not in harness._handed_out)
        offers = [first, first, fresh]

        class Kernel:
            # A socket module whose bind(0) offers the ports above in turn.
            AF_INET, SOCK_STREAM = socket.AF_INET, socket.SOCK_STREAM

            class socket:
                def __init__(self, *args):
                    self.port = offers.pop(0)

                def __enter__(self):
                    return self

                def __exit__(self, *args):
                    return False

                def bind(self, address):
                    pass

                def getsockname(self):
                    return ("127.0.0.1", self.port)

        self.patch(harness, "socket", Kernel)
        self.assertEqual(harness.free_port(), fresh)
        self.assertEqual(offers, [])
