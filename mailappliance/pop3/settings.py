# -*- test-case-name: tests.test_pop3_settings -*-
"""
What a POP3 service is configured with.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_TRUSTED_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True)
class POP3Settings:
    """
    @ivar hostname: named in the greeting.
    @ivar idle_timeout: seconds without input (or output progress) after
        which a session is closed; RFC 1939 section 3 asks for at least
        10 minutes.
    @ivar trusted_networks: peers that may log in with a plaintext password
        without TLS.
    @ivar max_connections: concurrent sessions of the service.
    @ivar max_connections_per_ip: concurrent sessions from one address.
    """

    hostname: str
    idle_timeout: float = 600.0
    trusted_networks: tuple[Network, ...] = DEFAULT_TRUSTED_NETWORKS
    max_connections: int = 200
    max_connections_per_ip: int = 20

    def is_trusted(self, address: str | None) -> bool:
        """
        @param address: a peer IP address as text (an IPv4-mapped IPv6
            address counts as the IPv4 address), or L{None} for a peer
            that has none.
        @return: whether it is in one of the trusted networks.
        """
        ip = parse_peer_ip(address)
        if ip is None:
            return False
        return any(ip in network for network in self.trusted_networks)


def parse_peer_ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    @return: the address as an C{ipaddress} object, IPv4-mapped IPv6
        addresses unmapped and any zone index dropped; L{None} if it is not
        an IP address.
    """
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
