# -*- test-case-name: tests.test_pop3_sasl -*-
"""
The SASL PLAIN mechanism (RFC 4616) as the POP3 AUTH command carries it
(RFC 5034): base64 responses, C{*} to cancel, C{=} for an empty initial
response.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MECHANISMS = (b"PLAIN",)

CANCEL = b"*"
EMPTY_INITIAL_RESPONSE = b"="

# RFC 4616 section 2: each of authzid, authcid and passwd is at most 255
# octets.
MAX_PLAIN_FIELD = 255


class SASLError(Exception):
    """
    A malformed SASL response; C{str(error)} is the text for the C{-ERR}
    reply.
    """


class SASLCancelled(SASLError):
    """
    The client cancelled the exchange with C{*} (RFC 5034 section 4).
    """


@dataclass(frozen=True)
class PlainCredentials:
    """
    @ivar authcid: the login name (bytes as sent).
    @ivar password: the password (bytes as sent).
    """

    authcid: bytes
    password: bytes


def decode_response(line: bytes, initial: bool = False) -> bytes:
    """
    Decode one client response line of a SASL exchange.

    @param line: the line, without its line end.
    @param initial: C{True} for the initial response on the AUTH line, where
        C{=} stands for an empty response.
    @return: the decoded bytes.
    @raise SASLCancelled: for C{*}.
    @raise SASLError: for anything that is not strict base64.
    """
    if line == CANCEL:
        raise SASLCancelled("Authentication cancelled")
    if initial and line == EMPTY_INITIAL_RESPONSE:
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("Invalid base64 data")


def parse_plain(message: bytes) -> PlainCredentials:
    """
    Split a PLAIN message, C{[authzid] NUL authcid NUL passwd}.

    An authorization identity is accepted only when it equals the login
    name (case-insensitively): acting as another user is not supported.

    @raise SASLError: when the message is malformed, a field is empty or
        too long, or the authorization identity names another user.
    """
    parts = message.split(b"\x00")
    if len(parts) != 3:
        raise SASLError("Malformed PLAIN response")
    authzid, authcid, password = parts
    if not authcid or not password:
        raise SASLError("Malformed PLAIN response")
    if max(len(authzid), len(authcid), len(password)) > MAX_PLAIN_FIELD:
        raise SASLError("Malformed PLAIN response")
    if authzid and authzid.lower() != authcid.lower():
        raise SASLError("Authorization identity must be the login name")
    return PlainCredentials(authcid, password)
