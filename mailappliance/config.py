# -*- test-case-name: tests.test_config -*-
"""
The main configuration file (SPEC section 2): TOML into frozen, typed
objects.

Everything is validated here, once, so that the rest of the product can
trust its configuration: endpoint strings (with Twisted's own parser),
durations, sizes, networks, host:port pairs, paths, enumerations and
addresses. Unknown sections and keys are errors, and so is a value of the
wrong type. Every error is a L{ConfigError}, whose text is one line naming
the file, the line (where it can be found) and the key::

    etc/mailappliance.toml:14: smtp.max_recipients: expected an integer, got 'ten'

C{tomllib} reports the position of syntax errors but not of values, so for
semantic errors the line is found by scanning the file for the key inside
its table (L{_KeyLocator}).

Relative paths resolve against the folder of the configuration file (for
the built-in defaults, against the current directory).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import endpoints

from mailappliance.address import AddressError, Mailbox, normalise_domain, parse_mailbox

DEFAULT_CONFIG_PATH = os.path.join("etc", "mailappliance.toml")

SMARTHOST_TLS_MODES = ("required", "opportunistic", "none")

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:(\d+)([smhd]))+\Z")
_DURATION_PART = re.compile(r"(\d+)([smhd])")


class ConfigError(Exception):
    """
    A configuration mistake. C{str()} is one line:
    C{FILE:LINE: KEY: WHY} (the line and key when known).
    """

    def __init__(self, file: str | None, key: str | None, why: str, line: int | None = None) -> None:
        self.file = file
        self.key = key
        self.why = why
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<built-in defaults>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        if self.key:
            return f"{where}: {self.key}: {self.why}"
        return f"{where}: {self.why}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ServerConfig:
    hostname: str
    data_dir: str
    local_domains: tuple[str, ...]
    postmaster: Mailbox


@dataclass(frozen=True)
class SMTPConfig:
    listen: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    listen_tls: tuple[str, ...] = ()
    max_message_size: int = 26214400
    max_recipients: int = 100
    trusted_networks: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    idle_timeout: float = 300.0
    max_connections: int = 200
    max_connections_per_ip: int = 20


@dataclass(frozen=True)
class SubmissionConfig:
    listen: tuple[str, ...] = ("tcp:2587:interface=127.0.0.1",)
    listen_tls: tuple[str, ...] = ()


@dataclass(frozen=True)
class POP3Config:
    listen: tuple[str, ...] = ("tcp:2110:interface=127.0.0.1",)
    listen_tls: tuple[str, ...] = ()
    idle_timeout: float = 600.0


@dataclass(frozen=True)
class TLSConfig:
    certificate: str
    key: str


@dataclass(frozen=True)
class AccountsConfig:
    users_file: str
    aliases_file: str | None
    resolvers: tuple[str, ...] = ("aliases", "users")


@dataclass(frozen=True)
class RelayConfig:
    smarthost: tuple[str, int] | None = None
    smarthost_username: str = ""
    smarthost_password_file: str | None = None
    smarthost_tls: str = "required"
    dns_servers: tuple[tuple[str, int], ...] = ()
    mx_port: int = 25
    retry_initial: float = 300.0
    retry_max: float = 4 * 3600.0
    max_queue_lifetime: float = 5 * 86400.0
    delay_warning_after: float = 4 * 3600.0
    connect_timeout: float = 30.0
    max_concurrent_deliveries: int = 20


@dataclass(frozen=True)
class Config:
    """
    The whole configuration. A section that is L{None} was omitted: that
    service is not started. C{[relay]} omitted means MX delivery with the
    default settings (the relay is not a listener; remote mail accepted
    through aliases must still leave).

    @ivar path: the file read, or L{None} for the built-in defaults.
    """

    path: str | None
    server: ServerConfig
    smtp: SMTPConfig | None
    submission: SubmissionConfig | None
    pop3: POP3Config | None
    tls: TLSConfig | None
    accounts: AccountsConfig
    relay: RelayConfig = field(default_factory=RelayConfig)

    @property
    def trusted_networks(self) -> tuple[Network, ...]:
        """
        The one list of trusted networks for every service (SPEC section
        2): C{[smtp] trusted_networks}, or its default when C{[smtp]} is
        omitted.
        """
        return (self.smtp or SMTPConfig()).trusted_networks

    @property
    def limits(self) -> SMTPConfig:
        """
        The SMTP limits, which the submission service shares with C{[smtp]}.
        """
        return self.smtp or SMTPConfig()

    @property
    def queue_dir(self) -> str:
        return os.path.join(self.server.data_dir, "queue")

    @property
    def mail_dir(self) -> str:
        return os.path.join(self.server.data_dir, "mail")


# ---------------------------------------------------------------------------
# Loading


def default_config_path(cwd: str | None = None) -> str | None:
    """
    The configuration used when none is given (SPEC section 1):
    C{etc/mailappliance.toml} in the current directory if it exists.

    @return: its path, or L{None} for the built-in defaults.
    """
    path = os.path.join(cwd or os.getcwd(), DEFAULT_CONFIG_PATH)
    return path if os.path.exists(path) else None


def load_config(path: str | None) -> Config:
    """
    Read and validate a configuration file.

    @param path: the file, or L{None} for the built-in defaults (loopback
        high ports, data in C{./var}, local domain C{localhost}).
    @raise ConfigError: for any mistake, with a one-line message.
    """
    if path is None:
        return _build({}, _Context(None, "", os.getcwd()))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, None, f"cannot read configuration: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        line = None
        m = re.search(r"\(at line (\d+), column \d+\)", message)
        if m:
            line = int(m.group(1))
            message = message[: m.start()].rstrip()
        raise ConfigError(path, None, f"invalid TOML: {message}", line) from None
    base = os.path.dirname(os.path.abspath(path))
    return _build(data, _Context(path, text, base))


class _KeyLocator:
    """
    Finds the line of C{[table] key = ...} in the TOML text, for error
    messages (tomllib gives no positions for values).
    """

    _HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(?:#.*)?$")
    _KEY = re.compile(r'\s*"?([A-Za-z0-9_-]+)"?\s*=')

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, str], int] = {}
        self._tables: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                table = header.group(1)
                self._tables.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self._lines.setdefault((table, key.group(1)), number)

    def line(self, table: str, key: str | None) -> int | None:
        if key is None:
            return self._tables.get(table)
        return self._lines.get((table, key), self._tables.get(table))


class _Context:
    def __init__(self, path: str | None, text: str, base: str) -> None:
        self.path = path
        self.base = base
        self.locator = _KeyLocator(text)

    def error(self, table: str, key: str | None, why: str) -> ConfigError:
        dotted = f"{table}.{key}" if key else f"[{table}]"
        return ConfigError(self.path, dotted, why, self.locator.line(table, key))


class _Section:
    """
    Typed access to one table, recording which keys were used so that the
    rest can be reported as unknown.
    """

    def __init__(self, ctx: _Context, name: str, data: Any) -> None:
        self.ctx = ctx
        self.name = name
        if not isinstance(data, dict):
            raise ctx.error(name, None, "must be a table")
        self.data = data

    def error(self, key: str, why: str) -> ConfigError:
        return self.ctx.error(self.name, key, why)

    def _get(self, key: str, kind: type | tuple[type, ...], what: str, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"expected {what}, got {_show(value)}")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {what}, got {_show(value)}")
        return value

    def string(self, key: str, default: Any, allow_empty: bool = True) -> Any:
        value = self._get(key, str, "a string", default)
        if value == "" and not allow_empty and key in self.data:
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._get(key, bool, "true or false", default)

    def integer(self, key: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
        value = self._get(key, int, "an integer", default)
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value}")
        return value

    def string_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, list, "a list of strings", None)
        if value is None:
            return default
        for item in value:
            if not isinstance(item, str):
                raise self.error(key, f"expected a list of strings, found {_show(item)}")
        return tuple(value)

    def duration(self, key: str, default: float, allow_zero: bool = False) -> float:
        text = self._get(key, str, 'a duration such as "30s", "15m", "4h" or "5d"', None)
        if text is None:
            return default
        try:
            seconds = parse_duration(text)
        except ValueError as e:
            raise self.error(key, str(e)) from None
        if seconds == 0 and not allow_zero:
            raise self.error(key, "must be longer than 0s")
        return float(seconds)

    def path(self, key: str, default: str | None) -> str | None:
        """
        A path, resolved against the configuration's folder. An absent key
        gives the default (resolved likewise); an empty string gives None.
        """
        value = self.string(key, None)
        if value is None:
            return None if default is None else self.ctx_path(default)
        if value == "":
            return None
        if "\0" in value:
            raise self.error(key, "path contains a NUL character")
        return self.ctx_path(value)

    def ctx_path(self, value: str) -> str:
        return os.path.normpath(os.path.join(self.ctx.base, os.path.expanduser(value)))

    def check_unknown(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in known:
                hint = ", ".join(known)
                raise self.error(key, f"unknown key (known keys: {hint})")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def parse_duration(text: str) -> int:
    """
    Parse C{"30s"}, C{"15m"}, C{"4h"}, C{"5d"} (or a combination such as
    C{"1h30m"}) into seconds.

    @raise ValueError: with a message for the configuration error.
    """
    if not _DURATION.match(text.strip()):
        raise ValueError(f'invalid duration {text!r}: use a number and a unit s, m, h or d, like "30s" or "4h"')
    return sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """
    Parse C{host}, C{host:port}, C{[v6]:port} or a bare IPv6 address.

    @raise ValueError: with a message for the configuration error.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty host")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"unterminated [ in {text!r}")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"unexpected {rest!r} after ] in {text!r}")
    elif text.count(":") > 1:
        host, port_text = text, None
    else:
        host, _, port_text = text.partition(":")
        port_text = port_text if ":" in text else None
    if port_text is None or port_text == "":
        if port_text == "":
            raise ValueError(f"missing port after ':' in {text!r}")
        port = default_port
    else:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"invalid port {port_text!r}")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = normalise_domain(host)
        except AddressError as e:
            raise ValueError(f"invalid host {host!r}: {e.reason}") from None
    return host, port


