# -*- test-case-name: tests.test_accounts_edit -*-
"""
Tests for L{mailappliance.accounts.edit}, the command line's changes to the
users file (imported, as the command line does, from
L{mailappliance.accounts.users}).
"""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import threading

from twisted.trial.unittest import SynchronousTestCase

from mailappliance.accounts import edit
from mailappliance.accounts.hashing import Argon2Parameters, hash_password
from mailappliance.accounts.users import (
    AccountError,
    UserRecord,
    add_user,
    delete_user,
    list_users,
    set_password,
)
from mailappliance.address import Mailbox

CHEAP_ARGON2 = Argon2Parameters(time_cost=1, memory_cost=8, parallelism=1)

# A file with everything an administrator might have in it: comments,
# blank lines, CRLF, odd spacing, further Dovecot fields, a mixed-case
# address, and no line break at the end.
ORIGINAL = (
    b"# users of example.test\r\n"
    b"\n"
    b"  # alice is the admin   \n"
    b"Alice@Example.test:{PLAIN}alice:1000:1000::/home/alice::\r\n"
    b"\t\n"
    b"bob@example.test:{PLAIN}bob\n"
    b"# the end, without a line break"
)


class EditTestsMixin:
    def make_path(self) -> str:
        folder = self.mktemp()  # type: ignore[attr-defined]
        os.mkdir(folder)
        return os.path.join(folder, "users")

    def write(self, path: str, data: bytes, mode: int = 0o600) -> None:
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


