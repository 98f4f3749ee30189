# -*- test-case-name: tests.test_smtp_drain,tests.test_smtp_server_flow -*-
"""
The factory of the SMTP sessions (L{mailappliance.smtp.server}): what the
sessions of one service, C{smtp} or C{submission}, share (its settings,
resolver, spool, clock and log, its connection limits, the STARTTLS and
AUTH collaborators, the failed-AUTH tracker, the storage failure
episodes, the set of sessions), and the drain that shuts them down for a
stop.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from mailappliance.episodes import FailureEpisodes
from mailappliance.smtp.auth import AuthFailureTracker
from mailappliance.smtp.policy import ConnectionLimiter, SMTPSettings
from mailappliance.smtp.server import SMTPServerProtocol

# How often a drain looks whether its sessions are gone.
DRAIN_POLL = 0.05

_default_log = Logger(namespace="mailappliance.smtp")


class SMTPFactory(ServerFactory):
    """
    Makes the sessions of one SMTP service and keeps what they share.

    @ivar settings: the service's L{SMTPSettings}.
    @ivar resolver: the L{mailappliance.interfaces.IRecipientResolver}.
    @ivar spool: the L{mailappliance.interfaces.ISpool}.
    @ivar clock: an L{IReactorTime} (time-outs, arrival times).
    @ivar log: the L{Logger} of the sessions.
    @ivar connections: the L{ConnectionLimiter} of the service.
    @ivar tls: the L{IOpenSSLServerConnectionCreator} for STARTTLS, or
        L{None}.
    @ivar checker: the L{ICredentialsChecker} for AUTH, or L{None}.
    @ivar auth_failures: the L{AuthFailureTracker} of the service.
    """

    protocol = SMTPServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        settings: SMTPSettings,
        resolver: object,
        spool: object,
        clock: IReactorTime,
        log: Logger | None = None,
        tls: object = None,
        checker: object = None,
    ) -> None:
        """
        @param settings: the service's L{SMTPSettings}.
        @param resolver: the L{mailappliance.interfaces.IRecipientResolver}.
        @param spool: the L{mailappliance.interfaces.ISpool}.
        @param clock: an L{IReactorTime}.
        @param log: where the sessions log; a module logger by default.
        @param tls: an L{IOpenSSLServerConnectionCreator} (a
            L{mailappliance.tls.ServerTLS}) to offer STARTTLS with, or
            L{None} for no STARTTLS.
        @param checker: an L{ICredentialsChecker} of L{IUsernamePassword}
            whose avatar ids are lower-case addresses (an
            L{mailappliance.accounts.checker.AccountsChecker}), or L{None}
            for no AUTH. Where AUTH is offered is the policy's decision.
        """
        self.settings = settings
        self.resolver = resolver
        self.spool = spool
        self.clock = clock
        self.log = log if log is not None else _default_log
        self.tls = tls
        self.checker = checker
        self.connections = ConnectionLimiter(settings.max_connections, settings.max_connections_per_ip)
        self.auth_failures = AuthFailureTracker(clock)
        self.sessions: set[SMTPServerProtocol] = set()
        self.draining = False
        self.storage = FailureEpisodes(self.log)
        # A mailappliance.freespace.FreeSpaceMonitor, when the service has
        # one: MAIL with a SIZE that cannot fit gets 452 4.3.1.
        self.space: Any = None

    def drain(self, grace: float) -> Deferred:
        """
        Shut the sessions down for a stop (SIGTERM): idle ones get
        C{421 4.3.2} at once; one in the middle of a transaction may finish
        it (its message acknowledged or refused as usual) and is closed
        right after; whatever is left after C{grace} seconds is dropped.

        @return: a L{Deferred} firing when no session is left.
        """
        self.draining = True
        done: Deferred = Deferred()
        if not self.sessions:
            done.callback(None)
            return done
        for session in list(self.sessions):
            session.shut_down()

        def check() -> None:
            if done.called:
                return
            if not self.sessions:
                timer.cancel()
                poll.stop()
                done.callback(None)

        def give_up() -> None:
            for session in list(self.sessions):
                session.abort_session()
            self.sessions.clear()
            if poll.running:
                poll.stop()
            if not done.called:
                done.callback(None)

        from twisted.internet.task import LoopingCall

        poll = LoopingCall(check)
        poll.clock = self.clock
        poll.start(DRAIN_POLL, now=False)
        timer = self.clock.callLater(grace, give_up)
        return done

    def buildProtocol(self, addr: object) -> SMTPServerProtocol:
        """
        @return: a new session; the connection limits are applied when it
            is connected (so that it can say why it refuses).
        """
        return SMTPServerProtocol(self)