def check_endpoint(description: str, implicit_tls: bool = False) -> None:
    """
    Validate a server endpoint string with Twisted's own parser, without
    listening.

    @raise ValueError: with a message for the configuration error.
    """
    if implicit_tls and description.split(":", 1)[0].lower() in ("ssl", "tls"):
        raise ValueError(
            f"{description!r}: listen_tls takes a plain tcp: endpoint; the product adds TLS from [tls]"
        )
    try:
        args, kwargs = endpoints._parse(description)  # type: ignore[attr-defined]
    except Exception as e:  # the parser's own errors are ValueError and friends
        raise ValueError(f"invalid endpoint {description!r}: {e}") from None
    kind = args[0].lower() if args else ""
    if kind in ("tcp", "tcp6"):
        port = args[1] if len(args) > 1 else kwargs.get("port")
        if port is None or not str(port).isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"invalid endpoint {description!r}: port must be 0-65535")
    if kind == "systemd":
        # The systemd parser opens the inherited descriptors when it runs,
        # which is only possible under systemd; check the arguments only.
        if kwargs.get("domain", "").upper() not in ("INET", "INET6", "UNIX"):
            raise ValueError(f"invalid endpoint {description!r}: domain must be INET, INET6 or UNIX")
        if "index" in kwargs and not str(kwargs["index"]).isdigit():
            raise ValueError(f"invalid endpoint {description!r}: index must be a number")
        if "index" not in kwargs and "name" not in kwargs:
            raise ValueError(f"invalid endpoint {description!r}: give index= or name=")
        return
    try:
        endpoints.serverFromString(_NoReactor(), description)
    except Exception as e:
        raise ValueError(f"invalid endpoint {description!r}: {e}") from None


