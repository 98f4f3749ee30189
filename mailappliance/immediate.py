# -*- test-case-name: tests.test_immediate -*-
"""
Writing a reply to a TCP connection at once, when nothing is waiting to be
sent before it.

C{transport.write()} only buffers: the bytes go out when the reactor next
finds the socket writable, which costs a change of the socket's epoll
registration, another trip through the reactor loop and a change back.
For a request/reply protocol whose client waits for each reply (POP3
RETR after RETR, SMTP command after command) that is a delay on every
round trip, and it measured as about a tenth of the time of a POP3
download of 2,000 small messages. L{write_now} sends straight from the
socket when the connection's send buffer is empty (so the order of bytes
cannot change), and leaves to C{write()} whatever the kernel does not take.

It looks at a plain Twisted TCP connection's send buffer, which is not
public API; on any other transport (TLS, test fakes), or if those
attributes ever change, it simply calls C{write()}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it from the socket right away
    when nothing else is waiting to be sent.

    @param transport: the connection's transport.
    @param data: the bytes.
    """
    if (
        data
        and isinstance(transport, tcp.Connection)
        and getattr(transport, "connected", False)
        and not getattr(transport, "disconnecting", True)
        and not getattr(transport, "TLS", True)
        and not getattr(transport, "dataBuffer", True)
        and not getattr(transport, "_tempDataBuffer", True)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent >= len(data):
                return
            data = data[sent:]
        # Anything else (an error, the kernel's buffer full): write()
        # queues the rest, and the reactor reports an error as usual.
    transport.write(data)
