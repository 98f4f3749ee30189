# -*- test-case-name: tests.test_testing -*-
"""
The fake remote SMTP server: L{FakeSMTPPeer}, a server factory that can
accept, defer (4xx) or reject (5xx) each recipient, advertise or not
PIPELINING, SIZE, 8BITMIME, SMTPUTF8, STARTTLS and AUTH, refuse the
greeting, MAIL or DATA, drop the connection or fall silent at a chosen
step, and that records every session in a L{PeerSession}.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from twisted.internet.protocol import Protocol, ServerFactory

DEFAULT_RCPT_REPLY = "250 2.1.5 OK"
REJECT_REPLY = "550 5.1.1 No such user"
DEFER_REPLY = "450 4.2.1 Mailbox busy, try later"

# The steps at which a peer can be told to drop the connection or to stop
# answering: on connecting (before the greeting), on receiving the named
# command, on the first bytes of the message, or after its final dot.
STEPS = ("connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "body", "dot", "quit")


@dataclass
class PeerSession:
    """
    What a L{FakeSMTPPeer} saw in one connection.

    @ivar commands: every command line received, in order (TLS included).
    @ivar arrivals: the command lines grouped by the read that brought them
        (pipelined commands arrive together).
    @ivar helo: the last EHLO/HELO argument.
    @ivar mail_from: the last MAIL FROM address; C{mail_parameters} its
        parameters.
    @ivar rcpt_to: the accepted recipients of the last transaction.
    @ivar messages: each message received, dot-unstuffed, with its final
        CRLF (the one before the dot).
    @ivar tls: whether STARTTLS was done.
    @ivar tls_server_name: the SNI name the client sent, if any.
    @ivar auth_identity: the user name that authenticated, if any.
    """

    commands: list[bytes] = field(default_factory=list)
    arrivals: list[list[bytes]] = field(default_factory=list)
    helo: str | None = None
    mail_from: str | None = None
    mail_parameters: list[str] = field(default_factory=list)
    rcpt_to: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    tls: bool = False
    tls_server_name: str | None = None
    auth_identity: str | None = None


class FakeSMTPPeer(ServerFactory):
    """
    A fake remote SMTP server. Every keyword is also an attribute that may
    be changed between connections.

    @param hostname: its name in the greeting and EHLO reply.
    @param pipelining: advertise PIPELINING (commands are answered in order
        either way).
    @param size: advertise C{SIZE size} and refuse larger C{SIZE=}.
    @param eight_bit_mime: advertise 8BITMIME.
    @param smtputf8: advertise SMTPUTF8.
    @param tls_options: server TLS options (see L{server_tls_options}); when
        given, STARTTLS is advertised.
    @param auth: C{(username, password)}: advertise C{AUTH} with
        C{auth_mechanisms} and check them.
    @param greeting, ehlo_reply, starttls_reply, mail_reply, data_reply,
        final_reply: replies that replace the normal ones (C{ehlo_reply}
        replaces the reply to EHLO only; C{final_reply} is the reply after
        the final dot).
    @param rcpt_replies: lower-case address to the reply to its RCPT;
        others get C{DEFAULT_RCPT_REPLY}.
    @param drop_at: one of L{STEPS}: close the connection there.
    @param hang_at: one of L{STEPS}: stop answering from there on.
    @param after_starttls_reply: bytes written right after the 220 to
        STARTTLS, before TLS (a response injection attack).
    @param on_message: called with the L{PeerSession} and the message
        bytes for each message accepted.
    @ivar sessions: a L{PeerSession} per connection, in order.
    """

    def __init__(
        self,
        hostname: str = "fake.test",
        pipelining: bool = True,
        size: int | None = None,
        eight_bit_mime: bool = True,
        smtputf8: bool = True,
        tls_options=None,
        auth: tuple[str, str] | None = None,
        auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN"),
        greeting: str | None = None,
        ehlo_reply: str | None = None,
        starttls_reply: str = "220 2.0.0 Ready to start TLS",
        mail_reply: str = "250 2.1.0 OK",
        data_reply: str = "354 End data with <CR><LF>.<CR><LF>",
        final_reply: str = "250 2.0.0 OK queued",
        rcpt_replies: dict[str, str] | None = None,
        drop_at: str | None = None,
        hang_at: str | None = None,
        after_starttls_reply: bytes = b"",
        on_message=None,
    ) -> None:
        for step in (drop_at, hang_at):
            if step is not None and step not in STEPS:
                raise ValueError(f"unknown step {step!r}; one of {', '.join(STEPS)}")
        self.hostname = hostname
        self.pipelining = pipelining
        self.size = size
        self.eight_bit_mime = eight_bit_mime
        self.smtputf8 = smtputf8
        self.tls_options = tls_options
        self.auth = auth
        self.auth_mechanisms = auth_mechanisms
        self.greeting = greeting or f"220 {hostname} ESMTP fake"
        self.ehlo_reply = ehlo_reply
        self.starttls_reply = starttls_reply
        self.mail_reply = mail_reply
        self.data_reply = data_reply
        self.final_reply = final_reply
        self.rcpt_replies = dict(rcpt_replies or {})
        self.drop_at = drop_at
        self.hang_at = hang_at
        self.after_starttls_reply = after_starttls_reply
        self.on_message = on_message
        self.sessions: list[PeerSession] = []

    def reject(self, address: str, reply: str = REJECT_REPLY) -> None:
        """
        Refuse C{address} at RCPT with a 5xx reply.
        """
        self.rcpt_replies[address.lower()] = reply

    def defer(self, address: str, reply: str = DEFER_REPLY) -> None:
        """
        Refuse C{address} at RCPT with a 4xx reply.
        """
        self.rcpt_replies[address.lower()] = reply

    def buildProtocol(self, addr) -> FakeSMTPServer:
        """
        @return: a L{FakeSMTPServer} recording into a new L{PeerSession}.
        """
        session = PeerSession()
        self.sessions.append(session)
        return FakeSMTPServer(self, session)

    def ehlo_lines(self, tls: bool) -> list[str]:
        """
        @return: the lines of the 250 reply to EHLO (after the first).
        """
        lines = ["ENHANCEDSTATUSCODES"]
        lines += ["PIPELINING"] if self.pipelining else []
        lines += [f"SIZE {self.size}"] if self.size is not None else []
        lines += ["8BITMIME"] if self.eight_bit_mime else []
        lines += ["SMTPUTF8"] if self.smtputf8 else []
        lines += ["STARTTLS"] if self.tls_options is not None and not tls else []
        lines += ["AUTH " + " ".join(self.auth_mechanisms)] if self.auth else []
        return lines


class FakeSMTPServer(Protocol):
    """
    One connection to a L{FakeSMTPPeer}; see there.
    """

    def __init__(self, peer: FakeSMTPPeer, session: PeerSession) -> None:
        self.peer = peer
        self.session = session
        self._buffer = b""
        self._message: list[bytes] | None = None
        self._sasl = None
        self._silent = False
        # The transaction in progress (the record keeps the last one).
        self._mail_ok = False
        self._accepted: list[str] = []

    def connectionMade(self) -> None:
        if not self._stop_at("connect"):
            self._reply(self.peer.greeting)

    def dataReceived(self, data: bytes) -> None:
        if self._silent:
            return
        lines = (self._buffer + data).split(b"\r\n")
        self._buffer = lines.pop()
        arrival: list[bytes] = []
        for line in lines:
            if self._silent:
                return
            if self._message is not None:
                self._data_line(line)
                continue
            arrival.append(line)
            self.session.commands.append(line)
            if self._command(line):
                # After STARTTLS, plaintext read ahead must not count
                # (RFC 3207 section 4.2): drop it.
                self._buffer = b""
                break
        if arrival:
            self.session.arrivals.append(arrival)

    def _reply(self, *lines: str) -> None:
        self.transport.write(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))

    def _stop_at(self, step: str) -> bool:
        if self.peer.drop_at == step:
            self._silent = True
            self.transport.loseConnection()
            return True
        if self.peer.hang_at == step:
            self._silent = True
            return True
        return False

    def _command(self, line: bytes) -> bool:
        if self._sasl is not None:
            self._sasl(line.decode("utf-8", "replace"))
            return False
        verb, _, rest = line.decode("utf-8", "replace").partition(" ")
        verb = verb.upper()
        step = {"EHLO": "ehlo", "HELO": "ehlo", "MAIL": "mail", "RCPT": "rcpt", "DATA": "data"}.get(verb)
        step = step or verb.lower()
        if step in STEPS and self._stop_at(step):
            return False
        handler = getattr(self, "smtp_" + verb, None)
        if handler is None:
            self._reply("502 5.5.2 Command not recognised")
            return False
        return bool(handler(rest))

    def smtp_EHLO(self, rest: str) -> None:
        self.session.helo = rest
        if self.session.tls:
            name = self.transport.getHandle().get_servername()
            self.session.tls_server_name = name.decode("ascii") if name else None
        if self.peer.ehlo_reply is not None:
            self._reply(self.peer.ehlo_reply)
            return
        lines = [self.peer.hostname] + self.peer.ehlo_lines(self.session.tls)
        self._reply(*[f"250-{line}" for line in lines[:-1]], f"250 {lines[-1]}")

    def smtp_HELO(self, rest: str) -> None:
        self.session.helo = rest
        self._reply(f"250 {self.peer.hostname}")

    def smtp_STARTTLS(self, rest: str) -> bool:
        if self.peer.tls_options is None or self.session.tls:
            self._reply("502 5.5.1 STARTTLS not available")
            return False
        self._reply(self.peer.starttls_reply)
        if not self.peer.starttls_reply.startswith("220"):
            return False
        if self.peer.after_starttls_reply:
            self.transport.write(self.peer.after_starttls_reply)
        self.transport.startTLS(self.peer.tls_options)
        self.session.tls = True
        self._mail_ok, self._accepted = False, []
        return True

    def smtp_AUTH(self, rest: str) -> None:
        mechanism, _, initial = rest.partition(" ")
        mechanism = mechanism.upper()
        if not self.peer.auth or mechanism not in self.peer.auth_mechanisms:
            self._reply("504 5.5.4 Unrecognised authentication type")
        elif mechanism == "PLAIN":
            if initial:
                self._check_plain(initial)
            else:
                self._sasl = self._check_plain
                self._reply("334 ")
        else:
            self._sasl = self._login_user
            self._reply("334 VXNlcm5hbWU6")

    def _check_plain(self, response: str) -> None:
        self._sasl = None
        try:
            _, user, password = base64.b64decode(response, validate=True).decode("utf-8").split("\0")
        except ValueError:
            self._reply("501 5.5.2 Cannot decode response")
            return
        self._check_credentials(user, password)

    def _login_user(self, response: str) -> None:
        user = base64.b64decode(response).decode("utf-8", "replace")
        self._sasl = lambda answer: self._check_credentials(user, base64.b64decode(answer).decode("utf-8", "replace"))
        self._reply("334 UGFzc3dvcmQ6")

    def _check_credentials(self, user: str, password: str) -> None:
        self._sasl = None
        if (user, password) == tuple(self.peer.auth):
            self.session.auth_identity = user
            self._reply("235 2.7.0 Authentication successful")
        else:
            self._reply("535 5.7.8 Authentication credentials invalid")

    def smtp_MAIL(self, rest: str) -> None:
        address, parameters = _split_path(rest[len("FROM:") :])
        self.session.mail_from = address
        self.session.mail_parameters = parameters.split()
        self.session.rcpt_to = self._accepted = []
        for parameter in self.session.mail_parameters:
            name, _, value = parameter.partition("=")
            if name.upper() == "SIZE" and self.peer.size and int(value) > self.peer.size:
                self._reply("552 5.3.4 Message size exceeds fixed maximum message size")
                return
        self._reply(self.peer.mail_reply)
        self._mail_ok = self.peer.mail_reply.startswith("2")

    def smtp_RCPT(self, rest: str) -> None:
        if not self._mail_ok:
            self._reply("503 5.5.1 MAIL first")
            return
        address, _ = _split_path(rest[len("TO:") :])
        reply = self.peer.rcpt_replies.get(address.lower(), DEFAULT_RCPT_REPLY)
        if reply.startswith("2"):
            self._accepted.append(address)
        self._reply(reply)

    def smtp_DATA(self, rest: str) -> None:
        if not self._accepted:
            self._reply("554 5.5.1 No valid recipients")
            return
        self._reply(self.peer.data_reply)
        if self.peer.data_reply.startswith("354"):
            self._message = []

    def smtp_RSET(self, rest: str) -> None:
        self._mail_ok, self._accepted = False, []
        self._reply("250 2.0.0 OK")

    def smtp_NOOP(self, rest: str) -> None:
        self._reply("250 2.0.0 OK")

    def smtp_QUIT(self, rest: str) -> None:
        self._reply("221 2.0.0 Bye")
        self.transport.loseConnection()

    def _data_line(self, line: bytes) -> None:
        if not self._message and self._stop_at("body"):
            return
        if line != b".":
            # RFC 5321 section 4.5.2: remove one leading dot.
            self._message.append(line[1:] if line.startswith(b".") else line)
            return
        message = b"".join(part + b"\r\n" for part in self._message)
        self._message = None
        if self._stop_at("dot"):
            return
        if self.peer.final_reply.startswith("2"):
            self.session.messages.append(message)
            if self.peer.on_message is not None:
                self.peer.on_message(self.session, message)
        self._reply(self.peer.final_reply)
        self._mail_ok, self._accepted = False, []


def _split_path(text: str) -> tuple[str, str]:
    """
    Split C{<address> parameters}: the path ends at the first C{>} outside
    a quoted string, so a quoted local part may hold spaces and brackets
    (C{<"john doe"@remote.test>}, RFC 5321 section 4.1.2).

    @return: the address without its brackets, and the rest.
    """
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            path = text[: index + 1].strip()
            return path[1:-1] if path.startswith("<") else path[:-1], text[index + 1 :].strip()
    path, _, rest = text.partition(" ")
    return path.strip("<>"), rest
