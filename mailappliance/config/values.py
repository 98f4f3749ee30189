# -*- test-case-name: tests.test_config -*-
"""
Parsers for the configuration's own value syntaxes: durations
(C{"30s"}, C{"4h"}, C{"1h30m"}), C{host:port} pairs and server endpoint
strings (checked with Twisted's own parser, without listening).

Each raises L{ValueError} with a message for the configuration error; the
section reader adds the file, key and line.
"""

from __future__ import annotations

import ipaddress
import re

from twisted.internet import endpoints

from mailappliance.address import AddressError, normalise_domain

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:(\d+)([smhd]))+\Z")
_DURATION_PART = re.compile(r"(\d+)([smhd])")


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
