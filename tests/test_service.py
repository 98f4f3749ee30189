"""
Tests for L{mailappliance.service}: configuration reload on SIGHUP,
listeners, start-up checks.
"""

import signal

from twisted.internet.testing import MemoryReactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.filepath import FilePath
from twisted.python.systemd import ListenFDs
from twisted.trial.unittest import SynchronousTestCase

from mailappliance import service as service_module
from mailappliance.config.load import load_config
from mailappliance.disk import SynchronousDiskPool
from mailappliance.queue.relay import RetryPolicy
from mailappliance.service import (
    Listener,
    LiveConfiguration,
    StartupError,
    StopSignalGuard,
    config_changes,
    systemd_socket_problem,
    validate,
)
from mailappliance.smtp.client import ClientOptions
from mailappliance.smtp.policy import ConnectionLimiter

BASE = '[server]\nhostname = "mx.example.test"\n[smtp]\nmax_recipients = 10\n[relay]\nretry_initial = "5m"\n'


class FakeSMTPFactory:
    def __init__(self):
        self.settings = None
        self.connections = ConnectionLimiter(200, 20)


class FakeRelay:
    def __init__(self):
        self.retry = RetryPolicy()
        self.options = ClientOptions("mx.example.test")


class FakeNotifier:
    delay_warning_after = 0.0
    max_queue_lifetime = 0.0


class FakeManager:
    retry = None


class LiveConfigurationTests(SynchronousTestCase):
    def setUp(self):
        self.path = FilePath(self.mktemp())
        self.path.setContent(BASE.encode())
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.smtp = FakeSMTPFactory()
        self.relay = FakeRelay()
        self.manager = FakeManager()
        self.live = LiveConfiguration(load_config(self.path.path), {"smtp": self.smtp}, self.relay, FakeNotifier(),
                                      SynchronousDiskPool(), self.manager)

    def lines(self):
        return [formatEvent(e) for e in self.events if "event=reload" in formatEvent(e)]

    def test_safe_changes_applied(self):
        """
        Limits and the retry schedule take effect; the log names each key.
        """
        self.path.setContent((BASE.replace("max_recipients = 10", "max_recipients = 3\nmax_connections = 7")
                              .replace('"5m"', '"1m"')).encode())
        changes = self.successResultOf(self.live.reload())
        self.assertEqual(sorted(changes), [("relay.retry_initial", True), ("smtp.max_connections", True),
                                           ("smtp.max_recipients", True)])
        self.assertEqual(self.smtp.settings.max_recipients, 3)
        self.assertEqual(self.relay.retry.initial, 60.0)
        # Local deliveries that fail follow the same schedule.
        self.assertIs(self.manager.retry, self.relay.retry)
        self.assertIn("event=reload what=configuration key=smtp.max_recipients status=applied", self.lines())
        for _ in range(7):
            self.assertIsNone(self.smtp.connections.admit(f"192.0.2.{_}"))
        self.assertIsNotNone(self.smtp.connections.admit("192.0.2.99"))

    def test_restart_needed(self):
        """
        A change that needs a restart is named, and nothing is applied.
        """
        self.path.setContent((BASE + '[pop3]\n').replace("max_recipients = 10", "max_recipients = 3").encode())
        changes = self.successResultOf(self.live.reload())
        self.assertIn(("[pop3]", False), changes)
        self.assertIsNone(self.smtp.settings)
        self.assertIn("event=reload what=configuration key=[pop3] status=needs-restart", self.lines())

    def test_bad_file_refused(self):
        self.path.setContent(b"[server]\nbogus = 1\n")
        self.assertEqual(self.successResultOf(self.live.reload()), [])
        refused = [line for line in self.lines() if "status=refused" in line]
        self.assertEqual(len(refused), 1, self.lines())
        # The reason is one quoted value: its spaces cannot read as fields.
        self.assertRegex(refused[0], r'status=refused reason="[^"]*server\.bogus[^"]*"$')

    def test_unchanged(self):
        self.assertEqual(self.successResultOf(self.live.reload()), [])
        self.assertIn("event=reload what=configuration status=unchanged", self.lines())


class ChangesTests(SynchronousTestCase):
    def test_changes(self):
        folder = FilePath(self.mktemp())
        folder.makedirs()
        a = folder.child("a.toml")
        a.setContent(BASE.encode())
        b = folder.child("b.toml")
        b.setContent(BASE.replace('hostname = "mx.example.test"', 'hostname = "other.example.test"').encode())
        self.assertEqual(config_changes(load_config(a.path), load_config(b.path)), [("server.hostname", False)])