class _NoReactor:
    """
    Stands in for a reactor while endpoint strings are parsed: the parsers
    only store it.
    """


def _listen(section: _Section, key: str, default: tuple[str, ...], implicit_tls: bool) -> tuple[str, ...]:
    values = section.string_list(key, default)
    for value in values:
        try:
            check_endpoint(value, implicit_tls)
        except ValueError as e:
            raise section.error(key, str(e)) from None
    return values


def _networks(section: _Section, key: str, default: tuple[Network, ...]) -> tuple[Network, ...]:
    if key not in section.data:
        return default
    result = []
    for text in section.string_list(key, ()):
        try:
            result.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise section.error(key, f"invalid network {text!r}: use CIDR such as \"192.168.1.0/24\"") from None
    return tuple(result)


_TABLES = ("server", "smtp", "submission", "pop3", "tls", "accounts", "relay")


def _build(data: dict[str, Any], ctx: _Context) -> Config:
    for table in data:
        if table not in _TABLES:
            raise ctx.error(table, None, f"unknown section (known sections: {', '.join(_TABLES)})")
    builtin = ctx.path is None
    server = _server(_Section(ctx, "server", data.get("server", {})))
    smtp = _smtp(_Section(ctx, "smtp", data["smtp"])) if "smtp" in data else (SMTPConfig() if builtin else None)
    submission = (
        _submission(_Section(ctx, "submission", data["submission"]))
        if "submission" in data
        else (SubmissionConfig() if builtin else None)
    )
    pop3 = _pop3(_Section(ctx, "pop3", data["pop3"])) if "pop3" in data else (POP3Config() if builtin else None)
    tls = _tls(_Section(ctx, "tls", data["tls"])) if "tls" in data else None
    accounts = _accounts(_Section(ctx, "accounts", data.get("accounts", {})))
    relay = _relay(_Section(ctx, "relay", data.get("relay", {})))
    if tls is None:
        for name, section in (("smtp", smtp), ("submission", submission), ("pop3", pop3)):
            if section is not None and section.listen_tls:
                raise ctx.error(name, "listen_tls", "listen_tls needs a [tls] section with certificate and key")
    return Config(ctx.path, server, smtp, submission, pop3, tls, accounts, relay)


