"""
Tests for L{mailappliance.config}.
"""

import ipaddress
import os

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from mailappliance.config import (
    ConfigError,
    default_config_path,
    load_config,
    parse_duration,
    parse_host_port,
)

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), "etc", "mailappliance.toml")


class ConfigTestsMixin:
    def write(self, text, name="mailappliance.toml"):
        directory = FilePath(self.mktemp())
        directory.makedirs()
        path = directory.child(name)
        path.setContent(text.encode("utf-8"))
        return path.path

    def load(self, text):
        return load_config(self.write(text))

    def assertError(self, text, expected, line=None):
        path = self.write(text)
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        prefix = path if line is None else f"{path}:{line}"
        self.assertEqual(message, f"{prefix}: {expected}")
        return cm.exception


class LoadTests(ConfigTestsMixin, SynchronousTestCase):
    def test_example(self):
        """
        The shipped example loads, with every service configured.
        """
        config = load_config(EXAMPLE)
        etc = os.path.dirname(EXAMPLE)
        self.assertEqual(config.server.hostname, "mail.example.test")
        self.assertEqual(config.server.data_dir, os.path.normpath(os.path.join(etc, "..", "var")))
        self.assertEqual(config.server.local_domains, ("example.test", "localhost"))
        self.assertEqual(str(config.server.postmaster), "postmaster@example.test")
        self.assertEqual(config.smtp.listen, ("tcp:2525:interface=127.0.0.1",))
        self.assertEqual(config.submission.listen, ("tcp:2587:interface=127.0.0.1",))
        self.assertEqual(config.pop3.idle_timeout, 600.0)
        self.assertIsNone(config.tls)
        self.assertEqual(config.accounts.users_file, os.path.join(etc, "users"))
        self.assertEqual(config.relay.smarthost, None)
        self.assertEqual(config.relay.retry_max, 4 * 3600)

    def test_builtin_defaults(self):
        """
        Without a file: loopback high ports, ./var, local domain localhost,
        every service on.
        """
        config = load_config(None)
        self.assertIsNone(config.path)
        self.assertEqual(config.server.local_domains, ("localhost",))
        self.assertEqual(config.server.data_dir, os.path.join(os.getcwd(), "var"))
        self.assertEqual(config.smtp.listen, ("tcp:2525:interface=127.0.0.1",))
        self.assertEqual(config.submission.listen, ("tcp:2587:interface=127.0.0.1",))
        self.assertEqual(config.pop3.listen, ("tcp:2110:interface=127.0.0.1",))

    def test_minimal(self):
        """
        Only [server]: no listening service, defaults elsewhere, paths
        relative to the file's folder, postmaster derived.
        """
        path = self.write('[server]\nhostname = "mx.example.test"\nlocal_domains = ["Example.TEST"]\n')
        config = load_config(path)
        self.assertIsNone(config.smtp)
        self.assertIsNone(config.submission)
        self.assertIsNone(config.pop3)
        self.assertEqual(config.server.local_domains, ("example.test",))
        self.assertEqual(str(config.server.postmaster), "postmaster@example.test")
        self.assertEqual(config.server.data_dir, os.path.join(os.path.dirname(path), "var"))
        self.assertEqual(config.trusted_networks[0], ipaddress.ip_network("127.0.0.0/8"))
        self.assertEqual(config.accounts.resolvers, ("aliases", "users"))

    def test_values(self):
        """
        Durations, sizes, networks, smarthost and DNS servers are parsed.
        """
        secret = self.write("s3cret\n", "password")
        config = self.load(
            f"""
[server]
hostname = "mx.example.test"
[smtp]
max_message_size = 1048576
trusted_networks = ["192.168.1.0/24", "fd00::/8", "10.0.0.1"]
idle_timeout = "1h30m"
[relay]
smarthost = "[2001:db8::1]:587"
smarthost_username = "me"
smarthost_password_file = "{secret}"
smarthost_tls = "opportunistic"
dns_servers = ["127.0.0.1:5353", "::1"]
delay_warning_after = "0s"
"""
        )
        self.assertEqual(config.smtp.max_message_size, 1048576)
        self.assertEqual(config.smtp.idle_timeout, 5400.0)
        self.assertEqual(
            config.smtp.trusted_networks,
            (
                ipaddress.ip_network("192.168.1.0/24"),
                ipaddress.ip_network("fd00::/8"),
                ipaddress.ip_network("10.0.0.1/32"),
            ),
        )
        self.assertEqual(config.relay.smarthost, ("2001:db8::1", 587))
        self.assertEqual(config.relay.smarthost_password_file, secret)
        self.assertEqual(config.relay.dns_servers, (("127.0.0.1", 5353), ("::1", 53)))
        self.assertEqual(config.relay.delay_warning_after, 0.0)

    def test_default_path(self):
        """
        etc/mailappliance.toml in the current directory is the default when
        it exists.
        """
        base = FilePath(self.mktemp())
        self.assertIsNone(default_config_path(base.path))
        base.child("etc").makedirs()
        base.child("etc").child("mailappliance.toml").setContent(b"")
        self.assertEqual(default_config_path(base.path), os.path.join(base.path, "etc", "mailappliance.toml"))