class SystemdListenerTests(SynchronousTestCase):
    """
    A C{systemd:} endpoint whose socket systemd did not pass (here: this
    test process got none) is a one-line L{StartupError}, not a traceback.
    """

    def start(self, description, key="smtp.listen"):
        listener = Listener(MemoryReactor(), "smtp", description, object(), key=key, source="/etc/m.toml")
        with self.assertRaises(StartupError) as cm:
            listener.privilegedStartService()
        return str(cm.exception)

    def test_index_not_passed(self):
        self.assertEqual(self.start("systemd:domain=INET:index=99"),
                         "/etc/m.toml: smtp.listen: cannot use systemd:domain=INET:index=99: systemd passed no "
                         "socket with index 99 (is the server started by its socket unit?)")

    def test_name_not_passed(self):
        self.assertEqual(self.start("systemd:domain=INET6:name=nosuch", key="pop3.listen_tls"),
                         "/etc/m.toml: pop3.listen_tls: cannot use systemd:domain=INET6:name=nosuch: systemd "
                         "passed no socket named 'nosuch' (is the server started by its socket unit?)")

    def test_socket_problem(self):
        """
        L{systemd_socket_problem} checks the index or name against the
        sockets passed, and has nothing to say about other endpoints.
        """
        fds = ListenFDs([3, 4], ("smtp", "pop3"))
        self.assertIsNone(systemd_socket_problem("systemd:domain=INET:index=1", fds))
        self.assertIsNone(systemd_socket_problem("systemd:domain=INET:name=pop3", fds))
        self.assertIsNone(systemd_socket_problem("tcp:25", fds))
        self.assertEqual(systemd_socket_problem("systemd:domain=INET:index=2", fds),
                         "systemd passed no socket with index 2 (is the server started by its socket unit?)")
        self.assertEqual(systemd_socket_problem("systemd:domain=INET:name=imap", fds),
                         "systemd passed no socket named 'imap' (is the server started by its socket unit?)")


class ValidateTests(SynchronousTestCase):
    def config(self, listen="tcp:2525:interface=127.0.0.1", data_dir=None):
        path = FilePath(self.mktemp())
        path.makedirs()
        data = f'data_dir = "{data_dir}"\n' if data_dir else ""
        path.child("m.toml").setContent(
            f'[server]\nhostname = "a.test"\n{data}[smtp]\nlisten = ["{listen}"]\n'.encode())
        return load_config(path.child("m.toml").path)

    def test_data_folder_not_created(self):
        """
        C{check} tells whether the data folder can be created, and creates
        nothing.
        """
        config = self.config()
        validate(config, ListenFDs([], ()))
        self.assertFalse(FilePath(config.server.data_dir).exists())

    def test_data_folder_under_a_file(self):
        """
        A data folder that start-up could not create (a file where a folder
        must be) is refused by C{check} as by start-up.
        """
        blocker = FilePath(self.mktemp())
        blocker.setContent(b"")
        config = self.config(data_dir=blocker.child("data").path)
        with self.assertRaises(StartupError) as cm:
            validate(config, ListenFDs([], ()))
        self.assertEqual(str(cm.exception),
                         f"data folder {config.server.data_dir}: cannot create: {blocker.path} is not a folder")

    def test_data_folder_is_a_file(self):
        blocker = FilePath(self.mktemp())
        blocker.setContent(b"")
        config = self.config(data_dir=blocker.path)
        with self.assertRaises(StartupError) as cm:
            validate(config, ListenFDs([], ()))
        self.assertEqual(str(cm.exception),
                         f"data folder {blocker.path}: cannot create: File exists and is not a folder")

    def test_data_folder_not_writable(self):
        """
        A data folder whose nearest existing parent this user cannot write
        is refused (as start-up would).
        """
        parent = FilePath(self.mktemp())
        parent.makedirs()
        config = self.config(data_dir=parent.child("data").path)
        self.patch(service_module.os, "access", lambda path, mode: path != parent.path)
        with self.assertRaises(StartupError) as cm:
            validate(config, ListenFDs([], ()))
        self.assertEqual(str(cm.exception), f"data folder {config.server.data_dir}: cannot create: "
                                            f"{parent.path} is not writable by this user")

    def test_systemd_socket_checked_when_passed(self):
        """
        When systemd passed sockets to this process, C{check} reports a
        missing one as start-up does.
        """
        config = self.config("systemd:domain=INET:index=1")
        with self.assertRaises(StartupError) as cm:
            validate(config, ListenFDs([3], ("smtp",)))
        self.assertEqual(str(cm.exception),
                         f"{config.path}: smtp.listen: cannot use systemd:domain=INET:index=1: systemd passed no "
                         "socket with index 1 (is the server started by its socket unit?)")
        facts = validate(self.config("systemd:domain=INET:index=0"), ListenFDs([3], ("smtp",)))
        self.assertEqual(facts["systemd_unchecked"], [])

    def test_systemd_socket_unchecked_when_none_passed(self):
        """
        With no socket passed (C{check} run from a shell), whether the
        server will get it cannot be told: it is listed as unchecked.
        """
        facts = validate(self.config("systemd:domain=INET:index=0"), ListenFDs([], ()))
        self.assertEqual(facts["systemd_unchecked"], ["systemd:domain=INET:index=0"])
        facts = validate(self.config("tcp:2525:interface=127.0.0.1"), ListenFDs([], ()))
        self.assertEqual(facts["systemd_unchecked"], [])


