# -*- test-case-name: tests.test_accounts_usersfile -*-
"""
Tests for L{mailappliance.accounts.usersfile}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.accounts.usersfile import (
    AccountError,
    UserRecord,
    UsersFileError,
    parse_line,
    parse_users,
    split_lines,
    unsafe_folder_reason,
)
from mailappliance.address import Mailbox

BCRYPT = "{BLF-CRYPT}$2b$04$mTOQs6mN3NEY4XzW4zptRujSp/RnnTuMqXLxXfEh4AdJJ6O4rPf1W"
ARGON = (
    "{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$odAlk2C026qSETgEmuonsQ"
    "$5n6fIQjiTqBZKEMuYcplumJrU1I+jdChB0ET6vDLWc8"
)


class ParseUsersTests(SynchronousTestCase):
    """
    Tests for L{parse_users}.
    """

    def test_accounts(self) -> None:
        """
        Account lines give records keyed by L{Mailbox.key}, in file order,
        with their line numbers; comments (also indented), blank lines,
        CRLF line ends and further Dovecot fields are fine.
        """
        data = (
            b"# users\n"
            b"\n"
            b"Alice@Example.TEST:" + ARGON.encode() + b"\n"
            b"   # indented comment\r\n"
            b"  \t \n"
            b"bob@example.test:" + BCRYPT.encode() + b":1000:1000::/home/bob::userdb_quota=1G\r\n"
            b"carol@example.test:{plain}pa#ss word"
        )
        records = parse_users(data, "/etc/users")
        self.assertEqual(list(records), ["alice@example.test", "bob@example.test", "carol@example.test"])
        self.assertEqual(
            records["alice@example.test"], UserRecord(Mailbox("Alice", "example.test"), ARGON, 3)
        )
        self.assertEqual(records["bob@example.test"], UserRecord(Mailbox("bob", "example.test"), BCRYPT, 6))
        self.assertEqual(
            records["carol@example.test"],
            UserRecord(Mailbox("carol", "example.test"), "{plain}pa#ss word", 7),
        )

    def test_empty(self) -> None:
        """
        An empty file, or one with only comments, has no accounts.
        """
        self.assertEqual(parse_users(b"", "users"), {})
        self.assertEqual(parse_users(b"# nobody yet\n\n", "users"), {})

    def test_internationalised_address(self) -> None:
        """
        UTF-8 addresses are accepted; the domain is stored as A-labels.
        """
        records = parse_users("jösé@bücher.example:{PLAIN}x\n".encode(), "users")
        self.assertEqual(list(records), ["jösé@xn--bcher-kva.example"])

    def test_address_literal(self) -> None:
        """
        The colons of an IPv6 address literal do not end the address field.
        """
        records = parse_users(b"alice@[IPv6:2001:db8::1]:{PLAIN}x:1000\n", "users")
        record = records["alice@[IPv6:2001:db8::1]"]
        self.assertEqual(record.password_hash, "{PLAIN}x")

    def test_mistakes(self) -> None:
        """
        Each mistake stops the parse with the file, the line number and a
        one-line reason.
        """
        cases = [
            (b"alice@example.test\n", 1, "missing ':' between address and password"),
            (b"# c\nalice:{PLAIN}x\n", 2, "invalid address 'alice': missing local part or '@'"),
            (
                b'"a b"@example.test:{PLAIN}x\n',
                1,
                "invalid address '\"a b\"@example.test': a quoted local part cannot be a folder name",
            ),
            (b"a/b@example.test:{PLAIN}x\n", 1, "invalid address 'a/b@example.test': a local part with '/' cannot be a folder name"),
            (b"\n\nalice@example.test:\n", 3, "alice@example.test: missing password hash"),
            (b"alice@example.test::1000\n", 1, "alice@example.test: missing password hash"),
            (b"alice@example.test:secret\n", 1, "alice@example.test: password hash has no {SCHEME} prefix"),
            (b"alice@example.test:{MD5}abc\n", 1, "alice@example.test: unknown password scheme {MD5}"),
            (
                b"alice@example.test:{ARGON2ID}$argon2id$nonsense\n",
                1,
                "alice@example.test: malformed {ARGON2ID} hash",
            ),
            (b"alice@example.test:{BLF-CRYPT}$2b$04$short\n", 1, "alice@example.test: malformed {BLF-CRYPT} hash"),
            (
                b"# c\nalice@example.test:{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA \r\n",
                2,
                "alice@example.test: {ARGON2ID} hash ends with white space; remove it (no password could match)",
            ),
            (
                b"alice@example.test:{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\t:1000\n",
                1,
                "alice@example.test: {ARGON2ID} hash ends with white space; remove it (no password could match)",
            ),
            (b"#\xff\n\xffalice@example.test:{PLAIN}x\n", 2, "line is not valid UTF-8"),
            (
                b"Alice@Example.test:{PLAIN}a\n# c\nalice@example.TEST:{PLAIN}b\n",
                3,
                "duplicate address alice@example.test (first on line 1)",
            ),
        ]
        for data, line, reason in cases:
            with self.assertRaises(UsersFileError, msg=data) as caught:
                parse_users(data, "/srv/mail/users")
            error = caught.exception
            self.assertEqual((error.path, error.line, error.reason), ("/srv/mail/users", line, reason))
            self.assertEqual(str(error), f"/srv/mail/users:{line}: {reason}")


class UsersFileErrorTests(SynchronousTestCase):
    """
    Tests for L{UsersFileError}.
    """

    def test_str(self) -> None:
        """
        C{str()} is C{FILE:LINE: reason}, or C{FILE: reason} without a line.
        """
        self.assertEqual(str(UsersFileError("users", 7, "bad")), "users:7: bad")
        self.assertEqual(str(UsersFileError("users", None, "cannot read")), "users: cannot read")

    def test_is_account_error(self) -> None:
        """
        It is an L{AccountError}, so the command line reports it like any
        other account error.
        """
        self.assertIsInstance(UsersFileError("users", 1, "bad"), AccountError)


class ParseLineTests(SynchronousTestCase):
    """
    Tests for L{parse_line}.
    """

    def test_password_field_offsets(self) -> None:
        """
        The offsets delimit the password field exactly, with or without
        further fields and line break.
        """
        for line in (b"a@x.test:{PLAIN}pw", b"a@x.test:{PLAIN}pw\r\n", b"a@x.test:{PLAIN}pw:1000:1000\n"):
            parsed = parse_line(line, 1)
            assert parsed is not None
            self.assertEqual(line[parsed.password_start : parsed.password_end], b"{PLAIN}pw")

    def test_comment_and_blank(self) -> None:
        """
        Comments and blank lines give L{None}.
        """
        for line in (b"# a:b\n", b"\n", b"", b" \t\r\n", b"  #x"):
            self.assertIsNone(parse_line(line, 1))


class SplitLinesTests(SynchronousTestCase):
    """
    Tests for L{split_lines}.
    """

    def test_round_trip(self) -> None:
        """
        Only LF ends a line (a lone CR does not), each line keeps its end,
        and joining gives the data back.
        """
        data = b"a\r\nb\rc\n\nd"
        self.assertEqual(split_lines(data), [b"a\r\n", b"b\rc\n", b"\n", b"d"])
        for sample in (data, b"", b"\n", b"x\n", b"x"):
            self.assertEqual(b"".join(split_lines(sample)), sample)


class UnsafeFolderTests(SynchronousTestCase):
    """
    Tests for L{unsafe_folder_reason}.
    """

    def test_reasons(self) -> None:
        """
        Quoted local parts, C{/}, NUL, a leading C{.} and C{..} are unsafe
        as folder names; ordinary ones are safe.
        """
        cases = [
            ('"a b"', "a quoted local part cannot be a folder name"),
            ('"../x"', "a quoted local part cannot be a folder name"),
            ("a/b", "a local part with '/' cannot be a folder name"),
            ("a\0b", "a local part with NUL cannot be a folder name"),
            (".a", "a local part starting with '.' cannot be a folder name"),
            ("a..b", "a local part with '..' cannot be a folder name"),
            ("a.b", None),
            ("user+tag", None),
            ("jösé", None),
        ]
        for local, reason in cases:
            self.assertEqual(unsafe_folder_reason(Mailbox(local, "example.test")), reason, local)