def _server(s: _Section) -> ServerConfig:
    s.check_unknown(("hostname", "data_dir", "local_domains", "postmaster"))
    hostname = s.string("hostname", None, allow_empty=False)
    if hostname is None:
        hostname = socket.getfqdn() or "localhost"
    try:
        hostname = normalise_domain(hostname)
    except AddressError as e:
        raise s.error("hostname", f"invalid host name {hostname!r}: {e.reason}") from None
    data_dir = s.path("data_dir", "var")
    if data_dir is None:
        raise s.error("data_dir", "must not be empty")
    domains = []
    for text in s.string_list("local_domains", ("localhost",)):
        try:
            domains.append(normalise_domain(text.strip()))
        except AddressError as e:
            raise s.error("local_domains", f"invalid domain {text!r}: {e.reason}") from None
    postmaster_text = s.string("postmaster", None, allow_empty=False)
    if postmaster_text is None:
        if not domains:
            raise s.error("postmaster", "needed when local_domains is empty")
        postmaster_text = f"postmaster@{domains[0]}"
    try:
        postmaster = parse_mailbox(postmaster_text)
    except AddressError as e:
        raise s.error("postmaster", f"invalid address {postmaster_text!r}: {e.reason}") from None
    return ServerConfig(hostname, data_dir, tuple(dict.fromkeys(domains)), postmaster)


def _smtp(s: _Section) -> SMTPConfig:
    d = SMTPConfig()
    s.check_unknown(
        (
            "listen",
            "listen_tls",
            "max_message_size",
            "max_recipients",
            "trusted_networks",
            "idle_timeout",
            "max_connections",
            "max_connections_per_ip",
        )
    )
    return SMTPConfig(
        listen=_listen(s, "listen", d.listen, False),
        listen_tls=_listen(s, "listen_tls", d.listen_tls, True),
        max_message_size=s.integer("max_message_size", d.max_message_size, minimum=1024),
        max_recipients=s.integer("max_recipients", d.max_recipients),
        trusted_networks=_networks(s, "trusted_networks", d.trusted_networks),
        idle_timeout=s.duration("idle_timeout", d.idle_timeout),
        max_connections=s.integer("max_connections", d.max_connections),
        max_connections_per_ip=s.integer("max_connections_per_ip", d.max_connections_per_ip),
    )


def _submission(s: _Section) -> SubmissionConfig:
    d = SubmissionConfig()
    s.check_unknown(("listen", "listen_tls"))
    return SubmissionConfig(
        listen=_listen(s, "listen", d.listen, False),
        listen_tls=_listen(s, "listen_tls", d.listen_tls, True),
    )


def _pop3(s: _Section) -> POP3Config:
    d = POP3Config()
    s.check_unknown(("listen", "listen_tls", "idle_timeout"))
    return POP3Config(
        listen=_listen(s, "listen", d.listen, False),
        listen_tls=_listen(s, "listen_tls", d.listen_tls, True),
        idle_timeout=s.duration("idle_timeout", d.idle_timeout),
    )


