# -*- test-case-name: tests.test_accounts_hashing -*-
"""
Password hashes of the users file, in Dovecot's C{{SCHEME}hash} notation.

Schemes (names compare case-insensitively, as in Dovecot):

  - C{{ARGON2ID}}: an argon2id PHC string
    (C{$argon2id$v=19$m=65536,t=3,p=4$salt$hash}). What L{hash_password}
    writes, with the parameters of RFC 9106 section 4's second recommended
    option (t=3 passes, p=4 lanes, m=64 MiB), for machines without the
    2 GiB per login of the first.
  - C{{BLF-CRYPT}}: a bcrypt string (C{$2a$}, C{$2b$} or C{$2y$}).
  - C{{PLAIN}}: the password itself, for migration only.

All of this is blocking, CPU-heavy work: the server runs it in the
L{mailappliance.disk.DiskPool}, never on the reactor thread.

L{verify_password} never raises on bad stored data or on any password
bytes: what it cannot verify does not match. L{DUMMY_HASH} is what a login
for an unknown user is checked against, so that it costs as much as a
login for an account with the default scheme and parameters and the answer
time does not tell who has an account.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError

SCHEME_ARGON2ID = "ARGON2ID"
SCHEME_BLF_CRYPT = "BLF-CRYPT"
SCHEME_PLAIN = "PLAIN"
KNOWN_SCHEMES = (SCHEME_ARGON2ID, SCHEME_BLF_CRYPT, SCHEME_PLAIN)

# bcrypt reads only the first 72 bytes of a password. The bcrypt module
# (5.x) refuses longer ones; every other implementation (crypt(3), Dovecot,
# htpasswd) truncates, so hashes made elsewhere from long passwords only
# match when we truncate too.
BCRYPT_MAX_PASSWORD_BYTES = 72

# Upper bounds on the cost parameters we agree to verify. A hash is data
# from a file: a typing mistake such as m=6553600 must not make every login
# allocate 6 GiB or a bcrypt cost of 31 run for days in the disk pool.
MAX_ARGON2_MEMORY_KIB = 1024 * 1024
MAX_ARGON2_TIME_COST = 32
MAX_ARGON2_PARALLELISM = 64
MAX_BCRYPT_COST = 18

_SCHEME_PREFIX = re.compile(r"\{([^{}]*)\}")
# White space an editor may leave at the end of a line (a CR of a CRLF
# line end is taken off before: this is one more).
_TRAILING_WHITE_SPACE = " \t\r"
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")


@dataclass(frozen=True)
class Argon2Parameters:
    """
    Cost parameters of argon2id (RFC 9106 section 3.1).

    @ivar time_cost: passes over memory (C{t}).
    @ivar memory_cost: memory in KiB (C{m}).
    @ivar parallelism: lanes (C{p}).
    """

    time_cost: int
    memory_cost: int
    parallelism: int


DEFAULT_ARGON2 = Argon2Parameters(time_cost=3, memory_cost=65536, parallelism=4)

# The argon2id hash, with DEFAULT_ARGON2, of 32 random bytes that were then
# thrown away. Nothing matches it, and L{verify_password} takes as long on
# it as on any hash that L{hash_password} writes.
DUMMY_HASH = (
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$qC6NdIhBuxT2PXiZsfJv1A"
    "$aWzgFTlxrDffj4ky3XRxRLBUdraHiuCvhPvGk7oIIAc"
)


class MalformedHash(ValueError):
    """
    A stored password hash cannot be used.

    @ivar reason: what is wrong, one line, for an error message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def hash_password(password: bytes, parameters: Argon2Parameters = DEFAULT_ARGON2) -> str:
    """
    Hash a new password with argon2id and a random salt.

    @param password: the password, any bytes.
    @param parameters: the cost; tests pass cheaper ones.
    @return: C{"{ARGON2ID}$argon2id$v=19$m=...,t=...,p=...$salt$hash"}.
    @raise TypeError: if C{password} is not L{bytes}.
    """
    if not isinstance(password, bytes):
        raise TypeError("password must be bytes")
    hasher = argon2.PasswordHasher(
        time_cost=parameters.time_cost,
        memory_cost=parameters.memory_cost,
        parallelism=parameters.parallelism,
        type=argon2.Type.ID,
    )
    return "{%s}%s" % (SCHEME_ARGON2ID, hasher.hash(password))


def scheme_of(stored: str) -> str:
    """
    The scheme of a stored hash, upper-cased, without braces.

    @param stored: C{"{SCHEME}..."}.
    @return: e.g. C{"ARGON2ID"}, whether or not the scheme is known; C{""}
        when C{stored} does not start with a C{{SCHEME}} prefix.
    """
    if not isinstance(stored, str):
        return ""
    match = _SCHEME_PREFIX.match(stored)
    return match.group(1).upper() if match else ""


