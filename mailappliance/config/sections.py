# -*- test-case-name: tests.test_config -*-
"""
The builders of the configuration's sections: one function per table of
the file (C{[server]}, C{[smtp]}, C{[submission]}, C{[pop3]}, C{[tls]},
C{[accounts]}, C{[relay]}) that validates its keys and returns its frozen
object, and L{build_config}, which checks the tables and the rules that
span them and assembles the L{Config}.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Any

from mailappliance.address import AddressError, normalise_domain, parse_mailbox
from mailappliance.config.model import (
    SMARTHOST_TLS_MODES,
    AccountsConfig,
    Config,
    Network,
    POP3Config,
    RelayConfig,
    ServerConfig,
    SMTPConfig,
    SubmissionConfig,
    TLSConfig,
)
from mailappliance.config.reader import Context, Section
from mailappliance.config.values import check_endpoint, parse_host_port


def _listen(section: Section, key: str, default: tuple[str, ...], implicit_tls: bool) -> tuple[str, ...]:
    values = section.string_list(key, default)
    for value in values:
        try:
            check_endpoint(value, implicit_tls)
        except ValueError as e:
            raise section.error(key, str(e)) from None
    return values


def _networks(section: Section, key: str, default: tuple[Network, ...]) -> tuple[Network, ...]:
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


def build_config(data: dict[str, Any], ctx: Context) -> Config:
    """
    Validate the parsed tables of a configuration file and build it.

    @param data: the parsed TOML (empty for the built-in defaults).
    @param ctx: the file it came from.
    @raise ConfigError: for any mistake.
    """
    for table in data:
        if table not in _TABLES:
            raise ctx.error(table, None, f"unknown section (known sections: {', '.join(_TABLES)})")
    builtin = ctx.path is None
    server = _server(Section(ctx, "server", data.get("server", {})))
    smtp = _smtp(Section(ctx, "smtp", data["smtp"])) if "smtp" in data else (SMTPConfig() if builtin else None)
    submission = (
        _submission(Section(ctx, "submission", data["submission"]))
        if "submission" in data
        else (SubmissionConfig() if builtin else None)
    )
    pop3 = _pop3(Section(ctx, "pop3", data["pop3"])) if "pop3" in data else (POP3Config() if builtin else None)
    tls = _tls(Section(ctx, "tls", data["tls"])) if "tls" in data else None
    accounts = _accounts(Section(ctx, "accounts", data.get("accounts", {})))
    relay = _relay(Section(ctx, "relay", data.get("relay", {})))
    services = (("smtp", smtp), ("submission", submission), ("pop3", pop3))
    if tls is None:
        for name, section in services:
            if section is not None and section.listen_tls:
                raise ctx.error(name, "listen_tls", "listen_tls needs a [tls] section with certificate and key")
    config = Config(ctx.path, server, smtp, submission, pop3, tls, accounts, relay)
    _check_ports_unique(ctx, config)
    return config


def _tcp_address(endpoint: str) -> tuple[str, int, str] | None:
    """
    The kind (C{tcp} or C{tcp6}), port and interface (C{""} for all) of a
    C{tcp:}/C{tcp6:} endpoint string, as L{check_endpoint} accepted it;
    L{None} for other kinds.
    """
    parts = endpoint.replace("\\:", "\0").split(":")
    if parts[0] not in ("tcp", "tcp6") or len(parts) < 2:
        return None
    port, interface = None, ""
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if not equals and port is None:
            port = name
        elif name == "port":
            port = value
        elif name == "interface":
            interface = value.replace("\0", ":")
    try:
        return parts[0], int(port or ""), interface
    except ValueError:
        return None


def _check_ports_unique(ctx: Context, config: Config) -> None:
    """
    Refuse two listeners of one address family on the same TCP port and
    interface (or one of them on all interfaces): start-up could not bind
    the second, and check would not have said so.
    """
    seen: dict[tuple[str, int], list[tuple[str, str, str]]] = {}
    for name, key, endpoint in config.listeners():
        address = _tcp_address(endpoint)
        if address is None:
            continue
        kind, port, interface = address
        families = [(kind, port)]
        if kind == "tcp6" and interface in ("", "::"):
            # A dual-stack socket on all IPv6 addresses takes the port for
            # IPv4 too (Linux's default).
            interface = ""
            families.append(("tcp", port))
        for family in families:
            for other_name, other_key, other_interface in seen.get(family, []):
                if interface == other_interface or "" in (interface, other_interface):
                    raise ctx.error(name, key, f"port {port} ({endpoint}) is also in {other_name}.{other_key}")
        for family in families:
            seen.setdefault(family, []).append((name, key, interface))


def _server(s: Section) -> ServerConfig:
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


def _smtp(s: Section) -> SMTPConfig:
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


def _submission(s: Section) -> SubmissionConfig:
    d = SubmissionConfig()
    s.check_unknown(("listen", "listen_tls"))
    return SubmissionConfig(
        listen=_listen(s, "listen", d.listen, False),
        listen_tls=_listen(s, "listen_tls", d.listen_tls, True),
    )


def _pop3(s: Section) -> POP3Config:
    d = POP3Config()
    s.check_unknown(("listen", "listen_tls", "idle_timeout"))
    return POP3Config(
        listen=_listen(s, "listen", d.listen, False),
        listen_tls=_listen(s, "listen_tls", d.listen_tls, True),
        idle_timeout=s.duration("idle_timeout", d.idle_timeout),
    )


def _readable_file(s: Section, key: str, path: str) -> None:
    if not os.path.isfile(path):
        raise s.error(key, f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise s.error(key, f"file not readable: {path}")


def _tls(s: Section) -> TLSConfig:
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


def _accounts(s: Section) -> AccountsConfig:
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


def _relay(s: Section) -> RelayConfig:
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
