# -*- test-case-name: tests.test_resolve_aliasfile -*-
"""
The syntax of the aliases file (SPEC section 4): parsing only, no I/O.

The format is sendmail's and Postfix's aliases(5), restricted to what this
product can deliver::

    # comment
    postmaster@example.test: alice@example.test
    team@example.test:       alice@example.test, bob@example.test,
                             carol@elsewhere.test   # a continuation line
    abuse:                   alice@example.test     # bare local part
    @example.test:           alice@example.test     # catch-all, used last

  - One alias per logical line: C{name: target, target, ...}. A physical
    line that starts with a space or a tab continues the previous alias.
    Blank lines and comment-only lines are ignored and do not end an alias
    (as in Postfix), so a comment may sit between continuation lines.
  - C{#} outside a quoted string starts a comment, also after an entry. A
    local part that really contains C{#} (legal in RFC 5322 atext) must
    therefore be written quoted: C{"a#b"@example.test} (it is unquoted when
    parsed, so it still matches C{a#b@example.test}).
  - The name is a full address (C{local@domain}); a bare local part, which
    applies to every local domain with lower precedence than a full
    address; or C{@domain}, the domain's catch-all. Names are
    case-insensitive; a name given twice is an error.
  - Targets are full addresses, local or remote, separated by commas.
    sendmail's other target forms (C{|command}, C{/file}, C{:include:list},
    bare local parts) are refused with an error naming the form: the
    product delivers only to mailboxes.

Errors are L{AliasesFileError}, whose C{str()} is the single line
C{FILE:LINE: reason} that an administrator needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from mailappliance.address import AddressError, Mailbox, fold_local, normalise_domain, parse_mailbox
from mailappliance.watchedfile import FileLineError

# The domain used to validate a bare local part with parse_mailbox; it is
# never stored.
_PLACEHOLDER_DOMAIN = "localhost"
_CONTINUATION_START = (" ", "\t")


class AliasesFileError(FileLineError):
    """
    The aliases file cannot be used (see L{FileLineError} for its
    attributes).
    """


@dataclass(frozen=True)
class AliasEntry:
    """
    One alias of the file.

    @ivar name: the name as written (for messages).
    @ivar targets: the target addresses, in the order written, without
        duplicates (compared by L{Mailbox.key}); never empty.
    @ivar line: the line where the alias starts.
    """

    name: str
    targets: tuple[Mailbox, ...]
    line: int


@dataclass(frozen=True)
class Aliases:
    """
    A parsed aliases file. Treat the mappings as read-only: a table swaps in
    a whole new L{Aliases} on reload, never edits one.

    @ivar addresses: full-address aliases by L{Mailbox.key}.
    @ivar local_parts: bare-local-part aliases by lower-cased local part.
    @ivar domains: catch-alls by normalised domain.
    """

    addresses: dict[str, AliasEntry] = field(default_factory=dict)
    local_parts: dict[str, AliasEntry] = field(default_factory=dict)
    domains: dict[str, AliasEntry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.addresses) + len(self.local_parts) + len(self.domains)


class _UnterminatedQuote(Exception):
    pass


def _unquoted(text: str) -> Iterator[tuple[int, str]]:
    """
    Yield C{(index, character)} for every character of C{text} outside an
    RFC 5321 quoted string (where C{\\} escapes the next character).

    @raise _UnterminatedQuote: when the text ends inside a quoted string
        (only if the caller iterates to the end).
    """
    in_quote = escaped = False
    for index, char in enumerate(text):
        if in_quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quote = False
        elif char == '"':
            in_quote = True
        else:
            yield index, char
    if in_quote:
        raise _UnterminatedQuote()


def _split_unquoted(text: str, separator: str) -> list[str]:
    """
    Split C{text} at every C{separator} character outside quoted strings.
    """
    pieces = []
    begin = 0
    for index, char in _unquoted(text):
        if char == separator:
            pieces.append(text[begin:index])
            begin = index + 1
    pieces.append(text[begin:])
    return pieces


def _has_unquoted(text: str, predicate) -> bool:
    return any(predicate(char) for _, char in _unquoted(text))


def _logical_lines(data: bytes, path: str) -> Iterator[list[tuple[int, str]]]:
    """
    Group the physical lines of the file into aliases.

    @return: for each alias, its pieces C{(line number, text)} with
        comments removed: the first piece is the line with the name, the
        rest are continuation lines.
    @raise AliasesFileError: for undecodable text, an unterminated quoted
        string, or a continuation line with no alias before it.
    """
    current: list[tuple[int, str]] | None = None
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise AliasesFileError(path, number, "line is not valid UTF-8") from None
        try:
            for index, char in _unquoted(line):
                if char == "#":
                    line = line[:index]
                    break
        except _UnterminatedQuote:
            raise AliasesFileError(path, number, "unterminated quoted string") from None
        if not line.strip():
            continue
        if line.startswith(_CONTINUATION_START):
            if current is None:
                raise AliasesFileError(
                    path, number, "continuation line (starting with white space) without an alias before it"
                )
            current.append((number, line))
            continue
        if current is not None:
            yield current
        current = [(number, line)]
    if current is not None:
        yield current


def _parse_name(text: str, line: int, path: str) -> tuple[str, str]:
    """
    Classify and normalise an alias name.

    @return: C{(kind, key)} where kind is C{"address"}, C{"local"} or
        C{"domain"} and key the lookup key.
    @raise AliasesFileError: if the name is not valid.
    """
    if not text:
        raise AliasesFileError(path, line, "missing alias name before ':'")
    if text.startswith("@"):
        try:
            return "domain", normalise_domain(text[1:])
        except AddressError as e:
            raise AliasesFileError(path, line, f"invalid catch-all {text!r}: {e.reason}") from None
    try:
        if _has_unquoted(text, lambda char: char == "@"):
            return "address", parse_mailbox(text).key
        return "local", fold_local(parse_mailbox(f"{text}@{_PLACEHOLDER_DOMAIN}").local)
    except AddressError as e:
        raise AliasesFileError(path, line, f"invalid alias name {text!r}: {e.reason}") from None


def _unsupported_target(text: str) -> str | None:
    """
    @return: why C{text} is one of sendmail's target forms this product
        refuses, or L{None}.
    """
    bare = text[1:] if text.startswith('"') else text
    if bare.startswith("|"):
        return f"delivery to a command is not supported: {text!r}"
    if bare.startswith("/"):
        return f"delivery to a file is not supported: {text!r}"
    if bare.lower().startswith(":include:"):
        return f":include: lists are not supported: {text!r}"
    if not _has_unquoted(text, lambda char: char == "@") or text.startswith("@"):
        return f"target {text!r} is not a full address (local@domain)"
    return None


def _parse_target(text: str, line: int, path: str) -> Mailbox:
    # Quotes are balanced on every line (checked when comments are
    # removed), so the scans below cannot meet an unterminated one.
    if _has_unquoted(text, str.isspace):
        raise AliasesFileError(path, line, f"missing ',' between targets in {text!r}")
    problem = _unsupported_target(text)
    if problem is not None:
        raise AliasesFileError(path, line, problem)
    try:
        return parse_mailbox(text)
    except AddressError as e:
        raise AliasesFileError(path, line, f"invalid target {text!r}: {e.reason}") from None


def _split_targets(pieces: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """
    Split the value of an alias (over all its lines) at commas.

    A line break counts as white space, so a comma may end one line or
    start the next.

    @return: C{(line, text)} for each comma-separated item, where line is
        the line on which the item starts.
    """
    items: list[tuple[int, str]] = []
    chunks: list[tuple[int, str]] = []
    for number, text in pieces:
        parts = _split_unquoted(text, ",")
        chunks.append((number, parts[0]))
        for part in parts[1:]:
            items.append(_join_chunks(chunks))
            chunks = [(number, part)]
    items.append(_join_chunks(chunks))
    return items


def _join_chunks(chunks: list[tuple[int, str]]) -> tuple[int, str]:
    filled = [(number, text.strip()) for number, text in chunks if text.strip()]
    if not filled:
        return chunks[-1][0], ""
    return filled[0][0], " ".join(text for _, text in filled)


def parse_aliases(data: bytes, path: str) -> Aliases:
    """
    Parse the contents of an aliases file.

    @param data: the whole file (UTF-8; CRLF or LF line ends).
    @param path: the file's name, for error messages.
    @return: the aliases.
    @raise AliasesFileError: for the first mistake found, with its line.
    """
    tables: dict[str, dict[str, AliasEntry]] = {"address": {}, "local": {}, "domain": {}}
    for pieces in _logical_lines(data, path):
        line, first = pieces[0]
        colon = next((index for index, char in _unquoted(first) if char == ":"), None)
        if colon is None:
            raise AliasesFileError(path, line, "missing ':' after the alias name")
        name = first[:colon].strip()
        kind, key = _parse_name(name, line, path)
        items = _split_targets([(line, first[colon + 1 :])] + pieces[1:])
        if len(items) == 1 and not items[0][1]:
            raise AliasesFileError(path, line, f"alias {name!r} has no targets")
        targets: dict[str, Mailbox] = {}
        for number, text in items:
            if not text:
                raise AliasesFileError(path, number, "empty target (a stray ',')")
            target = _parse_target(text, number, path)
            targets.setdefault(target.key, target)
        table = tables[kind]
        if key in table:
            raise AliasesFileError(
                path, line, f"duplicate alias {name!r} (first defined on line {table[key].line})"
            )
        table[key] = AliasEntry(name, tuple(targets.values()), line)
    return Aliases(tables["address"], tables["local"], tables["domain"])
