"""
Tests for the C{mailappliance} command line (L{mailappliance.cli}).
"""

import io
import os
import subprocess
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.accounts import hashing
from mailappliance.accounts.hashing import verify_password
from mailappliance.cli.main import config_path, main

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def prompts_then_eof(answers):
    """
    A getpass that gives C{answers}, then raises EOFError (Ctrl-D).
    """
    given = iter(answers)

    def prompt(text):
        for answer in given:
            return answer
        raise EOFError()

    return prompt


class CLITestCase(SynchronousTestCase):
    def setUp(self):
        # Cheap argon2 parameters keep the tests fast; the format is the same.
        self.patch(hashing, "DEFAULT_ARGON2", hashing.Argon2Parameters(memory_cost=256, time_cost=1, parallelism=1))
        self.base = FilePath(self.mktemp())
        self.base.makedirs()
        self.config = self.base.child("mailappliance.toml")
        self.config.setContent(
            b'[server]\nhostname = "mail.example.test"\nlocal_domains = ["example.test"]\n'
            b'[smtp]\nlisten = ["tcp:2525:interface=127.0.0.1"]\n'
        )
        self.users = self.base.child("users")

    def run_cli(self, *argv, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        source = stdin if hasattr(stdin, "isatty") else io.StringIO(stdin)
        status = main(list(argv), stdin=source, stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()


class UserCommandTests(CLITestCase):
    def test_add_and_list(self):
        """
        user add hashes the password from stdin with argon2id; list shows
        the accounts; --config may come after the subcommand.
        """
        status, out, err = self.run_cli("--config", self.config.path, "user", "add", "Alice@Example.test",
                                        stdin="s3cret\n")
        self.assertEqual((status, out, err), (0, "added alice@example.test\n", ""))
        line = self.users.getContent().decode().strip()
        address, stored = line.split(":", 1)
        self.assertEqual(address, "alice@example.test")
        self.assertTrue(stored.startswith("{ARGON2ID}$argon2id$"))
        self.assertTrue(verify_password(stored, b"s3cret"))
        self.assertFalse(verify_password(stored, b"s3cret\n"))
        status, out, err = self.run_cli("user", "list", "--config", self.config.path)
        self.assertEqual((status, out), (0, "alice@example.test\n"))

    def test_add_duplicate(self):
        self.run_cli("-c", self.config.path, "user", "add", "alice@example.test", stdin="a\n")
        status, out, err = self.run_cli("-c", self.config.path, "user", "add", "ALICE@example.test", stdin="b\n")
        self.assertEqual(status, 1)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("alice@example.test", err)
        self.assertIn("already", err)

    def test_add_malformed(self):
        status, out, err = self.run_cli("-c", self.config.path, "user", "add", "not an address", stdin="a\n")
        self.assertEqual(status, 1)
        self.assertEqual(err, "mailappliance: not an address: missing local part or '@'\n")
        self.assertFalse(self.users.exists())

    def test_add_foreign_domain(self):
        status, out, err = self.run_cli("-c", self.config.path, "user", "add", "bob@elsewhere.test", stdin="a\n")
        self.assertEqual(status, 1)
        self.assertIn("not in local_domains", err)

    def test_add_empty_password(self):
        status, out, err = self.run_cli("-c", self.config.path, "user", "add", "bob@example.test", stdin="\n")
        self.assertEqual((status, err), (1, "mailappliance: empty password\n"))

    def test_password_length(self):
        """
        A password of up to 248 bytes (the longest a POP3 PASS line can
        carry) is taken; a longer one is refused.
        """
        status, out, err = self.run_cli("-c", self.config.path, "user", "add", "bob@example.test",
                                        stdin="\u00e9" * 124 + "\n")
        self.assertEqual((status, err), (0, ""))
        status, out, err = self.run_cli("-c", self.config.path, "user", "passwd", "bob@example.test",
                                        stdin="p" * 249 + "\n")
        self.assertEqual((status, err), (1, "mailappliance: password longer than 248 bytes "
                                            "(a POP3 client could not send it)\n"))

    def test_tty_prompts_twice(self):
        """
        On a terminal the password is asked twice (without echo); a
        mismatch is refused.
        """
        answers = iter(["pw1", "pw2"])
        self.patch(__import__("mailappliance.cli.user", fromlist=["x"]), "getpass",
                   type("G", (), {"getpass": staticmethod(lambda prompt: next(answers))}))
        status, out, err = self.run_cli("-c", self.config.path, "user", "add", "bob@example.test",
                                        stdin=FakeTTY(""))
        self.assertEqual((status, err), (1, "mailappliance: the passwords differ\n"))

    def test_tty_end_of_input(self):
        """
        Ctrl-D at either prompt (getpass raises EOFError) is a one-line
        error with exit status 1, for add and passwd, and nothing changes.
        """
        self.run_cli("-c", self.config.path, "user", "add", "alice@example.test", stdin="old\n")
        before = self.users.getContent()
        for answers in ([], ["pw"]):
            for command in (["add", "bob@example.test"], ["passwd", "alice@example.test"]):
                self.patch(__import__("mailappliance.cli.user", fromlist=["x"]), "getpass",
                           type("G", (), {"getpass": staticmethod(prompts_then_eof(answers))}))
                status, out, err = self.run_cli("-c", self.config.path, "user", *command, stdin=FakeTTY(""))
                self.assertEqual((status, out, err), (1, "", "mailappliance: no password given (end of input)\n"))
        self.assertEqual(self.users.getContent(), before)

    def test_passwd(self):
        self.run_cli("-c", self.config.path, "user", "add", "alice@example.test", stdin="old\n")
        status, out, err = self.run_cli("-c", self.config.path, "user", "passwd", "alice@example.test", stdin="new\n")
        self.assertEqual(status, 0, err)
        stored = self.users.getContent().decode().strip().split(":", 1)[1]
        self.assertTrue(verify_password(stored, b"new"))

    def test_passwd_unknown(self):
        status, out, err = self.run_cli("-c", self.config.path, "user", "passwd", "who@example.test", stdin="x\n")
        self.assertEqual(status, 1)
        self.assertIn("who@example.test", err)

    def test_del_keeps_comments(self):
        self.users.setContent(b"# my users\nbob@example.test:{PLAIN}x\n# end\n")
        self.run_cli("-c", self.config.path, "user", "add", "alice@example.test", stdin="a\n")
        status, out, err = self.run_cli("-c", self.config.path, "user", "del", "bob@example.test")
        self.assertEqual(status, 0, err)
        content = self.users.getContent()
        self.assertTrue(content.startswith(b"# my users\n# end\n"), content)
        self.assertIn(b"alice@example.test:{ARGON2ID}", content)

    def test_usage_error(self):
        status, out, err = self.run_cli("-c", self.config.path, "user", "frobnicate")
        self.assertEqual(status, 2)
        self.assertEqual(err.count("\n"), 1)

    def test_bad_config(self):
        self.config.setContent(b"[server]\nhostnme = 1\n")
        status, out, err = self.run_cli("-c", self.config.path, "user", "list")
        self.assertEqual(status, 1)
        self.assertEqual(err, f"mailappliance: {self.config.path}:2: server.hostnme: unknown key "
                              "(known keys: hostname, data_dir, local_domains, postmaster)\n")


class ConfigPathTests(CLITestCase):
    def test_order(self):
        """
        --config first, then a non-empty C{MAILAPPLIANCE_CONFIG}, then
        C{etc/mailappliance.toml} in the current folder, else the built-in
        defaults (L{None}).
        """
        variable = {"MAILAPPLIANCE_CONFIG": "/env/m.toml"}
        cwd = self.base.path
        self.assertEqual(config_path("/given.toml", variable, cwd), "/given.toml")
        self.assertEqual(config_path(None, variable, cwd), "/env/m.toml")
        self.assertIsNone(config_path(None, {"MAILAPPLIANCE_CONFIG": ""}, cwd))
        self.assertIsNone(config_path(None, {}, cwd))
        self.base.child("etc").makedirs()
        self.base.child("etc").child("mailappliance.toml").setContent(b"[server]\n")
        self.assertEqual(config_path(None, {}, cwd), os.path.join(cwd, "etc", "mailappliance.toml"))
        self.assertEqual(config_path(None, variable, cwd), "/env/m.toml")

    def test_commands_use_environment(self):
        """
        Every command, not only sendmail, reads the file named by
        C{MAILAPPLIANCE_CONFIG} when no --config is given.
        """
        self.users.setContent(b"alice@example.test:{PLAIN}x\n")
        out, err = io.StringIO(), io.StringIO()
        status = main(["user", "list"], stdin=io.StringIO(), stdout=out, stderr=err,
                      environ={"MAILAPPLIANCE_CONFIG": self.config.path})
        self.assertEqual((status, out.getvalue(), err.getvalue()), (0, "alice@example.test\n", ""))
        out, err = io.StringIO(), io.StringIO()
        status = main(["check"], stdin=io.StringIO(), stdout=out, stderr=err,
                      environ={"MAILAPPLIANCE_CONFIG": self.config.path})
        self.assertEqual((status, err.getvalue()), (0, ""))
        self.assertIn(f"configuration: {self.config.path}\n", out.getvalue())


class CheckCommandTests(CLITestCase):
    def test_summary(self):
        """
        check prints what would run and says OK.
        """
        self.users.setContent(b"alice@example.test:{PLAIN}x\n")
        self.base.child("aliases").setContent(b"team@example.test: alice@example.test\n")
        status, out, err = self.run_cli("check", "--config", self.config.path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("hostname: mail.example.test\n", out)
        self.assertIn("smtp: tcp:2525:interface=127.0.0.1\n", out)
        self.assertIn("submission: not configured\n", out)
        self.assertIn("users: 1 in ", out)
        self.assertIn("aliases: 1 in ", out)
        self.assertNotIn("does not exist", out)
        self.assertTrue(out.endswith("configuration OK\n"))

    def test_missing_users_file(self):
        """
        A users or aliases file that does not exist is not an error (a new
        installation has no users yet), but check says so.
        """
        self.assertFalse(self.users.exists())
        status, out, err = self.run_cli("check", "--config", self.config.path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"users: 0 in {self.users.path} (the file does not exist)\n", out)
        self.assertTrue(out.endswith("configuration OK\n"))

    def test_certificate_warning(self):
        """
        A certificate that is not for the server's hostname (or expired,
        or not valid yet) is a warning: it can still be served.
        """
        from mailappliance.testing import write_certificate

        write_certificate(self.base.child("tls").path, "other.example.test")
        self.config.setContent(self.config.getContent() + b'\n[tls]\ncertificate = "tls/cert.pem"\nkey = "tls/key.pem"\n')
        status, out, err = self.run_cli("check", "--config", self.config.path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("\nwarning: tls: the certificate is not for mail.example.test (the server's hostname)\n", out)
        self.assertTrue(out.endswith("configuration OK\n"))

    def test_bad_users_file(self):
        self.users.setContent(b"alice@example.test:{PLAIN}x\nbroken line\n")
        status, out, err = self.run_cli("check", "--config", self.config.path)
        self.assertEqual(status, 1)
        self.assertTrue(err.startswith(f"mailappliance: {self.users.path}:2: "), err)
        self.assertEqual(err.count("\n"), 1)

    def test_systemd_listener_not_checkable(self):
        """
        check, run without sockets from systemd, says that it could not
        check a systemd: listener, and still accepts the configuration.
        """
        self.config.setContent(self.config.getContent().replace(b"tcp:2525:interface=127.0.0.1",
                                                                b"systemd:domain=INET:index=0"))
        status, out, err = self.run_cli("check", "--config", self.config.path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("systemd sockets: none passed to this command, so not checked: systemd:domain=INET:index=0 "
                      "(start-up refuses a socket systemd does not pass)\n", out)
        self.assertTrue(out.endswith("configuration OK\n"))

    def test_unknown_resolver(self):
        self.config.setContent(self.config.getContent() + b'[accounts]\nresolvers = ["users", "ldap"]\n')
        status, out, err = self.run_cli("check", "--config", self.config.path)
        self.assertEqual(status, 1)
        self.assertIn("ldap", err)
        self.assertEqual(err.count("\n"), 1)

    def test_console_script(self):
        """
        The installed console script (here: the module) runs and exits
        non-zero with one line on a bad configuration.
        """
        result = subprocess.run(
            [sys.executable, "-m", "mailappliance.cli.main", "--config", "/nonexistent.toml", "check"],
            capture_output=True, cwd=SOURCE_ROOT,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr,
                         b"mailappliance: /nonexistent.toml: cannot read configuration: No such file or directory\n")

    def test_reader_goes_away(self):
        """
        Output into a pipe whose reader has gone (C{check | head -c 10})
        ends quietly: no traceback, status 141 as after SIGPIPE.
        """
        reader, writer = os.pipe()
        os.close(reader)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "mailappliance.cli.main", "--config", self.config.path, "check"],
                stdout=writer, stderr=subprocess.PIPE, cwd=SOURCE_ROOT,
            )
        finally:
            os.close(writer)
        self.assertEqual((result.returncode, result.stderr), (141, b""))

