# -*- test-case-name: tests.test_config -*-
"""
The configuration as the rest of the product sees it: frozen, typed
objects (one per section of the file, and L{Config} for the whole), and
L{ConfigError}, the one exception for every configuration mistake.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from mailappliance.address import Mailbox

SMARTHOST_TLS_MODES = ("required", "opportunistic", "none")


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

    def listeners(self) -> list[tuple[str, str, str]]:
        """
        Every listener of the configuration, in file order of the services.

        @return: C{(service, key, endpoint description)} triples, the
            service and key as in the file (C{"pop3"}, C{"listen_tls"}).
        """
        result = []
        for name in ("smtp", "submission", "pop3"):
            section = getattr(self, name)
            if section is None:
                continue
            for key in ("listen", "listen_tls"):
                result += [(name, key, description) for description in getattr(section, key)]
        return result

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