class ErrorTests(ConfigTestsMixin, SynchronousTestCase):
    """
    Every mistake is one line naming the file, the line and the key.
    """

    def test_syntax(self):
        self.assertError('[server]\nhostname = \n', "invalid TOML: Invalid value", line=2)

    def test_unknown_section(self):
        self.assertError(
            "[server]\n[smpt]\nlisten = []\n",
            "[smpt]: unknown section (known sections: server, smtp, submission, pop3, tls, accounts, relay)",
            line=2,
        )

    def test_unknown_key(self):
        e = self.assertError('[server]\nhostname = "a.test"\n\n[smtp]\nmax_recipient = 5\n',
                             "smtp.max_recipient: unknown key (known keys: listen, listen_tls, "
                             "max_message_size, max_recipients, trusted_networks, idle_timeout, "
                             "max_connections, max_connections_per_ip)", line=5)
        self.assertEqual(e.key, "smtp.max_recipient")

    def test_wrong_type(self):
        self.assertError('[server]\n[smtp]\nmax_recipients = "ten"\n',
                         "smtp.max_recipients: expected an integer, got 'ten'", line=3)

    def test_bool_is_not_int(self):
        self.assertError("[server]\n[smtp]\nmax_recipients = true\n",
                         "smtp.max_recipients: expected an integer, got true", line=3)

    def test_negative(self):
        self.assertError("[server]\n[smtp]\nmax_connections = 0\n",
                         "smtp.max_connections: must be at least 1, got 0", line=3)

    def test_duration(self):
        self.assertError('[server]\n[pop3]\nidle_timeout = "10 minutes"\n',
                         "pop3.idle_timeout: invalid duration '10 minutes': use a number and a unit "
                         's, m, h or d, like "30s" or "4h"', line=3)

    def test_zero_duration(self):
        self.assertError('[server]\n[smtp]\nidle_timeout = "0s"\n',
                         "smtp.idle_timeout: must be longer than 0s", line=3)

    def test_endpoint(self):
        self.assertError('[server]\n[smtp]\nlisten = ["tcp:smtp"]\n',
                         "smtp.listen: invalid endpoint 'tcp:smtp': port must be 0-65535", line=3)

    def test_endpoint_type(self):
        self.assertError('[server]\n[smtp]\nlisten = ["carrier-pigeon:25"]\n',
                         "smtp.listen: invalid endpoint 'carrier-pigeon:25': "
                         "Unknown endpoint type: 'carrier-pigeon'", line=3)

    def test_systemd_endpoint(self):
        """
        systemd endpoints are checked without needing inherited sockets.
        """
        config = self.load('[server]\n[smtp]\nlisten = ["systemd:domain=INET:index=0"]\n')
        self.assertEqual(config.smtp.listen, ("systemd:domain=INET:index=0",))
        self.assertError('[server]\n[smtp]\nlisten = ["systemd:domain=INET"]\n',
                         "smtp.listen: invalid endpoint 'systemd:domain=INET': give index= or name=",
                         line=3)

    def test_listen_tls_is_plain(self):
        self.assertError('[server]\n[pop3]\nlisten_tls = ["ssl:995"]\n',
                         "pop3.listen_tls: 'ssl:995': listen_tls takes a plain tcp: endpoint; "
                         "the product adds TLS from [tls]", line=3)

    def test_same_port_twice(self):
        """
        Two listeners of one address family on one TCP port and interface,
        or one of them on all interfaces, are refused (start-up could not
        bind the second); other interfaces, families or ports are fine.
        """
        self.assertError('[server]\n[smtp]\nlisten = ["tcp:2525:interface=127.0.0.1"]\n'
                         '[pop3]\nlisten = ["tcp:2525:interface=127.0.0.1"]\n',
                         "pop3.listen: port 2525 (tcp:2525:interface=127.0.0.1) is also in smtp.listen", line=5)
        self.assertError('[server]\n[smtp]\nlisten = ["tcp:2525", "tcp:port=2525:interface=127.0.0.1"]\n',
                         "smtp.listen: port 2525 (tcp:port=2525:interface=127.0.0.1) is also in smtp.listen",
                         line=3)
        self.assertError('[server]\n[submission]\nlisten = ["tcp6:2587:interface=\\\\:\\\\:1"]\n'
                         '[pop3]\nlisten = ["tcp6:2587"]\n',
                         "pop3.listen: port 2587 (tcp6:2587) is also in submission.listen", line=5)
        config = self.load('[server]\n[smtp]\nlisten = ["tcp:2525:interface=127.0.0.1"]\n'
                           '[pop3]\nlisten = ["tcp:2525:interface=127.0.0.2", "tcp:2110", "tcp6:2110:interface=\\\\:\\\\:1"]\n')
        self.assertEqual(config.pop3.listen, ("tcp:2525:interface=127.0.0.2", "tcp:2110", "tcp6:2110:interface=\\:\\:1"))
        self.assertError('[server]\n[pop3]\nlisten = ["tcp:2110", "tcp6:2110"]\n',
                         "pop3.listen: port 2110 (tcp6:2110) is also in pop3.listen", line=3)

    def test_listen_tls_needs_tls(self):
        self.assertError('[server]\n[submission]\nlisten_tls = ["tcp:2465"]\n',
                         "submission.listen_tls: listen_tls needs a [tls] section with certificate and key",
                         line=3)

    def test_network(self):
        self.assertError('[server]\n[smtp]\ntrusted_networks = ["192.168.1.0/33"]\n',
                         "smtp.trusted_networks: invalid network '192.168.1.0/33': use CIDR such as "
                         '"192.168.1.0/24"', line=3)

    def test_domain(self):
        self.assertError('[server]\nlocal_domains = ["exa mple.test"]\n',
                         "server.local_domains: invalid domain 'exa mple.test': invalid domain label "
                         "'exa mple'", line=2)

    def test_postmaster(self):
        self.assertError('[server]\npostmaster = "nobody"\n',
                         "server.postmaster: invalid address 'nobody': missing local part or '@'", line=2)

    def test_enumeration(self):
        self.assertError('[server]\n[relay]\nsmarthost_tls = "maybe"\n',
                         "relay.smarthost_tls: must be one of required, opportunistic, none, got 'maybe'",
                         line=3)

    def test_smarthost(self):
        self.assertError('[server]\n[relay]\nsmarthost = "relay.example:99999"\n',
                         "relay.smarthost: invalid port '99999'", line=3)

    def test_password_file_missing(self):
        path = self.write('[server]\n[relay]\nsmarthost = "relay.example:587"\n'
                          'smarthost_username = "u"\nsmarthost_password_file = "nope"\n')
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        self.assertEqual(
            str(cm.exception),
            f"{path}:5: relay.smarthost_password_file: no such file: {os.path.join(os.path.dirname(path), 'nope')}",
        )

    def test_tls_missing_file(self):
        path = self.write('[server]\n[tls]\ncertificate = "cert.pem"\nkey = "key.pem"\n')
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        self.assertIn(":3: tls.certificate: no such file: ", str(cm.exception))

    def test_tls_needs_both(self):
        self.assertError('[server]\n[tls]\ncertificate = "cert.pem"\n',
                         "tls.key: missing (a [tls] section needs certificate and key)", line=2)

    def test_dns_server_must_be_ip(self):
        self.assertError('[server]\n[relay]\ndns_servers = ["ns.example:53"]\n',
                         "relay.dns_servers: 'ns.example' does not appear to be an IPv4 or IPv6 address "
                         '(use an IP address, e.g. "127.0.0.1:5353")', line=3)

    def test_retry_order(self):
        self.assertError('[server]\n[relay]\nretry_initial = "1h"\nretry_max = "5m"\n',
                         "relay.retry_max: must not be shorter than retry_initial", line=4)

    def test_section_not_table(self):
        self.assertError('server = 5\n', "[server]: must be a table")

    def test_missing_file(self):
        with self.assertRaises(ConfigError) as cm:
            load_config("/nonexistent/mailappliance.toml")
        self.assertEqual(str(cm.exception),
                         "/nonexistent/mailappliance.toml: cannot read configuration: No such file or directory")

    def test_not_utf8(self):
        path = self.write("")
        with open(path, "wb") as f:
            f.write(b"[server]\nhostname = \"\xff\"\n")
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        self.assertIn("not UTF-8", str(cm.exception))


class ParserTests(SynchronousTestCase):
    def test_durations(self):
        self.assertEqual(parse_duration("30s"), 30)
        self.assertEqual(parse_duration("15m"), 900)
        self.assertEqual(parse_duration("4h"), 14400)
        self.assertEqual(parse_duration("5d"), 432000)
        self.assertEqual(parse_duration("1d2h"), 93600)
        for bad in ("", "5", "s", "-5s", "5x", "1.5h"):
            self.assertRaises(ValueError, parse_duration, bad)

    def test_host_port(self):
        self.assertEqual(parse_host_port("relay.example", 25), ("relay.example", 25))
        self.assertEqual(parse_host_port("Relay.Example:2525", 25), ("relay.example", 2525))
        self.assertEqual(parse_host_port("[::1]:53", 53), ("::1", 53))
        self.assertEqual(parse_host_port("::1", 53), ("::1", 53))
        for bad in ("", "host:", "host:0", "[::1", "bad host:25"):
            self.assertRaises(ValueError, parse_host_port, bad, 25)