class AddUserTests(EditTestsMixin, SynchronousTestCase):
    """
    Tests for L{add_user}.
    """

    def test_creates_file(self) -> None:
        """
        A missing file is created, mode 0600, with the line
        C{address.key:hash}; nothing else but the lock file appears.
        """
        path = self.make_path()
        stored = hash_password(b"pw", CHEAP_ARGON2)
        record = add_user(path, "Alice@Example.TEST", stored)
        self.assertEqual(record, UserRecord(Mailbox("alice", "example.test"), stored, 1))
        self.assertEqual(self.read(path), b"alice@example.test:" + stored.encode() + b"\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["users", "users.lock"])

    def test_keeps_other_lines(self) -> None:
        """
        Every existing byte stays; the new line is appended after a line
        break added to an unterminated last line.
        """
        path = self.make_path()
        self.write(path, ORIGINAL)
        record = add_user(path, "carol@example.test", "{PLAIN}carol")
        self.assertEqual(self.read(path), ORIGINAL + b"\ncarol@example.test:{PLAIN}carol\n")
        self.assertEqual(record.line_number, 8)
        self.assertEqual(list_users(path)[-1], record)

    def test_duplicate(self) -> None:
        """
        An address that has an account, in any case, is refused and the
        file is unchanged.
        """
        path = self.make_path()
        self.write(path, ORIGINAL)
        for address in ("alice@example.test", "ALICE@EXAMPLE.TEST", "Bob@Example.Test"):
            with self.assertRaises(AccountError) as caught:
                add_user(path, address, "{PLAIN}x")
            key = address.lower()
            line = 4 if key.startswith("alice") else 6
            self.assertEqual(str(caught.exception), f"{key} already exists (line {line} of {path})")
        self.assertEqual(self.read(path), ORIGINAL)

    def test_duplicate_in_another_normal_form(self) -> None:
        """
        The decomposed spelling of an address that has an account is the
        same account (the file stores normal form C).
        """
        path = self.make_path()
        add_user(path, "zoe\u0308@example.test", "{PLAIN}x")
        self.assertEqual(self.read(path), "zo\u00eb@example.test:{PLAIN}x\n".encode())
        with self.assertRaises(AccountError):
            add_user(path, "zo\u00eb@example.test", "{PLAIN}y")

    def test_bad_addresses(self) -> None:
        """
        A malformed address, or one whose local part is unsafe as a folder
        name, is refused with a one-line reason, and no file is created.
        """
        path = self.make_path()
        cases = [
            ("alice", "invalid address 'alice': missing local part or '@'"),
            ("alice@", "invalid address 'alice@': empty domain"),
            ('"a b"@example.test', "invalid address '\"a b\"@example.test': a quoted local part cannot be a folder name"),
            ('"../x"@example.test', "invalid address '\"../x\"@example.test': a quoted local part cannot be a folder name"),
            ("a/b@example.test", "invalid address 'a/b@example.test': a local part with '/' cannot be a folder name"),
            (".a@example.test", "invalid address '.a@example.test': invalid local part"),
            ("a..b@example.test", "invalid address 'a..b@example.test': invalid local part"),
            ("a\x00b@example.test", "invalid address 'a\\x00b@example.test': control character in address"),
        ]
        for address, message in cases:
            with self.assertRaises(AccountError) as caught:
                add_user(path, address, "{PLAIN}x")
            self.assertEqual(str(caught.exception), message)
        self.assertEqual(os.listdir(os.path.dirname(path)), [])

    def test_bad_hash(self) -> None:
        """
        A hash that the file could not hold, or that is malformed, is
        refused.
        """
        path = self.make_path()
        cases = [
            ("{MD5}x", "invalid password hash: unknown password scheme {MD5}"),
            ("secret", "invalid password hash: password hash has no {SCHEME} prefix"),
            ("{PLAIN}a:b", "invalid password hash: it may not contain ':' or a line break"),
            ("{PLAIN}a\nb@example.test:{PLAIN}b", "invalid password hash: it may not contain ':' or a line break"),
            ("{ARGON2ID}$argon2id$", "invalid password hash: malformed {ARGON2ID} hash"),
        ]
        for stored, message in cases:
            with self.assertRaises(AccountError) as caught:
                add_user(path, "alice@example.test", stored)
            self.assertEqual(str(caught.exception), message)
        self.assertFalse(os.path.exists(path))

    def test_missing_folder(self) -> None:
        """
        The file's folder is not created: that is an error.
        """
        path = os.path.join(self.mktemp(), "users")
        with self.assertRaises(AccountError) as caught:
            add_user(path, "alice@example.test", "{PLAIN}x")
        self.assertEqual(str(caught.exception), f"cannot update {path}: No such file or directory")
        self.assertFalse(os.path.exists(os.path.dirname(path)))

    def test_file_with_mistake(self) -> None:
        """
        A file with a mistake is not changed; the mistake is reported with
        its line.
        """
        path = self.make_path()
        self.write(path, b"# x\nalice@example.test:nohash\n")
        with self.assertRaises(AccountError) as caught:
            add_user(path, "bob@example.test", "{PLAIN}b")
        self.assertEqual(str(caught.exception), f"{path}:2: alice@example.test: password hash has no {{SCHEME}} prefix")
        self.assertEqual(self.read(path), b"# x\nalice@example.test:nohash\n")

    def test_keeps_mode(self) -> None:
        """
        An existing file keeps its mode (0640 for a server in the file's
        group), whatever the umask.
        """
        path = self.make_path()
        self.write(path, b"", 0o640)
        old_umask = os.umask(0o077)
        try:
            add_user(path, "alice@example.test", "{PLAIN}a")
        finally:
            os.umask(old_umask)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)

    def test_keeps_owner(self) -> None:
        """
        Run as root, an edit keeps the file's owner and group, so that a
        server running as another user can still read it.
        """
        if os.geteuid() != 0:
            raise self.skipTest("needs root to give a file away")
        path = self.make_path()
        self.write(path, b"")
        os.chown(path, 4321, 4322)
        add_user(path, "alice@example.test", "{PLAIN}a")
        status = os.stat(path)
        self.assertEqual((status.st_uid, status.st_gid), (4321, 4322))


