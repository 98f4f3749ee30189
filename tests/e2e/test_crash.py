"""
End-to-end crash consistency under load: many concurrent sessions send
mail for local and remote recipients while the server is SIGKILLed at
random moments and restarted. Afterwards every message that got a 250 must
be in its Maildir and at the remote sink at least once, nothing may have
arrived in part, and no half-written file may be left in the queue.

The default run is short (a few hundred messages, three kills); set
C{MAILAPPLIANCE_LONG_TESTS=1} for a longer one.
"""

import os
import random
import re
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import wait_until
from tests.e2e.test_relay import RelayTestCase

LONG = bool(os.environ.get("MAILAPPLIANCE_LONG_TESTS"))
MESSAGES = 1500 if LONG else 400
KILLS = 8 if LONG else 3
SESSIONS = 12


def body_for(number: int) -> bytes:
    # Long enough to span several writes; unique and self-checking.
    line = b"crash-test %06d " % number + b"x" * 60 + b"\r\n"
    return b"Subject: crash %06d\r\n\r\n" % number + line * (40 + number % 200) + b"end %06d\r\n" % number


class CrashConsistencyTests(RelayTestCase, SynchronousTestCase):
    def test_sigkill_under_load(self):
        dns, sink = self.dns(), self.sink()
        server = self.server(dns, sink.port, 'retry_initial = "1s"\nretry_max = "2s"\n',
                             users={"alice@example.test": "a", "bob@example.test": "b"})
        port = server.ports["smtp"]
        accepted: set[int] = set()
        interrupted = []
        lock = threading.Lock()
        numbers = list(range(MESSAGES))
        stop = threading.Event()

        def send(number: int) -> None:
            data = body_for(number)
            recipients = ["alice@example.test", "bob@example.test", "carol@remote.test"][: 1 + number % 3]
            while not stop.is_set():
                try:
                    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
                    try:
                        client.sendmail("sender@remote.test", recipients, data)
                    finally:
                        try:
                            client.quit()
                        except (smtplib.SMTPException, OSError):
                            pass
                except (smtplib.SMTPException, OSError):
                    with lock:
                        interrupted.append(number)
                    time.sleep(0.05)  # the server is down or restarting; try again
                    continue
                with lock:
                    accepted.add(number)
                return

        rng = random.Random(7)
        with ThreadPoolExecutor(SESSIONS) as pool:
            futures = [pool.submit(send, n) for n in numbers]
            for _ in range(KILLS):
                time.sleep(rng.uniform(0.3, 1.2))
                server.kill()
                server.start()
            for f in futures:
                f.result(timeout=300)
        stop.set()
        self.assertEqual(len(accepted), MESSAGES)
        # The kills really hit sessions in flight (else this proves little).
        self.assertGreater(len(interrupted), 0)

        # Everything acknowledged arrives, whole.
        wait_until(lambda: self.queue_ids(server) == [], 120, what="an empty queue")
        expected_local = {"alice@example.test": {n for n in accepted},
                          "bob@example.test": {n for n in accepted if n % 3 >= 1}}
        for address, wanted in expected_local.items():
            seen = set()
            for path in server.maildir_files(address):
                with open(path, "rb") as f:
                    data = f.read()
                number = int(re.search(rb"Subject: crash (\d{6})", data).group(1))
                self.assertTrue(data.endswith(body_for(number)), f"{path} is not complete")
                seen.add(number)
            self.assertEqual(wanted - seen, set(), f"acknowledged but missing for {address}")
        remote_seen = set()
        for name in os.listdir(sink.spool):
            if name.endswith(".eml") and not name.startswith("."):
                with open(os.path.join(sink.spool, name), "rb") as f:
                    data = f.read()
                number = int(re.search(rb"Subject: crash (\d{6})", data).group(1))
                self.assertTrue(data.endswith(body_for(number)), f"sink {name} is not complete")
                remote_seen.add(number)
        self.assertEqual({n for n in accepted if n % 3 == 2} - remote_seen, set())

        # No half-written files are left in the queue or in new/.
        queue = os.path.join(server.data_dir, "queue")
        self.assertEqual(os.listdir(os.path.join(queue, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(queue, "messages")), [])
        self.assertEqual(os.listdir(os.path.join(queue, "corrupt")), [])
        for address in expected_local:
            for name in os.listdir(os.path.join(server.maildir(address), "new")):
                self.assertRegex(name, r",S=\d+,W=\d+$")
