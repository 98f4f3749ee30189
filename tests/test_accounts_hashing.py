# -*- test-case-name: tests.test_accounts_hashing -*-
"""
Tests for L{mailappliance.accounts.hashing}.
"""

from __future__ import annotations

import argon2
import bcrypt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.accounts.hashing import (
    DEFAULT_ARGON2,
    DUMMY_HASH,
    Argon2Parameters,
    MalformedHash,
    check_hash_format,
    hash_password,
    scheme_of,
    verify_password,
)

# Cheap enough that a test hashes in well under a millisecond.
CHEAP_ARGON2 = Argon2Parameters(time_cost=1, memory_cost=8, parallelism=1)

AWKWARD_PASSWORDS = [b"", b"a\x00b", b"\xff\xfe\x80", "pässwörd".encode(), b"x" * 1000]


def blf_crypt(password: bytes, prefix: bytes = b"2b") -> str:
    """
    A C{{BLF-CRYPT}} hash made by the bcrypt module, at the lowest cost.
    """
    hashed = bcrypt.hashpw(password[:72], bcrypt.gensalt(4, prefix=b"2b" if prefix == b"2y" else prefix))
    if prefix == b"2y":
        hashed = b"$2y$" + hashed[4:]
    return "{BLF-CRYPT}" + hashed.decode("ascii")