def check_hash_format(stored: str) -> str:
    """
    Check that a stored hash is one L{verify_password} can use.

    @param stored: C{"{SCHEME}..."}.
    @return: the scheme, as L{scheme_of} gives it.
    @raise MalformedHash: if the prefix is missing, the scheme unknown, or
        the hash after it is not well-formed for its scheme (including cost
        parameters above the limits of this module, and white space after
        an C{{ARGON2ID}} or C{{BLF-CRYPT}} hash).
    """
    if not isinstance(stored, str):
        raise MalformedHash("password hash must be text")
    match = _SCHEME_PREFIX.match(stored)
    if match is None:
        raise MalformedHash("password hash has no {SCHEME} prefix")
    scheme = match.group(1).upper()
    payload = stored[match.end() :]
    if scheme in (SCHEME_ARGON2ID, SCHEME_BLF_CRYPT) and payload != payload.rstrip(_TRAILING_WHITE_SPACE):
        # Such a hash never matches, and nothing said why. Dovecot's
        # passwd-file neither strips nor refuses it (it keeps the field as
        # it is); refused here, the mistake is found, with its line, when
        # the file is read. A {PLAIN} password may end in white space: it
        # is compared as it is, as Dovecot does.
        raise MalformedHash("{%s} hash ends with white space; remove it (no password could match)"
                            % (match.group(1),))
    if scheme == SCHEME_ARGON2ID:
        _check_argon2id(payload)
    elif scheme == SCHEME_BLF_CRYPT:
        _check_bcrypt(payload)
    elif scheme == SCHEME_PLAIN:
        if not payload:
            # It would let anyone in with an empty password.
            raise MalformedHash("empty {PLAIN} password")
    else:
        raise MalformedHash("unknown password scheme {%s}" % (match.group(1),))
    return scheme


def _check_argon2id(payload: str) -> None:
    if not payload.startswith("$argon2id$"):
        raise MalformedHash("malformed {ARGON2ID} hash: not an argon2id hash")
    try:
        parameters = argon2.extract_parameters(payload)
    except (InvalidHashError, ValueError):
        raise MalformedHash("malformed {ARGON2ID} hash") from None
    if (
        parameters.memory_cost > MAX_ARGON2_MEMORY_KIB
        or parameters.time_cost > MAX_ARGON2_TIME_COST
        or parameters.parallelism > MAX_ARGON2_PARALLELISM
    ):
        raise MalformedHash(
            "{ARGON2ID} hash parameters above the limits "
            f"(m<={MAX_ARGON2_MEMORY_KIB}, t<={MAX_ARGON2_TIME_COST}, p<={MAX_ARGON2_PARALLELISM})"
        )


def _check_bcrypt(payload: str) -> None:
    match = _BCRYPT.match(payload)
    if match is None:
        raise MalformedHash("malformed {BLF-CRYPT} hash")
    cost = int(match.group(1))
    if not 4 <= cost <= MAX_BCRYPT_COST:
        raise MalformedHash(f"{{BLF-CRYPT}} cost {cost} outside 4 to {MAX_BCRYPT_COST}")


def verify_password(stored: str, password: bytes) -> bool:
    """
    Check a password against a stored hash. Blocking and slow by design:
    call it in the disk pool.

    @param stored: C{"{SCHEME}..."} from the users file.
    @param password: the password as given by the client, any bytes
        (NUL and non-UTF-8 included).
    @return: L{True} if it matches. L{False} otherwise, and also for an
        empty password, an unknown scheme, a malformed hash, or a
        C{password} that is not L{bytes}; it never raises for such data.
    """
    if not isinstance(password, bytes) or not password:
        return False
    try:
        scheme = check_hash_format(stored)
    except MalformedHash:
        return False
    payload = stored[stored.index("}") + 1 :]
    try:
        if scheme == SCHEME_ARGON2ID:
            return _verify_argon2id(payload, password)
        if scheme == SCHEME_BLF_CRYPT:
            return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], payload.encode("ascii"))
        return _verify_plain(payload, password)
    except (ValueError, TypeError, UnicodeError):
        # Malformed data that got past check_hash_format (a salt the
        # library refuses, say): it cannot match.
        return False


def _verify_argon2id(payload: str, password: bytes) -> bool:
    try:
        return argon2.PasswordHasher().verify(payload, password)
    except (VerificationError, InvalidHashError):
        return False


def _verify_plain(payload: str, password: bytes) -> bool:
    # Comparing digests takes the same time whatever the lengths, so not
    # even the length of the stored password leaks.
    stored = payload.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(hashlib.sha256(stored).digest(), hashlib.sha256(password).digest())