class FakeSignalReactor:
    """
    System event triggers and callFromThread, run at once.
    """

    def __init__(self):
        self.triggers = []

    def addSystemEventTrigger(self, phase, event, f, *args):
        self.triggers.append((phase, event, f))

    def callFromThread(self, f, *args):
        f(*args)

    def callWhenRunning(self, f, *args):
        self.triggers.append(("after", "startup", f))

    def fire(self, phase, event):
        for p, e, f in self.triggers:
            if (p, e) == (phase, event):
                f()


class StopSignalGuardTests(SynchronousTestCase):
    """
    L{StopSignalGuard}: a second SIGTERM or SIGINT during the shutdown no
    longer reaches the reactor's handler (whose C{reactor.stop()} raised
    C{ReactorNotRunning}, logged as critical with a traceback).
    """

    def setUp(self):
        self.stops = []
        self.handlers = {signal.SIGTERM: self.reactor_handler, signal.SIGINT: self.reactor_handler}
        self.reactor = FakeSignalReactor()
        self.guard = StopSignalGuard(self.reactor, getsignal=self.handlers.get, setsignal=self.handlers.__setitem__)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def reactor_handler(self, number, frame):
        self.stops.append(number)

    def lines(self):
        return [formatEvent(e) for e in self.events if "event=shutdown" in formatEvent(e)]

    def start(self):
        self.guard.startService()
        # The reactor installs its handlers as it starts running, after
        # twistd has started the services.
        self.assertEqual(self.handlers[signal.SIGTERM], self.reactor_handler)
        self.reactor.fire("after", "startup")

    def test_first_signal_passed_on(self):
        self.start()
        self.assertNotEqual(self.handlers[signal.SIGTERM], self.reactor_handler)
        self.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual((self.stops, self.lines()), ([signal.SIGTERM], []))

    def test_later_signals_ignored(self):
        """
        Later signals (SIGTERM or SIGINT) are ignored; the first ignored
        one is logged once, at info.
        """
        self.start()
        self.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.reactor.fire("before", "shutdown")
        self.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.handlers[signal.SIGINT](signal.SIGINT, None)
        self.assertEqual(self.stops, [signal.SIGTERM])
        self.assertEqual(self.lines(), ['event=shutdown signal=SIGTERM status=ignored reason="already shutting down"'])
        self.assertEqual([e["log_level"].name for e in self.events], ["info"])

    def test_shutdown_begun_otherwise(self):
        """
        Once the shutdown has begun without a signal (reactor.stop()), a
        signal is ignored too: the reactor is already stopping.
        """
        self.start()
        self.reactor.fire("before", "shutdown")
        self.handlers[signal.SIGINT](signal.SIGINT, None)
        self.assertEqual(self.stops, [])
        self.assertEqual(self.lines(), ['event=shutdown signal=SIGINT status=ignored reason="already shutting down"'])

    def test_nothing_to_guard(self):
        """
        Without the reactor's handlers (the default action, Python's
        KeyboardInterrupt), nothing is changed.
        """
        self.handlers[signal.SIGTERM] = signal.SIG_DFL
        self.handlers[signal.SIGINT] = signal.default_int_handler
        self.guard.startService()
        self.reactor.fire("after", "startup")
        self.assertEqual(self.handlers, {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler})


class ReloaderTests(SynchronousTestCase):
    def test_failing_plugin_reload_logged_once(self):
        """
        A reloadable (a resolver plug-in's table) whose reload fails is
        logged once, with its traceback, while it keeps failing, and its
        recovery once; the others are reloaded as usual.
        """
        from twisted.internet.defer import fail, succeed

        from mailappliance.service import Reloader

        class Table:
            name = "csv"
            broken = True

            def reload_if_changed(self):
                return fail(FileNotFoundError("table.csv")) if self.broken else succeed(None)

            reload = reload_if_changed

        class Fine:
            name = "users"
            calls = 0

            def reload_if_changed(self):
                self.calls += 1
                return succeed(None)

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        table, fine = Table(), Fine()
        reloader = Reloader(MemoryReactor(), [table, fine], SynchronousDiskPool())
        for _ in range(3):
            self.successResultOf(reloader.poll())
        self.assertEqual(fine.calls, 3)
        table.broken = False
        self.successResultOf(reloader.poll())
        lines = [formatEvent(e) for e in events if "reload-csv" in formatEvent(e)]
        self.assertEqual(lines, ["event=error what=reload-csv status=failing",
                                 "event=recovered what=reload-csv failures=3"])
        self.assertEqual(len(self.flushLoggedErrors(FileNotFoundError)), 1)