class SymbolicLinkTests(EditTestsMixin, SynchronousTestCase):
    """
    A users file that is a symbolic link is written through it: the
    target changes, the link stays a link.
    """

    def setUp(self) -> None:
        base = self.mktemp()
        os.makedirs(os.path.join(base, "real"))
        os.mkdir(os.path.join(base, "config"))
        self.target = os.path.join(base, "real", "users")
        self.link = os.path.join(base, "config", "users")
        os.symlink(os.path.join("..", "real", "users"), self.link)

    def assert_through_link(self, content: bytes) -> None:
        self.assertTrue(os.path.islink(self.link))
        self.assertEqual(os.readlink(self.link), os.path.join("..", "real", "users"))
        self.assertEqual(self.read(self.target), content)
        # The temporary file was made next to the target (and is gone);
        # nothing was left beside the link.
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.target))), ["users", "users.lock"])
        self.assertEqual(os.listdir(os.path.dirname(self.link)), ["users"])

    def test_add_passwd_del(self) -> None:
        self.write(self.target, b"# kept elsewhere\nbob@example.test:{PLAIN}bob\n", 0o640)
        add_user(self.link, "alice@example.test", "{PLAIN}a")
        self.assert_through_link(b"# kept elsewhere\nbob@example.test:{PLAIN}bob\nalice@example.test:{PLAIN}a\n")
        set_password(self.link, "bob@example.test", "{PLAIN}new")
        self.assert_through_link(b"# kept elsewhere\nbob@example.test:{PLAIN}new\nalice@example.test:{PLAIN}a\n")
        delete_user(self.link, "alice@example.test")
        self.assert_through_link(b"# kept elsewhere\nbob@example.test:{PLAIN}new\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.target).st_mode), 0o640)

    def test_dangling_link(self) -> None:
        """
        A link to a file that does not exist yet: the target is created.
        """
        add_user(self.link, "alice@example.test", "{PLAIN}a")
        self.assert_through_link(b"alice@example.test:{PLAIN}a\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.target).st_mode), 0o600)

    def test_errors_name_the_configured_path(self) -> None:
        self.write(self.target, b"alice@example.test:nohash\n")
        with self.assertRaises(AccountError) as caught:
            add_user(self.link, "bob@example.test", "{PLAIN}b")
        self.assertEqual(str(caught.exception),
                         f"{self.link}:1: alice@example.test: password hash has no {{SCHEME}} prefix")


class SetPasswordTests(EditTestsMixin, SynchronousTestCase):
    """
    Tests for L{set_password}.
    """

    def test_replaces_only_password_field(self) -> None:
        """
        Only the password field changes: the address as written, further
        fields, the line end and all other lines stay byte for byte.
        """
        path = self.make_path()
        self.write(path, ORIGINAL)
        stored = hash_password(b"new", CHEAP_ARGON2)
        set_password(path, "ALICE@example.test", stored)
        expected = ORIGINAL.replace(
            b"Alice@Example.test:{PLAIN}alice:1000",
            b"Alice@Example.test:" + stored.encode() + b":1000",
        )
        self.assertEqual(self.read(path), expected)
        set_password(path, "bob@example.test", "{PLAIN}b2")
        self.assertEqual(self.read(path), expected.replace(b":{PLAIN}bob\n", b":{PLAIN}b2\n"))

    def test_unknown(self) -> None:
        """
        An address without an account is refused; so is any address when
        the file is missing (which is not created).
        """
        path = self.make_path()
        with self.assertRaises(AccountError) as caught:
            set_password(path, "Carol@example.test", "{PLAIN}c")
        self.assertEqual(str(caught.exception), "no such account: carol@example.test")
        self.assertFalse(os.path.exists(path))
        self.write(path, ORIGINAL)
        self.assertRaises(AccountError, set_password, path, "carol@example.test", "{PLAIN}c")
        self.assertEqual(self.read(path), ORIGINAL)

    def test_bad_input(self) -> None:
        """
        A malformed address or hash is refused before the file is touched.
        """
        path = self.make_path()
        self.write(path, ORIGINAL)
        with self.assertRaises(AccountError) as caught:
            set_password(path, "bob", "{PLAIN}c")
        self.assertEqual(str(caught.exception), "invalid address 'bob': missing local part or '@'")
        with self.assertRaises(AccountError) as caught:
            set_password(path, "bob@example.test", "{PLAIN}c:d")
        self.assertEqual(str(caught.exception), "invalid password hash: it may not contain ':' or a line break")
        self.assertEqual(self.read(path), ORIGINAL)


class DeleteUserTests(EditTestsMixin, SynchronousTestCase):
    """
    Tests for L{delete_user}.
    """

    def test_removes_only_that_line(self) -> None:
        """
        The account's line goes; everything else stays byte for byte.
        """
        path = self.make_path()
        self.write(path, ORIGINAL)
        delete_user(path, "alice@EXAMPLE.test")
        self.assertEqual(
            self.read(path), ORIGINAL.replace(b"Alice@Example.test:{PLAIN}alice:1000:1000::/home/alice::\r\n", b"")
        )
        self.assertEqual([r.mailbox.key for r in list_users(path)], ["bob@example.test"])

    def test_unknown(self) -> None:
        """
        An address without an account is refused.
        """
        path = self.make_path()
        self.write(path, ORIGINAL)
        with self.assertRaises(AccountError) as caught:
            delete_user(path, "carol@example.test")
        self.assertEqual(str(caught.exception), "no such account: carol@example.test")
        self.assertEqual(self.read(path), ORIGINAL)


class ListUsersTests(EditTestsMixin, SynchronousTestCase):
    """
    Tests for L{list_users}.
    """

    def test_list(self) -> None:
        """
        The records in file order; a missing file has none and is not
        created.
        """
        path = self.make_path()
        self.assertEqual(list_users(path), [])
        self.assertFalse(os.path.exists(path))
        self.write(path, ORIGINAL)
        self.assertEqual(
            list_users(path),
            [
                UserRecord(Mailbox("Alice", "example.test"), "{PLAIN}alice", 4),
                UserRecord(Mailbox("bob", "example.test"), "{PLAIN}bob", 6),
            ],
        )

    def test_unreadable(self) -> None:
        """
        A file that cannot be read is reported with the file's name.
        """
        path = self.make_path()
        os.mkdir(path)
        with self.assertRaises(AccountError) as caught:
            list_users(path)
        self.assertEqual(str(caught.exception), f"{path}: cannot read the users file: Is a directory")
        with self.assertRaises(AccountError) as caught:
            add_user(path, "alice@example.test", "{PLAIN}a")
        self.assertEqual(str(caught.exception), f"{path}: cannot read the users file: Is a directory")

    def test_mistake(self) -> None:
        """
        A mistake is reported with file and line.
        """
        path = self.make_path()
        self.write(path, b"bob@example.test:{PLAIN}b\nbob@example.test:{PLAIN}c\n")
        with self.assertRaises(AccountError) as caught:
            list_users(path)
        self.assertEqual(str(caught.exception), f"{path}:2: duplicate address bob@example.test (first on line 1)")


class LockTests(EditTestsMixin, SynchronousTestCase):
    """
    Changes are serialised by an exclusive lock on C{PATH.lock}.
    """

    def test_lock_held_during_change(self) -> None:
        """
        While a change is being made, another open file description cannot
        take the lock on C{PATH.lock}; afterwards it can.
        """
        path = self.make_path()
        attempts = []

        def change(data: bytes, records: dict) -> bytes:
            fd = os.open(path + ".lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                attempts.append("locked")
            except BlockingIOError:
                attempts.append("blocked")
            finally:
                os.close(fd)
            return data + b"a@example.test:{PLAIN}a\n"

        edit._edit(path, change)
        self.assertEqual(attempts, ["blocked"])
        fd = os.open(path + ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        self.assertEqual(stat.S_IMODE(os.stat(path + ".lock").st_mode), 0o600)

    def test_threads_lose_nothing(self) -> None:
        """
        Four threads adding ten accounts each at the same time: all forty
        are in the file.
        """
        path = self.make_path()
        errors: list[BaseException] = []

        def add_many(thread: int) -> None:
            try:
                for n in range(10):
                    add_user(path, f"t{thread}u{n}@example.test", "{PLAIN}x")
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=add_many, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(
            sorted(r.mailbox.key for r in list_users(path)),
            sorted(f"t{t}u{n}@example.test" for t in range(4) for n in range(10)),
        )

    def test_processes_lose_nothing(self) -> None:
        """
        Two processes adding, and changing passwords, at the same time:
        every account is there with its last password.
        """
        path = self.make_path()
        script = (
            "import sys\n"
            "from mailappliance.accounts.users import add_user, set_password\n"
            "path, name = sys.argv[1], sys.argv[2]\n"
            "for n in range(10):\n"
            "    add_user(path, f'{name}{n}@example.test', '{PLAIN}first')\n"
            "    set_password(path, f'{name}{n}@example.test', '{PLAIN}second')\n"
        )
        processes = [
            subprocess.Popen([sys.executable, "-c", script, path, name], stderr=subprocess.PIPE)
            for name in ("p", "q")
        ]
        for process in processes:
            _, stderr = process.communicate()
            self.assertEqual((process.returncode, stderr), (0, b""))
        records = list_users(path)
        self.assertEqual(
            sorted(r.mailbox.key for r in records),
            sorted(f"{name}{n}@example.test" for name in ("p", "q") for n in range(10)),
        )
        self.assertEqual({r.password_hash for r in records}, {"{PLAIN}second"})