def _readable_file(s: _Section, key: str, path: str) -> None:
    if not os.path.isfile(path):
        raise s.error(key, f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise s.error(key, f"file not readable: {path}")


def _tls(s: _Section) -> TLSConfig:
    s.check_unknown(("certificate", "key"))
    for key in ("certificate", "key"):
        if key not in s.data:
            raise s.error(key, "missing (a [tls] section needs certificate and key)")
    certificate = s.path("certificate", None)
    key = s.path("key", None)
    if certificate is None:
        raise s.error("certificate", "must not be empty")
    if key is None:
        raise s.error("key", "must not be empty")
    _readable_file(s, "certificate", certificate)
    _readable_file(s, "key", key)
    return TLSConfig(certificate, key)


def _accounts(s: _Section) -> AccountsConfig:
    s.check_unknown(("users_file", "aliases_file", "resolvers"))
    users_file = s.path("users_file", "users")
    if users_file is None:
        raise s.error("users_file", "must not be empty")
    aliases_file = s.path("aliases_file", "aliases")
    resolvers = s.string_list("resolvers", ("aliases", "users"))
    if not resolvers:
        raise s.error("resolvers", "name at least one resolver")
    for name in resolvers:
        if not re.match(r"[A-Za-z0-9_.-]+\Z", name):
            raise s.error("resolvers", f"invalid resolver name {name!r}")
    if len(set(resolvers)) != len(resolvers):
        raise s.error("resolvers", "a resolver is named twice")
    return AccountsConfig(users_file, aliases_file, resolvers)


def _relay(s: _Section) -> RelayConfig:
    d = RelayConfig()
    s.check_unknown(
        (
            "smarthost",
            "smarthost_username",
            "smarthost_password_file",
            "smarthost_tls",
            "dns_servers",
            "mx_port",
            "retry_initial",
            "retry_max",
            "max_queue_lifetime",
            "delay_warning_after",
            "connect_timeout",
            "max_concurrent_deliveries",
        )
    )
    smarthost_text = s.string("smarthost", "")
    smarthost = None
    if smarthost_text:
        try:
            smarthost = parse_host_port(smarthost_text, 25)
        except ValueError as e:
            raise s.error("smarthost", str(e)) from None
    username = s.string("smarthost_username", "")
    password_file = s.path("smarthost_password_file", None)
    if username and password_file is None:
        raise s.error("smarthost_password_file", "needed when smarthost_username is set")
    if password_file is not None:
        _readable_file(s, "smarthost_password_file", password_file)
    tls_mode = s.string("smarthost_tls", d.smarthost_tls)
    if tls_mode not in SMARTHOST_TLS_MODES:
        raise s.error("smarthost_tls", f"must be one of {', '.join(SMARTHOST_TLS_MODES)}, got {tls_mode!r}")
    dns_servers = []
    for text in s.string_list("dns_servers", ()):
        try:
            host, port = parse_host_port(text, 53)
            ipaddress.ip_address(host)
        except ValueError as e:
            raise s.error("dns_servers", f"{e} (use an IP address, e.g. \"127.0.0.1:5353\")") from None
        dns_servers.append((host, port))
    retry_initial = s.duration("retry_initial", d.retry_initial)
    retry_max = s.duration("retry_max", d.retry_max)
    if retry_max < retry_initial:
        raise s.error("retry_max", "must not be shorter than retry_initial")
    return RelayConfig(
        smarthost=smarthost,
        smarthost_username=username,
        smarthost_password_file=password_file,
        smarthost_tls=tls_mode,
        dns_servers=tuple(dns_servers),
        mx_port=s.integer("mx_port", d.mx_port, minimum=1, maximum=65535),
        retry_initial=retry_initial,
        retry_max=retry_max,
        max_queue_lifetime=s.duration("max_queue_lifetime", d.max_queue_lifetime),
        delay_warning_after=s.duration("delay_warning_after", d.delay_warning_after, allow_zero=True),
        connect_timeout=s.duration("connect_timeout", d.connect_timeout),
        max_concurrent_deliveries=s.integer("max_concurrent_deliveries", d.max_concurrent_deliveries),
    )
