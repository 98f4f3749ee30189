"""
The remote mail host of the relay workload (W5): an SMTP server on
loopback that accepts every message and throws it away.

    python -m bench.sink [--port N]

prints C{READY <port>} once it listens, then C{M <count>} after each
message it has accepted (so the benchmark knows when the last one
arrived). It writes nothing to disk: the product's test sink
(C{python -m mailappliance.testing sink}) fsyncs two files per message and
parses the data line by line, which would make the sink, not the relay,
the thing measured.

It speaks just enough ESMTP for a relay (EHLO with PIPELINING, 8BITMIME,
SMTPUTF8 and SIZE; MAIL, RCPT, DATA, RSET, NOOP, QUIT), reading the data in
bulk (it looks only for the CRLF "." CRLF that ends it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

END_OF_DATA = b"\r\n.\r\n"
MAX_LINE = 4096
MAX_SIZE = 100 * 1024 * 1024

EHLO_REPLY = (
    b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    b"250-SIZE %d\r\n250 ENHANCEDSTATUSCODES\r\n" % MAX_SIZE
)


class SinkProtocol(asyncio.Protocol):
    """
    One session. Counts messages in the shared C{counter}.
    """

    def __init__(self, counter: list[int]) -> None:
        self.counter = counter
        self.buffer = bytearray()
        self.in_data = False
        self.data_fresh = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"220 sink.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies = []
        while True:
            if self.in_data:
                # Right after DATA, the CRLF that ended the command line is
                # the first CRLF of the end marker (an empty body is just
                # "." CRLF): search with it put back in front.
                prefix = b"\r\n" if self.data_fresh else b""
                end = (prefix + self.buffer).find(END_OF_DATA)
                if end < 0:
                    # Keep only what may be the start of the end marker.
                    if len(self.buffer) > 4:
                        del self.buffer[:-4]
                        self.data_fresh = False
                    break
                del self.buffer[: end + len(END_OF_DATA) - len(prefix)]
                self.in_data = False
                self.counter[0] += 1
                sys.stdout.write(f"M {self.counter[0]}\n")
                sys.stdout.flush()
                replies.append(b"250 2.0.0 accepted\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    replies.append(b"500 5.5.0 line too long\r\n")
                    self.buffer.clear()
                break
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            reply = self.command(line)
            if reply is None:
                if replies:
                    self.transport.write(b"".join(replies))
                self.transport.write(b"221 2.0.0 bye\r\n")
                self.transport.close()
                return
            replies.append(reply)
        if replies:
            self.transport.write(b"".join(replies))

    def command(self, line: bytes) -> bytes | None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return EHLO_REPLY
        if verb == b"HELO":
            return b"250 sink.test\r\n"
        if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            return b"250 2.0.0 ok\r\n"
        if verb == b"DATA":
            self.in_data = True
            self.data_fresh = True
            return b"354 go ahead\r\n"
        if verb == b"QUIT":
            return None
        return b"502 5.5.1 not implemented\r\n"


async def serve(port: int) -> None:
    counter = [0]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(counter), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {bound}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--port", type=int, default=0)
    arguments = parser.parse_args(argv)
    try:
        asyncio.run(serve(arguments.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
