# -*- test-case-name: tests.test_smtp_sasl -*-
"""
The SASL side of SMTP AUTH (RFC 4954): decoding the client's base64
responses, and the two mechanisms offered, PLAIN (RFC 4616) and LOGIN
(draft-murchison-sasl-login, what most mail clients still offer).

Everything here is pure: a mechanism is a small state machine that takes
decoded responses and answers either with the next challenge (L{bytes})
or with the L{Credentials} to check. Nothing here sees a password in
anything but L{Credentials}, so nothing here can log one.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

# RFC 4954 section 4: "*" cancels the exchange.
CANCEL = b"*"
# RFC 4954 section 4: "=" as the initial response stands for an empty one.
EMPTY_INITIAL_RESPONSE = b"="

# RFC 4616 section 2: authzid, authcid and passwd are each at most 255
# octets.
MAX_PLAIN_FIELD = 255
# The same bound for the two LOGIN responses.
MAX_LOGIN_FIELD = 255


class SASLCancelled(Exception):
    """
    The client answered a challenge with C{*} (RFC 4954 section 4).
    """


class BadBase64(Exception):
    """
    A response is not strict base64 (RFC 4954 section 4: 501 5.5.2).
    """


class SASLFailure(Exception):
    """
    A mechanism-level failure (malformed message, an authorization
    identity that is not the login name): the exchange fails like a wrong
    password.

    @ivar authcid: the login name the client gave, if it got that far, for
        the log.
    """

    def __init__(self, reason: str, authcid: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.authcid = authcid


@dataclass(frozen=True)
class Credentials:
    """
    What a finished exchange yields.

    @ivar authcid: the login name, as sent.
    @ivar password: the password, as sent; never logged or shown.
    """

    authcid: bytes
    password: bytes = field(repr=False)


def decode_response(line: bytes, initial: bool = False) -> bytes:
    """
    Decode one client response.

    @param line: the response line (or the initial response of the AUTH
        command), without its CRLF.
    @param initial: whether it is the initial response, where C{=} stands
        for an empty response and C{*} is not special.
    @return: the decoded bytes.
    @raise SASLCancelled: for C{*} as a response to a challenge.
    @raise BadBase64: for anything that is not strict base64.
    """
    if not initial and line == CANCEL:
        raise SASLCancelled()
    if initial and line == EMPTY_INITIAL_RESPONSE:
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise BadBase64() from None


def encode_challenge(challenge: bytes) -> str:
    """
    @return: the challenge as sent after C{334 } (empty for an empty one).
    """
    return base64.b64encode(challenge).decode("ascii")


class PlainMechanism:
    """
    PLAIN (RFC 4616): one message, C{[authzid] NUL authcid NUL passwd}.

    An authorization identity is accepted only when empty or equal to the
    login name (case-insensitively): acting as another user is not
    offered.
    """

    name = "PLAIN"
    # RFC 4954 section 4: an empty challenge when there was no initial
    # response.
    initial_challenge = b""

    def step(self, response: bytes) -> bytes | Credentials:
        """
        @return: the L{Credentials}.
        @raise SASLFailure: for a malformed message or another authzid.
        """
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise SASLFailure("malformed PLAIN message")
        authzid, authcid, password = parts
        if not authcid or not password:
            raise SASLFailure("malformed PLAIN message", authcid or None)
        if max(len(authzid), len(authcid), len(password)) > MAX_PLAIN_FIELD:
            raise SASLFailure("PLAIN field too long", authcid[:MAX_PLAIN_FIELD])
        if authzid and authzid.lower() != authcid.lower():
            raise SASLFailure("authorization identity is not the login name", authcid)
        return Credentials(authcid, password)


class LoginMechanism:
    """
    LOGIN: the server asks C{Username:}, then C{Password:}. An initial
    response on the AUTH line is taken as the user name (as Exim, Postfix
    and Dovecot do; some clients send it).
    """

    name = "LOGIN"
    initial_challenge = b"Username:"
    password_challenge = b"Password:"

    def __init__(self) -> None:
        self._username: bytes | None = None

    def step(self, response: bytes) -> bytes | Credentials:
        """
        @return: C{b"Password:"} after the user name, the L{Credentials}
            after the password.
        @raise SASLFailure: for a field over L{MAX_LOGIN_FIELD} octets.
        """
        if self._username is None:
            if len(response) > MAX_LOGIN_FIELD:
                raise SASLFailure("LOGIN user name too long")
            self._username = response
            return self.password_challenge
        if len(response) > MAX_LOGIN_FIELD:
            raise SASLFailure("LOGIN password too long", self._username)
        return Credentials(self._username, response)


_MECHANISMS = {"PLAIN": PlainMechanism, "LOGIN": LoginMechanism}


def make_mechanism(name: str) -> PlainMechanism | LoginMechanism | None:
    """
    @param name: a mechanism name, any case.
    @return: a fresh state machine for it, or L{None} if it is not offered.
    """
    factory = _MECHANISMS.get(name.upper())
    return factory() if factory is not None else None