class HashPasswordTests(SynchronousTestCase):
    """
    Tests for L{hash_password}.
    """

    def test_default_parameters(self) -> None:
        """
        By default the hash is argon2id with m=65536, t=3, p=4 (the one
        test that pays for them), and it verifies.
        """
        stored = hash_password(b"correct horse")
        self.assertTrue(stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$"), stored)
        self.assertTrue(verify_password(stored, b"correct horse"))
        self.assertFalse(verify_password(stored, b"correct horsE"))
        self.assertEqual(DEFAULT_ARGON2, Argon2Parameters(3, 65536, 4))

    def test_cheaper_parameters(self) -> None:
        """
        Tests may pass cheaper parameters; they are written into the hash.
        """
        stored = hash_password(b"pw", CHEAP_ARGON2)
        self.assertTrue(stored.startswith("{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$"), stored)

    def test_salted(self) -> None:
        """
        Two hashes of the same password differ (random salt), and both
        verify.
        """
        first = hash_password(b"pw", CHEAP_ARGON2)
        second = hash_password(b"pw", CHEAP_ARGON2)
        self.assertNotEqual(first, second)
        self.assertTrue(verify_password(first, b"pw"))
        self.assertTrue(verify_password(second, b"pw"))

    def test_round_trip_awkward_passwords(self) -> None:
        """
        Any bytes hash and verify: NUL, non-UTF-8, long; a hash matches only
        its own password; the empty password hashes but never verifies.
        """
        for password in AWKWARD_PASSWORDS:
            stored = hash_password(password, CHEAP_ARGON2)
            self.assertEqual(verify_password(stored, password), password != b"", password)
            self.assertFalse(verify_password(stored, password + b"x"), password)

    def test_password_must_be_bytes(self) -> None:
        """
        A L{str} password is a programming error: L{TypeError}.
        """
        self.assertRaises(TypeError, hash_password, "pw", CHEAP_ARGON2)


class VerifyPasswordTests(SynchronousTestCase):
    """
    Tests for L{verify_password}.
    """

    def test_blf_crypt_variants(self) -> None:
        """
        bcrypt hashes with the C{$2a$}, C{$2b$} and C{$2y$} prefixes made by
        the bcrypt module verify, and reject a wrong password.
        """
        for prefix in (b"2a", b"2b", b"2y"):
            stored = blf_crypt(b"s3cret", prefix)
            self.assertIn("$%s$04$" % (prefix.decode(),), stored)
            self.assertTrue(verify_password(stored, b"s3cret"), prefix)
            self.assertFalse(verify_password(stored, b"s3creT"), prefix)

    def test_blf_crypt_awkward_passwords(self) -> None:
        """
        bcrypt verification takes NUL and non-UTF-8 passwords (never the
        empty one).
        """
        for password in AWKWARD_PASSWORDS[:4]:
            stored = blf_crypt(password)
            self.assertEqual(verify_password(stored, password), password != b"", password)
            self.assertFalse(verify_password(stored, password + b"!"), password)

    def test_blf_crypt_long_password_truncated(self) -> None:
        """
        bcrypt reads 72 bytes of a password, as every bcrypt does: a hash of
        the first 72 bytes matches the longer password (the bcrypt module
        itself would refuse it with an exception).
        """
        password = bytes(range(32, 132))
        stored = blf_crypt(password[:72])
        self.assertTrue(verify_password(stored, password))
        self.assertFalse(verify_password(stored, password[:71]))

    def test_plain(self) -> None:
        """
        C{{PLAIN}} compares the password exactly, including prefixes,
        NUL, non-ASCII and the empty password.
        """
        self.assertTrue(verify_password("{PLAIN}secret", b"secret"))
        self.assertFalse(verify_password("{PLAIN}secret", b"secre"))
        self.assertFalse(verify_password("{PLAIN}secret", b"secrets"))
        self.assertFalse(verify_password("{PLAIN}secret", b"SECRET"))
        self.assertTrue(verify_password("{PLAIN}pässwörd", "pässwörd".encode()))
        self.assertFalse(verify_password("{PLAIN}pässwörd", "pässwörd".encode("latin-1")))
        self.assertFalse(verify_password("{PLAIN}a", b"a\x00"))
        # An empty password never logs in: an empty {PLAIN} password is a
        # malformed hash, and an empty password matches nothing.
        self.assertFalse(verify_password("{PLAIN}", b""))
        self.assertRaises(MalformedHash, check_hash_format, "{PLAIN}")
        self.assertFalse(verify_password(hash_password(b"", CHEAP_ARGON2), b""))
        self.assertFalse(verify_password("{PLAIN}", b"\x00"))

    def test_scheme_names_case_insensitive(self) -> None:
        """
        Scheme names match whatever their case.
        """
        argon = hash_password(b"pw", CHEAP_ARGON2)[len("{ARGON2ID}") :]
        bcrypt_hash = blf_crypt(b"pw")[len("{BLF-CRYPT}") :]
        self.assertTrue(verify_password("{argon2id}" + argon, b"pw"))
        self.assertTrue(verify_password("{Argon2Id}" + argon, b"pw"))
        self.assertTrue(verify_password("{blf-crypt}" + bcrypt_hash, b"pw"))
        self.assertTrue(verify_password("{plain}pw", b"pw"))
        self.assertTrue(verify_password("{Plain}pw", b"pw"))

    def test_unknown_or_malformed(self) -> None:
        """
        An unknown scheme, a missing prefix or a malformed hash never
        matches, and never raises.
        """
        argon = hash_password(b"pw", CHEAP_ARGON2)
        bcrypt_hash = blf_crypt(b"pw")
        for stored in [
            "{MD5-CRYPT}$1$abc$def",
            "{SHA512}pw",
            "pw",
            "",
            "{PLAIN",
            "{ARGON2ID}",
            "{ARGON2ID}$argon2id$garbage",
            "{ARGON2ID}" + argon[len("{ARGON2ID}") :].replace("$argon2id$", "$argon2i$"),
            argon[:-3],
            argon + " ",
            "{BLF-CRYPT}",
            "{BLF-CRYPT}$2x$04$" + bcrypt_hash[-53:],
            bcrypt_hash[:-1],
            bcrypt_hash + "A",
            "{BLF-CRYPT}" + argon[len("{ARGON2ID}") :],
            "{ARGON2ID}" + bcrypt_hash[len("{BLF-CRYPT}") :],
        ]:
            self.assertFalse(verify_password(stored, b"pw"), stored)

    def test_not_text_or_not_bytes(self) -> None:
        """
        A stored value that is not text, or a password that is not bytes,
        does not match (and does not raise).
        """
        self.assertFalse(verify_password(None, b"pw"))  # type: ignore[arg-type]
        self.assertFalse(verify_password(b"{PLAIN}pw", b"pw"))  # type: ignore[arg-type]
        self.assertFalse(verify_password("{PLAIN}pw", "pw"))  # type: ignore[arg-type]
        self.assertFalse(verify_password("{PLAIN}pw", None))  # type: ignore[arg-type]

    def test_costs_above_limits_refused(self) -> None:
        """
        A hash asking for absurd costs is refused without being run (if it
        were run, this test would allocate 4 GiB or run for days).
        """
        argon = "{ARGON2ID}$argon2id$v=19$m=4194304,t=3,p=4$qC6NdIhBuxT2PXiZsfJv1A$aWzgFTlxrDffj4ky3XRxRLBUdraHiuCvhPvGk7oIIAc"
        slow_bcrypt = "{BLF-CRYPT}$2b$31$" + blf_crypt(b"pw")[-53:]
        self.assertFalse(verify_password(argon, b"pw"))
        self.assertFalse(verify_password(slow_bcrypt, b"pw"))

    @settings(max_examples=300, deadline=None)
    @given(
        scheme=st.sampled_from(["{ARGON2ID}", "{BLF-CRYPT}", "{PLAIN}", "{argon2id}", "{X}", "", "{"]),
        payload=st.one_of(
            st.text(),
            st.builds(lambda s: "$argon2id$" + s, st.text()),
            st.builds(lambda s: "$argon2id$v=19$m=8,t=1,p=1$" + s, st.text()),
            st.builds(lambda s: "$2b$04$" + s, st.text(alphabet="./AZaz09$", min_size=50, max_size=56)),
        ),
        password=st.binary(max_size=100),
    )
    def test_never_raises(self, scheme: str, payload: str, password: bytes) -> None:
        """
        Whatever the stored text and password bytes, the answer is a
        L{bool}.
        """
        result = verify_password(scheme + payload, password)
        self.assertIsInstance(result, bool)
        if scheme != "{PLAIN}":
            self.assertFalse(result)


class SchemeTests(SynchronousTestCase):
    """
    Tests for L{scheme_of} and L{check_hash_format}.
    """

    def test_scheme_of(self) -> None:
        """
        L{scheme_of} gives the upper-cased scheme, known or not, and C{""}
        without a prefix.
        """
        self.assertEqual(scheme_of("{argon2id}$argon2id$..."), "ARGON2ID")
        self.assertEqual(scheme_of("{Blf-Crypt}$2b$..."), "BLF-CRYPT")
        self.assertEqual(scheme_of("{PLAIN}x"), "PLAIN")
        self.assertEqual(scheme_of("{MD5-CRYPT}$1$"), "MD5-CRYPT")
        self.assertEqual(scheme_of("secret"), "")
        self.assertEqual(scheme_of("x{PLAIN}y"), "")
        self.assertEqual(scheme_of(None), "")  # type: ignore[arg-type]

    def test_check_hash_format_accepts(self) -> None:
        """
        Well-formed hashes of each scheme pass and give their scheme.
        """
        self.assertEqual(check_hash_format(hash_password(b"pw", CHEAP_ARGON2)), "ARGON2ID")
        self.assertEqual(check_hash_format(blf_crypt(b"pw", b"2y")), "BLF-CRYPT")
        self.assertEqual(check_hash_format("{plain}anything: at all"), "PLAIN")

    def test_check_hash_format_reasons(self) -> None:
        """
        Each kind of mistake has its own one-line reason.
        """
        bcrypt_tail = blf_crypt(b"pw")[-53:]
        cases = [
            ("secret", "password hash has no {SCHEME} prefix"),
            ("{Md5}x", "unknown password scheme {Md5}"),
            ("{ARGON2ID}$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA", "malformed {ARGON2ID} hash: not an argon2id hash"),
            ("{ARGON2ID}$argon2id$v=19$m=8,t=1", "malformed {ARGON2ID} hash"),
            (
                "{ARGON2ID}$argon2id$v=19$m=2097152,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
                "{ARGON2ID} hash parameters above the limits (m<=1048576, t<=32, p<=64)",
            ),
            ("{BLF-CRYPT}$2b$04$short", "malformed {BLF-CRYPT} hash"),
            ("{BLF-CRYPT}$2b$19$" + bcrypt_tail, "{BLF-CRYPT} cost 19 outside 4 to 18"),
            ("{BLF-CRYPT}$2b$03$" + bcrypt_tail, "{BLF-CRYPT} cost 3 outside 4 to 18"),
        ]
        for stored, reason in cases:
            with self.assertRaises(MalformedHash, msg=stored) as caught:
                check_hash_format(stored)
            self.assertEqual(caught.exception.reason, reason)
            self.assertEqual(str(caught.exception), reason)


    def test_trailing_white_space_refused(self) -> None:
        """
        An C{{ARGON2ID}} or C{{BLF-CRYPT}} hash followed by white space
        (space, tab, CR) is refused with a reason that says so: it would
        never match (argon2 reads the parameters of such a hash, so it
        passed as well-formed). A C{{PLAIN}} password keeps its white
        space, as in Dovecot.
        """
        argon = hash_password(b"pw", CHEAP_ARGON2)
        bcrypt_hash = blf_crypt(b"pw")
        for stored, scheme in ((argon, "ARGON2ID"), (bcrypt_hash, "BLF-CRYPT"),
                               (argon.replace("{ARGON2ID}", "{argon2id}"), "argon2id")):
            for tail in (" ", "\t", "\r", "  \t"):
                with self.assertRaises(MalformedHash, msg=repr(stored + tail)) as caught:
                    check_hash_format(stored + tail)
                self.assertEqual(caught.exception.reason,
                                 "{%s} hash ends with white space; remove it (no password could match)" % (scheme,))
                self.assertFalse(verify_password(stored + tail, b"pw"))
            self.assertTrue(verify_password(stored, b"pw"))
        self.assertEqual(check_hash_format("{PLAIN}secret "), "PLAIN")
        self.assertTrue(verify_password("{PLAIN}secret ", b"secret "))


class DummyHashTests(SynchronousTestCase):
    """
    Tests for L{DUMMY_HASH}.
    """

    def test_costs_like_a_default_hash(self) -> None:
        """
        The dummy hash is a well-formed argon2id hash with exactly the
        default parameters, so verifying against it costs what verifying a
        default account costs; and it matches nothing tried here.
        """
        self.assertEqual(check_hash_format(DUMMY_HASH), "ARGON2ID")
        parameters = argon2.extract_parameters(DUMMY_HASH[len("{ARGON2ID}") :])
        self.assertEqual(
            (parameters.time_cost, parameters.memory_cost, parameters.parallelism),
            (DEFAULT_ARGON2.time_cost, DEFAULT_ARGON2.memory_cost, DEFAULT_ARGON2.parallelism),
        )
        self.assertEqual(parameters.type, argon2.Type.ID)
        self.assertFalse(verify_password(DUMMY_HASH, b""))
