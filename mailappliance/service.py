# -*- test-case-name: tests.test_service -*-
"""
C{make_service(config, reactor)}: the one service tree of the appliance.

Start-up order (children of the L{MultiService} start in this order and
stop in reverse):

  1. the disk thread pool, and the guard that makes a second SIGTERM or
     SIGINT during the shutdown harmless (L{StopSignalGuard});
  2. the queue manager (recovers the spool: whatever a previous run left is
     resumed before any new mail is accepted);
  3. the reloader (users and aliases files polled every second; SIGHUP
     reloads them and the TLS certificate at once);
  4. the queue watcher (every second: admin commands in C{queue/control/},
     sendmail drops in C{queue/incoming/});
  5. the listeners of every configured service.

The server holds C{queue/server.lock} while it runs: a second server on the
same data folder refuses to start, and the CLI knows a server is running.

Everything that can be wrong with the configuration or the data folder is
found here, before the reactor runs, and reported as one L{StartupError}
line (the plug-in turns it into exit status 1). L{validate} runs the same
checks for C{mailappliance check}.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.logger import Logger

from mailappliance.config.model import Config
from mailappliance.episodes import FailureEpisodes
from mailappliance.logtext import quote, value

RELOAD_INTERVAL = 1.0
# SIGTERM: how long SMTP transactions in flight may take to finish.
SHUTDOWN_GRACE = 10.0

log = Logger(namespace="mailappliance")


class StartupError(Exception):
    """
    The appliance cannot start; the message is one line.
    """


@dataclass
class Accounts:
    """
    The address and login machinery built from C{[accounts]}.
    """

    users: Any
    resolvers: list
    chain: Any
    reloadables: list = field(default_factory=list)


def prepare_data_dir(config: Config) -> None:
    """
    Create the data folder, its C{mail/} folder and the queue's folders, and
    make sure they are writable (blocking; runs before the reactor), so that
    the CLI (sendmail drops, queue commands) can rely on them once a server
    has started.

    @raise StartupError: if it cannot.
    """
    from mailappliance.disk import ensure_directory

    for path in _data_folders(config):
        try:
            ensure_directory(path)
        except OSError as e:
            raise StartupError(f"data folder {path}: cannot create: {e.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise StartupError(f"data folder {path}: not writable by this user")


def _data_folders(config: Config) -> list[str]:
    queue_folders = [os.path.join(config.queue_dir, name) for name in ("tmp", "messages", "corrupt", "incoming",
                                                                       "control")]
    return [config.server.data_dir, config.queue_dir, config.mail_dir, *queue_folders]


def check_data_dir(config: Config) -> None:
    """
    What L{prepare_data_dir} would find, without creating anything (for
    C{mailappliance check}): each folder must be a writable folder, or be
    creatable in the nearest folder above it that exists.

    @raise StartupError: as L{prepare_data_dir} would.
    """
    for path in _data_folders(config):
        existing = path
        while not os.path.lexists(existing):
            parent = os.path.dirname(existing)
            if parent == existing:
                break
            existing = parent
        if existing == path:
            if not os.path.isdir(path):
                raise StartupError(f"data folder {path}: cannot create: File exists and is not a folder")
        elif not os.path.isdir(existing):
            raise StartupError(f"data folder {path}: cannot create: {existing} is not a folder")
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise StartupError(f"data folder {path}: cannot create: {existing} is on a read-only file system")
        if not os.access(existing, os.W_OK | os.X_OK):
            if existing == path:
                raise StartupError(f"data folder {path}: not writable by this user")
            raise StartupError(f"data folder {path}: cannot create: {existing} is not writable by this user")


def load_accounts(config: Config, reactor: Any, disk: Any) -> Accounts:
    """
    Load the users file and build the resolvers and the chain.

    @raise StartupError: for a bad users or aliases file or resolver name.
    """
    from mailappliance.accounts.users import UsersDatabase, UsersFileError
    from mailappliance.interfaces import ResolverContext
    from mailappliance.resolve.aliasfile import AliasesFileError
    from mailappliance.resolve.chain import ResolverChain
    from mailappliance.resolve.plugins import (
        ResolverPluginError,
        load_resolvers,
        reloadables_of,
    )

    users = UsersDatabase(config.accounts.users_file, disk)
    try:
        users.load()
    except UsersFileError as e:
        raise StartupError(str(e)) from None
    context = ResolverContext(config=config, accounts=users, reactor=reactor, disk=disk)
    try:
        resolvers = load_resolvers(list(config.accounts.resolvers), context)
    except (AliasesFileError, ResolverPluginError) as e:
        raise StartupError(f"{config.path or 'configuration'}: accounts.resolvers: {e}"
                           if isinstance(e, ResolverPluginError) else str(e)) from None
    chain = ResolverChain(resolvers, config.server.local_domains, clock=reactor)
    return Accounts(users, resolvers, chain, [users, *reloadables_of(resolvers)])


def load_tls(config: Config):
    """
    @return: the L{mailappliance.tls.ServerTLS} for C{[tls]}, or L{None}.
    @raise StartupError: if the certificate or key cannot be used.
    """
    if config.tls is None:
        return None
    from mailappliance.tls import ServerTLS, TLSConfigError

    try:
        return ServerTLS.from_files(config.tls.certificate, config.tls.key, hostname=config.server.hostname)
    except TLSConfigError as e:
        raise StartupError(f"{config.path or 'configuration'}: tls: {e}") from None


def _systemd_socket(description: str) -> tuple[str | None, str | None] | None:
    """
    @return: the C{(index, name)} a C{systemd:} endpoint asks for, or
        L{None} for other endpoints.
    """
    try:
        args, kwargs = endpoints._parse(description)  # type: ignore[attr-defined]
    except ValueError:
        return None
    if not args or str(args[0]).lower() != "systemd":
        return None
    return kwargs.get("index"), kwargs.get("name")


def _missing_systemd_socket(index: str | None, name: str | None) -> str:
    what = f"with index {index}" if index is not None else f"named {name!r}"
    return f"systemd passed no socket {what} (is the server started by its socket unit?)"


def systemd_socket_problem(description: str, fds: Any) -> str | None:
    """
    Whether systemd passed this process the socket that a C{systemd:}
    endpoint names (by C{index=} or C{name=}). Twisted's parser opens it
    at once, and fails with an C{IndexError} or C{KeyError} when it is
    missing.

    @param fds: a L{twisted.python.systemd.ListenFDs}.
    @return: what is wrong, or L{None} when the socket is there or the
        endpoint is not a C{systemd:} one.
    """
    socket = _systemd_socket(description)
    if socket is None:
        return None
    index, name = socket
    if index is not None and int(index) < len(fds.inheritedDescriptors()):
        return None
    if index is None and name in fds.inheritedNamedDescriptors():
        return None
    return _missing_systemd_socket(index, name)


def listener_error(source: str | None, key: str, description: str, reason: str) -> str:
    """
    The one-line start-up error for an endpoint that cannot be used, naming
    the configuration file, the key and the endpoint (SPEC section 1).
    """
    return f"{source or 'configuration'}: {key}: cannot use {description}: {reason}"


def validate(config: Config, systemd_fds: Any = None) -> dict:
    """
    Run the start-up checks that need no reactor and no listening sockets
    (for C{mailappliance check}).

    C{systemd:} listeners are checked against the sockets systemd passed
    to this process, when it passed any; when it passed none (C{check}
    run from a shell, as usual), whether the server will get them cannot
    be told here, and they are listed as unchecked.

    @param systemd_fds: a L{twisted.python.systemd.ListenFDs}; by default
        this process's.
    @return: facts for the summary (C{users}, C{aliases}; C{missing}, the
        users or aliases files named that do not exist;
        C{systemd_unchecked}, the C{systemd:} listeners not checked;
        C{tls_warnings}, what is wrong with a certificate that can still
        be served).
    @raise StartupError: as start-up would.
    """
    from twisted.python.systemd import ListenFDs

    from mailappliance.disk import SynchronousDiskPool

    check_data_dir(config)
    accounts = load_accounts(config, None, SynchronousDiskPool())
    tls = load_tls(config)
    fds = ListenFDs.fromEnvironment() if systemd_fds is None else systemd_fds
    unchecked = []
    for service, key_name, description in config.listeners():
        key = f"{service}.{key_name}"
        if not fds.inheritedDescriptors():
            if _systemd_socket(description) is not None:
                unchecked.append(description)
            continue
        problem = systemd_socket_problem(description, fds)
        if problem is not None:
            raise StartupError(listener_error(config.path, key, description, problem))
    aliases = sum(len(getattr(r, "table", ())) for r in accounts.resolvers if getattr(r, "name", "") == "aliases")
    named = (config.accounts.users_file, config.accounts.aliases_file)
    missing = [path for path in named if path and not os.path.exists(path)]
    from mailappliance.tls import certificate_warnings

    tls_warnings = certificate_warnings(tls.certificate_path, config.server.hostname) if tls is not None else []
    return {"users": len(accounts.users.addresses()), "aliases": aliases, "missing": missing,
            "systemd_unchecked": unchecked, "tls_warnings": tls_warnings}


class Reloader(Service):
    """
    Polls the users and aliases files and reloads them when they change;
    SIGHUP reloads them and the TLS certificate at once.
    """

    name = "reloader"

    def __init__(self, reactor: Any, reloadables: list, disk: Any, tls: Any = None,
                 interval: float = RELOAD_INTERVAL, reconfigure: Any = None) -> None:
        self.reactor = reactor
        self.disk = disk
        self.reloadables = reloadables
        self.tls = tls
        self.reconfigure = reconfigure
        self.timer = TimerService(interval, self.poll)
        self.timer.clock = reactor
        self._previous_handler = None
        # A reloadable that keeps failing (a plug-in whose table went
        # away) is logged once per episode, not at every poll.
        self._episodes = FailureEpisodes(log)

    def poll(self):
        return DeferredList([self._reload(r, "reload_if_changed") for r in self.reloadables], consumeErrors=True)

    def reload_all(self):
        log.info("event=reload reason=SIGHUP")
        if self.reconfigure is not None:
            d = self.reconfigure()
            d.addErrback(lambda f: log.failure("event=reload what=configuration status=error", f))
        work = [self._reload(r, "reload") for r in self.reloadables]
        if self.tls is not None:
            work.append(self.tls.reload_in(self.disk))
        return DeferredList(work, consumeErrors=True)

    def _reload(self, reloadable: Any, method: str) -> Deferred:
        # The built-in files log their own problems and never fail; what a
        # plug-in's reload raises is logged here (the old table stays).
        kind = value(f"reload-{getattr(reloadable, 'name', type(reloadable).__name__)}")
        d = maybeDeferred(getattr(reloadable, method))
        d.addCallbacks(lambda result: self._episodes.succeeded(kind) or result,
                       lambda f: self._episodes.failed(kind, f))
        return d

    def privilegedStartService(self) -> None:
        # Before the listeners bind (they come later in the tree): once a
        # port answers, a SIGHUP must reload, never kill (its default).
        super().privilegedStartService()
        if hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(
                signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload_all)
            )

    def startService(self) -> None:
        super().startService()
        self.timer.startService()

    def stopService(self):
        super().stopService()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return self.timer.stopService()


class Listener(Service):
    """
    One listening endpoint. Listens in C{privilegedStartService} (before
    twistd drops privileges) and fails start-up with a one-line
    L{StartupError} if the endpoint cannot be made (a C{systemd:} socket
    that systemd did not pass) or the port cannot be bound.
    """

    def __init__(self, reactor: Any, service_name: str, description: str, factory: Any,
                 key: str | None = None, source: str | None = None) -> None:
        """
        @param key: the configuration key that names the endpoint
            (C{"smtp.listen"}), for errors.
        @param source: the configuration file, for errors.
        """
        self.reactor = reactor
        self.service_name = service_name
        self.description = description
        self.factory = factory
        self.key = key or f"{service_name}.listen"
        self.source = source
        self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.description)
        except Exception as e:
            # Not a traceback (SPEC section 1): the configuration names an
            # endpoint that cannot be had here, typically a systemd socket
            # that was not passed (Twisted's parser opens it at once and
            # fails with an IndexError or KeyError).
            socket = _systemd_socket(self.description)
            if isinstance(e, (IndexError, KeyError)) and socket is not None:
                reason = _missing_systemd_socket(*socket)
            else:
                reason = str(e) or type(e).__name__
            raise StartupError(listener_error(self.source, self.key, self.description, reason)) from None
        d = endpoint.listen(self.factory)
        failures = []
        d.addCallbacks(self._listening, failures.append)
        if failures:
            reason = failures[0].getErrorMessage()
            raise StartupError(f"{self.service_name}: cannot listen on {self.description}: {reason}")

    def _listening(self, port):
        self.port = port
        log.info("service={service} listen={listen}", service=self.service_name, listen=self.description)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


class Drainer(Service):
    """
    On stop, lets the SMTP sessions finish the transactions in flight, for
    at most C{grace} seconds (L{mailappliance.smtp.factory.SMTPFactory.drain}).
    """

    def __init__(self, factories: list, grace: float) -> None:
        self.factories = factories
        self.grace = grace

    def stopService(self):
        super().stopService()
        busy = sum(1 for f in self.factories for s in f.sessions if s.busy)
        log.info("event=shutdown status=draining sessions={n} busy={busy} grace={grace:g}",
                 n=sum(len(f.sessions) for f in self.factories), busy=busy, grace=self.grace)
        return DeferredList([f.drain(self.grace) for f in self.factories])


class StopSignalGuard(Service):
    """
    Makes a repeated SIGTERM or SIGINT harmless while the server shuts
    down.

    The reactor's handlers, installed when it starts running, call
    C{reactor.stop()} for every such signal; once the reactor is stopping,
    C{stop()} raises C{ReactorNotRunning}, which Twisted logs as a critical
    error with a traceback (a second Ctrl-C, or C{timeout(1)}, which
    signals the process and its group, during the drain of
    L{SHUTDOWN_GRACE} seconds). When the reactor runs, this service puts
    itself in front of those handlers: the first signal goes to the
    reactor's handler as before (twistd still exits by that signal); a
    signal once the shutdown has begun, however it began, is ignored, and
    the first one so ignored is logged at info. The drain in progress is
    not cut short (a SIGKILL is the way to do that).

    @param signals: the signal numbers to guard.
    @param getsignal: L{signal.getsignal}, or a fake.
    @param setsignal: L{signal.signal}, or a fake.
    """

    name = "stop-signals"

    def __init__(self, reactor: Any, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
                 getsignal: Any = signal.getsignal, setsignal: Any = signal.signal) -> None:
        self.reactor = reactor
        self.signals = signals
        self._getsignal = getsignal
        self._setsignal = setsignal
        self._handlers: dict[int, Any] = {}
        self._stopping = False
        self._told = False

    def startService(self) -> None:
        super().startService()
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
        # twistd starts the services before the reactor runs, and the
        # reactor installs its handlers as it starts running.
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for number in self.signals:
            handler = self._getsignal(number)
            # Python's own SIGINT handler (KeyboardInterrupt) or none at
            # all: the reactor installed nothing to guard.
            if callable(handler) and handler is not signal.default_int_handler:
                self._handlers[number] = handler
                self._setsignal(number, self._received)

    def _shutting_down(self) -> None:
        self._stopping = True

    def _received(self, number: int, frame: Any) -> None:
        if not self._stopping:
            self._stopping = True
            self._handlers[number](number, frame)
            return
        if not self._told:
            self._told = True
            self.reactor.callFromThread(self._log_ignored, number)

    def _log_ignored(self, number: int) -> None:
        log.info('event=shutdown signal={signal} status=ignored reason="already shutting down"',
                 signal=signal.Signals(number).name)


class StartupErrorExit(MultiService):
    """
    The root service. It turns a L{StartupError} raised while listening
    into a one-line message and exit status 1 (twistd would print a
    traceback), and it stops its children one after the other, in reverse
    order, each after the previous one has finished: listeners first (no
    new sessions), then the drain of sessions in flight, then the queue,
    and the disk pool last, when nothing needs it any more.

    @ivar daemon: whether twistd runs without C{-n}. Listening happens
        after twistd has made the process a daemon, whose standard error
        goes nowhere; twistd's parent process waits for word from the
        daemon, which it gets only for an L{Exception} (for C{SystemExit}
        it waited for ever), so the L{StartupError} is passed on as it
        is: the parent prints its message and exits 1, and twistd removes
        the pid file.
    """

    daemon = False

    @inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield maybeDeferred(service.stopService)
            except Exception:
                log.failure("event=shutdown status=error service={name}", name=getattr(service, "name", None))
        log.info("event=shutdown status=done")

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            if self.daemon:
                raise
            import sys

            sys.stderr.write(f"mailappliance: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1)


def make_service(config: Config, reactor: Any) -> MultiService:
    """
    Build the whole appliance.

    @raise StartupError: for anything that prevents start-up.
    """
    from mailappliance.disk import DirectorySyncer, DiskPool
    from mailappliance.maildir import MaildirDelivery
    from mailappliance.queue.bounce import Notifier
    from mailappliance.queue.control import ControlFolder, ServerLock
    from mailappliance.queue.incoming import DropFolder
    from mailappliance.queue.inject import inject
    from mailappliance.queue.manager import QueueManager
    from mailappliance.queue.spool import Spool
    from mailappliance.status import StatusWriter

    prepare_data_dir(config)
    lock = ServerLock(config.queue_dir)
    if not lock.acquire():
        raise StartupError(f"data folder {config.server.data_dir}: another mailappliance server is using it")
    root = StartupErrorExit()
    disk = DiskPool(reactor)
    disk.setServiceParent(root)
    StopSignalGuard(reactor).setServiceParent(root)
    accounts = load_accounts(config, reactor, disk)
    from mailappliance.accounts.verifier import PasswordChecks

    # Password hashes are verified apart from the disk work, a few at a
    # time (mailappliance.accounts.verifier).
    password_checks = PasswordChecks.in_own_threads(reactor)
    password_checks.pool.setServiceParent(root)
    accounts.users.password_checks = password_checks
    tls = load_tls(config)

    syncer = DirectorySyncer(disk)
    spool = Spool(config.queue_dir, disk, syncer, reactor)
    delivery = MaildirDelivery(config.mail_dir, config.server.hostname, disk, syncer)
    notifier = Notifier(spool, accounts.chain, disk, reactor, config.server.hostname, config.server.postmaster,
                        delay_warning_after=config.relay.delay_warning_after,
                        max_queue_lifetime=config.relay.max_queue_lifetime)
    relay = make_relay(config, reactor, disk)
    manager = QueueManager(spool, delivery, reactor, notifier=notifier, remote_delivery=relay, retry=relay.retry)
    manager.setServiceParent(root)
    reloader = Reloader(reactor, accounts.reloadables, disk, tls)
    reloader.setServiceParent(root)

    def import_drop(drop):
        return inject(spool, accounts.chain, reactor, hostname=config.server.hostname, sender=drop.sender,
                      recipients=list(drop.recipients), data=drop.message, via=f"sendmail uid {drop.uid}",
                      eight_bit=not drop.message.isascii(), bounce_refused=True)

    drops = DropFolder(os.path.join(config.queue_dir, "incoming"), os.path.join(config.queue_dir, "corrupt"),
                       disk, import_drop)
    control = ControlFolder(config.queue_dir, manager, disk)
    watcher = TimerService(RELOAD_INTERVAL, lambda: DeferredList([control.poll(), drops.poll()]))
    watcher.clock = reactor
    watcher.setName("queue-watcher")
    watcher.setServiceParent(root)

    factories: dict[str, Any] = {}
    drainer = Drainer([], SHUTDOWN_GRACE)
    drainer.setServiceParent(root)

    def listen(service_name: str, section: Any, factory: Any) -> None:
        factories[service_name] = factory
        for description in section.listen:
            Listener(reactor, service_name, description, factory, key=f"{service_name}.listen",
                     source=config.path).setServiceParent(root)
        if section.listen_tls:
            from mailappliance.tls import wrap_implicit_tls

            wrapped = wrap_implicit_tls(factory, tls)
            for description in section.listen_tls:
                Listener(reactor, service_name + "+tls", description, wrapped, key=f"{service_name}.listen_tls",
                         source=config.path).setServiceParent(root)

    if config.smtp is not None:
        listen("smtp", config.smtp, _smtp_factory(config, "smtp", accounts, spool, reactor, tls))
    if config.submission is not None:
        listen("submission", config.submission, _smtp_factory(config, "submission", accounts, spool, reactor, tls))
    if config.pop3 is not None:
        listen("pop3", config.pop3, _pop3_factory(config, accounts, disk, reactor, tls))
    drainer.factories = [f for name, f in factories.items() if name in ("smtp", "submission")]
    from mailappliance.freespace import FreeSpaceMonitor

    # The queue can take any message, when a Maildir cannot (it is then
    # delivered later): its file system is the one that must have room.
    space = FreeSpaceMonitor([config.queue_dir], disk, reactor)
    space.setServiceParent(root)
    for factory in drainer.factories:
        factory.space = space
    live = LiveConfiguration(config, factories, relay, notifier, disk, manager)
    reloader.reconfigure = live.reload
    sessions = {name: (lambda f=factory: _session_count(f)) for name, factory in factories.items()}
    StatusWriter(config.queue_dir, reactor, disk, sessions, manager.summary).setServiceParent(root)
    return root


class LiveConfiguration:
    """
    SIGHUP re-reads the configuration file. The safe parts (limits,
    time-outs, trusted networks, retry schedule) take effect at once, for
    new sessions and deliveries; everything else needs a restart. The log
    says which is which, one line per changed key. A file with a mistake
    is refused with its one-line error and the running configuration stays.
    """

    SAFE = {
        "smtp": {"max_message_size", "max_recipients", "trusted_networks", "idle_timeout", "max_connections",
                 "max_connections_per_ip"},
        "pop3": {"idle_timeout"},
        "relay": {"retry_initial", "retry_max", "max_queue_lifetime", "delay_warning_after", "connect_timeout"},
    }

    def __init__(self, config: Config, factories: dict, relay: Any, notifier: Any, disk: Any,
                 manager: Any = None) -> None:
        self.config = config
        self.factories = factories
        self.relay = relay
        self.manager = manager
        self.notifier = notifier
        self.disk = disk

    def reload(self) -> Deferred:
        """
        Read the file (in the disk pool) and apply what is safe.

        @return: a L{Deferred} firing with the changed keys, each with
            whether it was applied.
        """
        from mailappliance.config.load import load_config
        from mailappliance.config.model import ConfigError

        def refused(failure: Any) -> list:
            failure.trap(ConfigError)
            log.error("event=reload what=configuration status=refused reason={reason}", reason=quote(str(failure.value)))
            return []

        d = self.disk.run(load_config, self.config.path)
        d.addCallback(self._loaded)
        return d.addErrback(refused)

    def _loaded(self, new: Config) -> list[tuple[str, bool]]:
        changes = config_changes(self.config, new)
        restart = [key for key, safe in changes if not safe]
        if restart:
            # Nothing is half applied: a change that needs a restart keeps
            # the whole running configuration.
            for key in restart:
                log.warn("event=reload what=configuration key={key} status=needs-restart", key=key)
            log.warn("event=reload what=configuration status=not-applied reason=\"restart to apply\"")
            return [(key, False) for key, _ in changes]
        for key, _ in changes:
            log.info("event=reload what=configuration key={key} status=applied", key=key)
        if changes:
            self.apply(new)
        else:
            log.info("event=reload what=configuration status=unchanged")
        return changes

    def apply(self, new: Config) -> None:
        import dataclasses

        self.config = new
        for name, factory in self.factories.items():
            if name in ("smtp", "submission"):
                factory.settings = smtp_settings(new, name)
                factory.connections.set_limits(new.limits.max_connections, new.limits.max_connections_per_ip)
            elif name == "pop3" and new.pop3 is not None:
                factory.settings = pop3_settings(new)
        r = new.relay
        from mailappliance.queue.relay import RetryPolicy

        self.relay.retry = RetryPolicy(r.retry_initial, r.retry_max, r.max_queue_lifetime)
        if self.manager is not None:
            self.manager.retry = self.relay.retry
        self.relay.options = dataclasses.replace(self.relay.options, connect_timeout=r.connect_timeout)
        self.notifier.delay_warning_after = r.delay_warning_after
        self.notifier.max_queue_lifetime = r.max_queue_lifetime


def config_changes(old: Config, new: Config) -> list[tuple[str, bool]]:
    """
    The keys whose values differ, as C{("section.key", safe)}; a section
    added or removed counts as its own change (never safe).
    """
    import dataclasses

    changes = []
    for section in ("server", "smtp", "submission", "pop3", "tls", "accounts", "relay"):
        a, b = getattr(old, section), getattr(new, section)
        if (a is None) != (b is None):
            changes.append((f"[{section}]", False))
            continue
        if a is None:
            continue
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                changes.append((f"{section}.{f.name}", f.name in LiveConfiguration.SAFE.get(section, ())))
    return changes


def _session_count(factory: Any) -> int:
    # SMTP factories count with a ConnectionLimiter, POP3 with an int.
    connections = getattr(factory, "connections", 0)
    total = getattr(connections, "total", connections)
    return int(total() if callable(total) else total)


def make_dns_resolver(servers, reactor: Any):
    """
    The resolver for MX and address lookups: C{/etc/hosts} first, then
    exactly the configured servers, or, when none are configured, the
    servers of C{/etc/resolv.conf}. (Twisted's C{createResolver} would add
    the resolv.conf servers to configured ones, sending queries where the
    administrator did not say.) The DNS client is a
    L{mailappliance.queue.dnsclient.QuietResolver}, which does not log
    four lines per query.
    """
    from twisted.names import cache, hosts, resolve

    from mailappliance.queue.dnsclient import QuietResolver

    if servers:
        dns_client = QuietResolver(servers=list(servers), reactor=reactor)
    else:
        # What createResolver builds on POSIX, with the quiet client.
        dns_client = QuietResolver(resolv=b"/etc/resolv.conf", reactor=reactor)
    return resolve.ResolverChain([
        hosts.Resolver(file=b"/etc/hosts"),
        cache.CacheResolver(reactor=reactor),
        dns_client,
    ])


def make_relay(config: Config, reactor: Any, disk: Any):
    """
    The outbound relay from C{[relay]}: MX lookup through twisted.names (on
    C{dns_servers}, else the system's resolver configuration), or the
    smarthost.

    @raise StartupError: if the smarthost password file cannot be read.
    """
    from mailappliance.queue.relay import Relay, RetryPolicy
    from mailappliance.queue.routing import MXRouter, SmarthostRouter
    from mailappliance.smtp.client import ClientOptions

    r = config.relay
    resolver = make_dns_resolver(r.dns_servers, reactor)
    auth = None
    if r.smarthost is not None:
        host, port = r.smarthost
        router = SmarthostRouter(host, port, resolver)
        if r.smarthost_username:
            try:
                with open(r.smarthost_password_file, encoding="utf-8") as f:
                    password = f.readline().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise StartupError(f"relay.smarthost_password_file {r.smarthost_password_file}: "
                                   f"cannot read: {getattr(e, 'strerror', None) or e}") from None
            auth = (r.smarthost_username, password)
        options = ClientOptions(config.server.hostname, tls=r.smarthost_tls, tls_verify=r.smarthost_tls == "required",
                                auth=auth, connect_timeout=r.connect_timeout)
        where = f"smarthost {host}:{port} tls={r.smarthost_tls}"
    else:
        router = MXRouter(resolver, r.mx_port, hostname=config.server.hostname)
        options = ClientOptions(config.server.hostname, tls="opportunistic", connect_timeout=r.connect_timeout)
        dns = ",".join(f"{h}:{p}" for h, p in r.dns_servers) or "system"
        where = f"mx port={r.mx_port} dns={dns}"
    log.info("service=relay route={where}", where=where)
    retry = RetryPolicy(r.retry_initial, r.retry_max, r.max_queue_lifetime)
    return Relay(reactor, router, options, retry, disk, max_concurrent=r.max_concurrent_deliveries,
                 smarthost=r.smarthost is not None)


def _smtp_factory(config: Config, service: str, accounts: Accounts, spool: Any, reactor: Any, tls: Any):
    """
    The factory of one SMTP service. Both services get the certificate
    (STARTTLS wherever C{[tls]} is set) and the accounts' checker; where
    AUTH is offered (submission, over TLS or from a trusted network) is
    the session policy's decision.
    """
    from mailappliance.accounts.checker import AccountsChecker
    from mailappliance.smtp.factory import SMTPFactory

    settings = smtp_settings(config, service)
    return SMTPFactory(settings, accounts.chain, spool, reactor, tls=tls, checker=AccountsChecker(accounts.users))


def smtp_settings(config: Config, service: str):
    """
    The L{SMTPSettings} of one SMTP service from the configuration.
    """
    from mailappliance.smtp.policy import SMTPSettings

    limits = config.limits
    return SMTPSettings(
        hostname=config.server.hostname,
        max_message_size=limits.max_message_size,
        max_recipients=limits.max_recipients,
        idle_timeout=limits.idle_timeout,
        max_connections=limits.max_connections,
        max_connections_per_ip=limits.max_connections_per_ip,
        trusted_networks=config.trusted_networks,
        service=service,
        postmaster=config.server.postmaster,
    )


def pop3_settings(config: Config):
    from mailappliance.pop3.server import POP3Settings

    limits = config.limits
    return POP3Settings(
        idle_timeout=config.pop3.idle_timeout,
        trusted_networks=config.trusted_networks,
        max_connections=limits.max_connections,
        max_connections_per_ip=limits.max_connections_per_ip,
        hostname=config.server.hostname,
    )


def _pop3_factory(config: Config, accounts: Accounts, disk: Any, reactor: Any, tls: Any):
    from mailappliance.accounts.checker import AccountsChecker
    from mailappliance.address import parse_mailbox
    from mailappliance.maildir import maildir_path
    from mailappliance.pop3.server import POP3Factory

    settings = pop3_settings(config)

    def mailbox_path(avatar_id: str) -> str:
        return maildir_path(config.mail_dir, parse_mailbox(avatar_id))

    return POP3Factory(AccountsChecker(accounts.users), mailbox_path, disk, settings, tls=tls, clock=reactor)
