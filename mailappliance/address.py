# -*- test-case-name: tests.test_address -*-
"""
Parsing and normalising mailboxes (RFC 5321 section 4.1.2, RFC 6531).

Every part of the product that reads an address from the outside world
(SMTP paths, the users and aliases files, the CLI, login names) goes through
this module, so that there is exactly one idea of what an address is and how
two addresses compare.

The rules:

  - A mailbox is C{local-part "@" domain}. The local part is a dot-atom or a
    quoted string; a quoted string whose content is a valid dot-atom is
    unquoted (C{"john"@x} is C{john@x}). UTF-8 in the local part (and
    U-labels in the domain) are allowed only when the caller says so
    (C{allow_utf8}, i.e. the SMTPUTF8 parameter was given).
  - The domain is a host name (converted to lower-case A-labels with IDNA
    2008 / UTS 46) or an address literal (C{[192.0.2.1]},
    C{[IPv6:2001:db8::1]}).
  - Limits (RFC 5321 section 4.5.3.1): local part 64 octets, domain 255
    octets, path 256 octets.
  - Addresses compare case-insensitively (SPEC section 3): L{Mailbox.key}
    is the lower-cased C{local@domain} used for every lookup and folder
    name; L{Mailbox.local} keeps the spelling the sender used, for relaying.

Nothing here raises anything but L{AddressError} on bad input, whatever the
input (this is checked with hypothesis in the tests).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

import idna

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

# RFC 5322 atext, as used by RFC 5321's Atom.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_ATOM_ASCII = re.compile(r"[%s]+(?:\.[%s]+)*\Z" % (_ATEXT, _ATEXT))
# RFC 6531 extends atext with any non-ASCII UTF-8 character.
_DOT_ATOM_UTF8 = re.compile(
    r"[%s\u0080-\U0010ffff]+(?:\.[%s\u0080-\U0010ffff]+)*\Z" % (_ATEXT, _ATEXT)
)
# qtextSMTP: %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP: %d92 %d32-126
_QCONTENT_ASCII = re.compile(r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\Z')
_QCONTENT_UTF8 = re.compile(
    r'(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*\Z'
)
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# Source route: "@a.example,@b.example:" before the mailbox (RFC 5321 4.1.2).
_SOURCE_ROUTE = re.compile(r"@[^,:@<>]+(?:,@[^,:@<>]+)*:")


class AddressError(ValueError):
    """
    An address could not be parsed or is not acceptable.

    @ivar reason: a short human-readable explanation, suitable for an SMTP
        reply text or a configuration error.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fold_local(local: str) -> str:
    """
    The form of a local part that identifies one of our mailboxes: lower
    case and, when it is not ASCII, in Unicode normal form C (RFC 6532
    section 3.1), so that the composed and decomposed spellings of C{zoë}
    are one user, one alias and one folder. Only our own lookups use it: a
    remote address is sent with its local part as given (RFC 5321 section
    2.4: only the destination host interprets it).
    """
    if local.isascii():
        return local.lower()
    return unicodedata.normalize("NFC", local).lower()


@dataclass(frozen=True)
class Mailbox:
    """
    A parsed, normalised mailbox.

    @ivar local: the local part as it should be written on the wire: unquoted
        when it is a dot-atom, else a quoted string with its quotes.
    @ivar domain: the domain in lower-case ASCII (A-labels), or an address
        literal in brackets.
    """

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """
        The case-insensitive identity of this mailbox: C{local@domain}, all
        lower-case (L{fold_local}). Use it for lookups, comparisons and
        folder names.
        """
        return f"{fold_local(self.local)}@{self.domain}"

    @property
    def needs_smtputf8(self) -> bool:
        """
        Whether this mailbox can only be transmitted with SMTPUTF8.
        """
        return not self.local.isascii()

    def without_subaddress(self, separator: str = "+") -> Mailbox | None:
        """
        The mailbox with its sub-address (C{user+tag} to C{user}) removed, or
        L{None} if it has none. A local part that starts with the separator
        has no base and so no sub-address.
        """
        if self.local.startswith('"'):
            return None
        base, sep, _ = self.local.partition(separator)
        if not sep or not base:
            return None
        return Mailbox(base, self.domain)


def normalise_domain(text: str, allow_utf8: bool = True) -> str:
    """
    Normalise a domain or address literal.

    @param text: the domain as written.
    @param allow_utf8: whether U-labels (non-ASCII) are acceptable.
    @return: lower-case A-label form, or the canonical address literal.
    @raise AddressError: if it is not a valid domain.
    """
    if not text:
        raise AddressError("empty domain")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    if text.startswith("["):
        return _normalise_literal(text)
    if text.endswith("."):
        raise AddressError("domain may not end with a dot")
    if not text.isascii():
        if not allow_utf8:
            raise AddressError("non-ASCII domain requires SMTPUTF8")
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as e:
            raise AddressError(f"invalid internationalised domain: {e}") from None
    labels = text.split(".")
    for label in labels:
        if not _LDH_LABEL.match(label):
            raise AddressError("invalid domain label %r" % (label,))
    text = text.lower()
    if any(label.startswith("xn--") for label in labels):
        try:
            idna.decode(text)
        except (idna.IDNAError, UnicodeError, ValueError):
            raise AddressError("invalid A-label in domain") from None
    if len(text) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    return text


