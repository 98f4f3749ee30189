# -*- test-case-name: tests.test_smtp_client_cache -*-
"""
Idle SMTP connections kept for the next message to the same server.

RFC 5321 section 3.3 lets a client send any number of transactions in one
session: after the reply to the end of the data, a new C{MAIL} may follow
(section 4.1.4). Reusing the connection saves the TCP set-up, the greeting,
C{EHLO} (and C{STARTTLS}, C{AUTH}) and C{QUIT} of every message but the
first, which is most of the work of relaying a small message. Postfix does
the same (its connection cache, C{smtp_connection_cache_time_limit}).

A connection is parked here only after a transaction that ended cleanly (a
2xx reply to the end of the data, no reply pending), keyed by what it was
opened for: host name, address, port and whether it was to use TLS. It is
closed (C{QUIT}, without waiting for the reply) when it has been idle for
L{IDLE_TIME_LIMIT} seconds, when it has carried
L{MAX_TRANSACTIONS_PER_CONNECTION} transactions, or when
L{SessionCache.close_all} is called. A connection the server closed while
idle (or that received anything, say a C{421}) is never handed out.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

# Seconds an idle connection waits for the next message (Postfix's
# smtp_connection_cache_time_limit is 2s): short, so that a busy spell's
# connections go away soon after it, well within any server's idle
# time-out (RFC 5321 4.5.3.2.7 gives servers 5 minutes).
IDLE_TIME_LIMIT = 2.0
# Transactions on one connection before it is closed anyway, so that one
# connection does not live for ever (Postfix bounds reuse by time, 300s).
MAX_TRANSACTIONS_PER_CONNECTION = 100


@dataclass(eq=False)
class IdleConnection:
    """
    A connected session that finished a transaction.

    @ivar channel: its L{mailappliance.smtp.client_protocol.SMTPClientChannel}.
    @ivar extensions: what the server announced in its last C{EHLO} reply
        (after C{STARTTLS} if used).
    @ivar address: the peer address actually connected to.
    @ivar tls_protocol: the TLS version, or L{None}.
    @ivar tls_cipher: the TLS cipher, or L{None}.
    @ivar transactions: transactions carried so far.
    """

    channel: Any
    extensions: dict[str, tuple[str, ...]]
    address: str | None = None
    tls_protocol: str | None = None
    tls_cipher: str | None = None
    transactions: int = 1
    timer: Any = field(default=None, repr=False)


def close_politely(channel: Any) -> None:
    """
    Say C{QUIT} and close, without waiting for the reply: nothing depends
    on it (RFC 5321 section 4.1.1.10 asks the client to send QUIT; the
    server's 221 changes nothing for us).
    """
    if channel.idle:
        channel.send(b"QUIT")
    channel.close()


class SessionCache:
    """
    Idle connections by destination.

    @param clock: an L{IReactorTime} for the idle time limit.
    @param idle_time: seconds a connection may stay idle.
    @param max_transactions: transactions after which a connection is
        closed instead of parked.
    """

    def __init__(self, clock: Any, idle_time: float = IDLE_TIME_LIMIT,
                 max_transactions: int = MAX_TRANSACTIONS_PER_CONNECTION) -> None:
        self._clock = clock
        self._idle_time = idle_time
        self._max_transactions = max_transactions
        self._idle: dict[Hashable, list[IdleConnection]] = {}

    def __len__(self) -> int:
        """
        @return: the connections parked.
        """
        return sum(len(connections) for connections in self._idle.values())

    def take(self, key: Hashable) -> IdleConnection | None:
        """
        Take an idle connection for C{key}, the most recently parked one
        first (the least likely to have been closed by the server).

        @return: an L{IdleConnection} whose channel is still connected and
            has received nothing since, or L{None}. Connections found closed
            are dropped.
        """
        connections = self._idle.get(key)
        while connections:
            connection = connections.pop()
            self._cancel_timer(connection)
            if connection.channel.idle:
                if not connections:
                    del self._idle[key]
                return connection
            close_politely(connection.channel)
        self._idle.pop(key, None)
        return None

    def park(self, key: Hashable, connection: IdleConnection) -> None:
        """
        Keep a connection whose transaction just ended cleanly, or close it
        if it has carried enough transactions or cannot be reused.
        """
        if connection.transactions >= self._max_transactions or not connection.channel.idle:
            close_politely(connection.channel)
            return
        connection.timer = self._clock.callLater(self._idle_time, self._expire, key, connection)
        self._idle.setdefault(key, []).append(connection)

    def close_all(self) -> None:
        """
        Close every idle connection (at shut-down).
        """
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                self._cancel_timer(connection)
                close_politely(connection.channel)

    def _expire(self, key: Hashable, connection: IdleConnection) -> None:
        connection.timer = None
        connections = self._idle.get(key, [])
        if connection in connections:
            connections.remove(connection)
            if not connections:
                del self._idle[key]
        close_politely(connection.channel)

    def _cancel_timer(self, connection: IdleConnection) -> None:
        if connection.timer is not None and connection.timer.active():
            connection.timer.cancel()
        connection.timer = None