def _normalise_literal(text: str) -> str:
    if not text.endswith("]"):
        raise AddressError("unterminated address literal")
    inner = text[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return "[IPv6:%s]" % (ipaddress.IPv6Address(inner[5:]).compressed,)
        if ":" in inner:
            raise AddressError("unsupported address literal tag")
        return "[%s]" % (ipaddress.IPv4Address(inner),)
    except ValueError:
        raise AddressError("invalid address literal") from None


def _normalise_local(text: str, allow_utf8: bool) -> str:
    if not text:
        raise AddressError("empty local part")
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise AddressError("unterminated quoted local part")
        content = text[1:-1]
        pattern = _QCONTENT_UTF8 if allow_utf8 else _QCONTENT_ASCII
        if not pattern.match(content):
            if not allow_utf8 and not content.isascii():
                raise AddressError("non-ASCII local part requires SMTPUTF8")
            raise AddressError("invalid quoted local part")
        unquoted = re.sub(r"\\(.)", r"\1", content)
        dot_atom = _DOT_ATOM_UTF8 if allow_utf8 else _DOT_ATOM_ASCII
        if dot_atom.match(unquoted):
            text = unquoted
        else:
            # Re-quote canonically: only " and \ need escaping.
            text = '"%s"' % (re.sub(r'(["\\])', r"\\\1", unquoted),)
    else:
        if not text.isascii() and not allow_utf8:
            raise AddressError("non-ASCII local part requires SMTPUTF8")
        dot_atom = _DOT_ATOM_UTF8 if allow_utf8 else _DOT_ATOM_ASCII
        if not dot_atom.match(text):
            raise AddressError("invalid local part")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    return text


def _split_mailbox(text: str) -> tuple[str, str]:
    # The domain never contains '@' or '"', so the last '@' outside a quoted
    # string separates the parts.
    at = text.rfind("@")
    if at <= 0:
        raise AddressError("missing local part or '@'")
    local, domain = text[:at], text[at + 1 :]
    if local.count('"') and not local.startswith('"'):
        raise AddressError("invalid local part")
    return local, domain


def parse_mailbox(text: str | bytes, allow_utf8: bool = True) -> Mailbox:
    """
    Parse a bare mailbox (C{local@domain}, no angle brackets).

    @param text: the mailbox; bytes are decoded as UTF-8.
    @param allow_utf8: whether non-ASCII local parts and U-label domains are
        acceptable (an SMTP session without SMTPUTF8 passes L{False}).
    @return: the normalised L{Mailbox}.
    @raise AddressError: if C{text} is not a valid mailbox.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise AddressError("address is not valid UTF-8") from None
    if not isinstance(text, str):
        raise AddressError("address must be text")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise AddressError("address longer than 256 octets")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise AddressError("control character in address")
    if not text.isascii() and not allow_utf8:
        raise AddressError("non-ASCII address requires SMTPUTF8")
    local, domain = _split_mailbox(text)
    return Mailbox(_normalise_local(local, allow_utf8), normalise_domain(domain, allow_utf8))


def parse_path(text: str | bytes, allow_utf8: bool = False) -> Mailbox | None:
    """
    Parse an SMTP reverse-path or forward-path: C{<mailbox>}, with an
    optional source route that is accepted and stripped (RFC 5321 section
    4.1.2 and appendix C), or the null path C{<>}.

    @param text: the path, angle brackets included.
    @param allow_utf8: whether SMTPUTF8 was requested.
    @return: the L{Mailbox}, or L{None} for the null path C{<>}.
    @raise AddressError: if C{text} is not a valid path.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise AddressError("address is not valid UTF-8") from None
    if not isinstance(text, str):
        raise AddressError("address must be text")
    if not (text.startswith("<") and text.endswith(">")) or len(text) < 2:
        raise AddressError("path must be enclosed in <>")
    inner = text[1:-1]
    if inner == "":
        return None
    if inner.startswith("@"):
        route = _SOURCE_ROUTE.match(inner)
        if route is None:
            raise AddressError("invalid source route")
        inner = inner[route.end() :]
    return parse_mailbox(inner, allow_utf8)


def parse_domain_pattern(text: str) -> str:
    """
    Parse the domain of a catch-all (C{@domain}) or a configured local
    domain.

    @return: the normalised domain.
    @raise AddressError: if it is not a valid domain.
    """
    return normalise_domain(text.strip(), allow_utf8=True)


def log_address(mailbox: object) -> str:
    """
    An address as it goes into a log line: white space, control
    characters and backslashes escaped (C{\\x20}, C{\\\\}), so that a
    quoted local part (C{"x status=sent"@example.test}, valid per RFC
    5321 section 4.1.2) cannot forge C{key=value} fields in a line that
    an administrator greps.

    @param mailbox: a L{Mailbox}, or anything whose C{str()} is an address.
    """
    text = str(mailbox)
    if _LOG_SAFE.fullmatch(text):
        return text
    return "".join(
        "\\\\" if c == "\\" else f"\\x{ord(c):02x}" if c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F else c
        for c in text
    )


_LOG_SAFE = re.compile(r"[^\s\\\x00-\x1f\x7f-\x9f]*")
