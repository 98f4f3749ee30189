# -*- test-case-name: tests.test_resolve_aliases -*-
"""
The aliases file in service: a table that reloads itself when the file
changes, and the C{"aliases"} resolver over it.

The syntax lives in L{mailappliance.resolve.aliasfile}; L{AliasesFileError}
and L{parse_aliases} are re-exported here.

Reloading (SPEC section 3 asks the same of the users file): the service
calls L{AliasesTable.reload_if_changed} from time to time and
L{AliasesTable.reload} on SIGHUP. A new version replaces the old one in a
single assignment in the reactor thread, so a lookup sees either the old
table or the new one, never a mixture. A version with a mistake is refused:
the last good version stays in force and the mistake is logged once, with
the file and line.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.address import Mailbox
from mailappliance.interfaces import Forward, IAddressResolver
from mailappliance.resolve.aliasfile import AliasEntry, Aliases, AliasesFileError, parse_aliases

__all__ = ["AliasesFileError", "AliasesResolver", "AliasesTable", "parse_aliases"]

_log = Logger()

# What identifies a version of the file: (inode, size, mtime_ns). A missing
# file is None. An editor that replaces the file changes the inode; one that
# rewrites it in place changes the size or the time.
Signature = tuple[int, int, int] | None
_NEVER_SEEN: Any = object()
_UNREADABLE: Any = object()


def _signature_of(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def _stat(path: str) -> Signature:
    """
    Blocking: the signature of the file now.

    @raise OSError: for errors other than a missing file.
    """
    try:
        return _signature_of(os.stat(path))
    except FileNotFoundError:
        return None


def _read(path: str) -> tuple[Signature, bytes]:
    """
    Blocking: read the file, and the signature of the version read (from
    the open file, so that it matches the bytes even if the file is being
    replaced at this moment).

    @return: C{(signature, data)}; C{(None, b"")} for a missing file.
    @raise AliasesFileError: if the file exists but cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return _signature_of(os.fstat(f.fileno())), f.read()
    except FileNotFoundError:
        return None, b""
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        raise AliasesFileError(path, None, f"cannot read the aliases file: {reason}") from None


def _read_and_parse(path: str) -> tuple[Signature, Aliases | None, AliasesFileError | None]:
    """
    Blocking: read and parse the file. Mistakes are returned, not raised,
    so that the caller learns the signature of the refused version too.
    """
    signature: Signature = _NEVER_SEEN
    try:
        signature, data = _read(path)
        return signature, parse_aliases(data, path), None
    except AliasesFileError as e:
        return signature, None, e


class AliasesTable:
    """
    The aliases file, held in memory and reloaded when it changes.

    @ivar path: the file, or L{None} for no aliases file at all (an empty
        table that never changes).
    @ivar local_domains: the local domains (normalised), where bare
        local-part aliases apply.
    """

    def __init__(
        self,
        path: str | None,
        local_domains: Iterable[str],
        disk: Any,
        log: Logger | None = None,
    ) -> None:
        """
        @param path: the aliases file (absolute), or L{None}.
        @param local_domains: normalised domain names.
        @param disk: a L{mailappliance.disk.DiskPool} (or
            L{mailappliance.disk.SynchronousDiskPool}) for the blocking
            file work of reloads.
        @param log: where to log; a module logger by default.
        """
        self.path = path
        self.local_domains = frozenset(local_domains)
        self._disk = disk
        self._log = log if log is not None else _log
        self._aliases = Aliases()
        # The version last looked at, good or refused: a refused version is
        # reported once, not on every poll.
        self._seen: Signature = _NEVER_SEEN
        self._lock = DeferredLock()

    def __len__(self) -> int:
        """
        @return: the number of aliases in force.
        """
        return len(self._aliases)

    def load(self) -> None:
        """
        Read the file now, blocking: for start-up and the command line,
        where a mistake must stop the program.

        A missing file (or a path of L{None}) gives an empty table.

        @raise AliasesFileError: if the file cannot be read or has a
            mistake; the table is then unchanged.
        """
        if self.path is None:
            return
        signature, data = _read(self.path)
        aliases = parse_aliases(data, self.path)
        self._install(signature, aliases)

    def reload_if_changed(self) -> Deferred:
        """
        Reload the file if it changed since it was last looked at: compare
        (inode, size, mtime_ns) of a C{stat}, made in the disk pool.

        @return: a L{Deferred} firing with L{True} when a new version was
            put in force, L{False} otherwise (unchanged, or refused because
            of a mistake, which is logged with file and line while the last
            good version stays in force). It does not fail.
        """
        if self.path is None:
            return succeed(False)
        return self._lock.run(self._reload_if_changed).addErrback(self._unexpected)

    def reload(self) -> Deferred:
        """
        Reload the file whatever its signature (SIGHUP).

        @return: a L{Deferred} firing as for L{reload_if_changed}.
        """
        if self.path is None:
            return succeed(False)
        return self._lock.run(self._reload).addErrback(self._unexpected)

    def lookup(self, mailbox: Mailbox) -> tuple[Mailbox, ...] | None:
        """
        The targets of an address: its full-address alias if there is one,
        else the alias of its bare local part when its domain is local.

        @param mailbox: the address.
        @return: the targets, or L{None} when no alias matches.
        """
        entry = self._aliases.addresses.get(mailbox.key)
        if entry is None and mailbox.domain in self.local_domains:
            entry = self._aliases.local_parts.get(mailbox.local.lower())
        return None if entry is None else entry.targets

    def lookup_catch_all(self, domain: str) -> tuple[Mailbox, ...] | None:
        """
        @param domain: a normalised domain.
        @return: the targets of the domain's catch-all (C{@domain}), or
            L{None}.
        """
        entry = self._aliases.domains.get(domain)
        return None if entry is None else entry.targets

    def _reload_if_changed(self) -> Deferred:
        def compare(signature: Signature) -> Any:
            if signature == self._seen:
                return False
            # Recorded before reading: if the read fails, the same broken
            # state is not reported again at the next poll.
            self._seen = signature
            return self._reload()

        def stat_failed(failure: Any) -> bool:
            failure.trap(OSError)
            if self._seen is not _UNREADABLE:
                self._seen = _UNREADABLE
                self._log.error(
                    'aliases file={path} status=unreadable reason="{reason}" '
                    "(the previous version stays in force)",
                    path=self.path,
                    reason=failure.value.strerror or failure.value,
                )
            return False

        return self._disk.run(_stat, self.path).addCallbacks(compare, stat_failed)

    def _reload(self) -> Deferred:
        def loaded(result: tuple[Signature, Aliases | None, AliasesFileError | None]) -> bool:
            signature, aliases, error = result
            if error is not None:
                if signature is not _NEVER_SEEN:
                    self._seen = signature
                self._log.error(
                    "aliases file={path} line={line} status=refused "
                    'reason="{reason}" (the previous version stays in force)',
                    path=error.path,
                    line=error.line if error.line is not None else "-",
                    reason=error.reason,
                )
                return False
            assert aliases is not None
            self._install(signature, aliases)
            self._log.info(
                "aliases file={path} status=loaded aliases={count}", path=self.path, count=len(aliases)
            )
            return True

        return self._disk.run(_read_and_parse, self.path).addCallback(loaded)

    def _unexpected(self, failure: Failure) -> bool:
        # A bug, or something like MemoryError: a reload runs from a timer
        # or a signal handler, where nobody would see a failed Deferred.
        self._log.failure("aliases file={path} status=error", failure, path=self.path)
        return False

    def _install(self, signature: Signature, aliases: Aliases) -> None:
        # The one assignment that makes a version current (see the module
        # docstring).
        self._aliases = aliases
        self._seen = signature
        self._warn_unreachable(aliases)

    def _warn_unreachable(self, aliases: Aliases) -> None:
        """
        Log the aliases that can never match: the chain consults resolvers
        only for local domains. Not an error, so that removing a domain from
        the configuration does not break the aliases file.
        """
        # A full-address key is a Mailbox.key: its domain follows the last
        # '@' (a domain never contains one).
        unreachable: list[AliasEntry] = [
            entry
            for key, entry in aliases.addresses.items()
            if key.rpartition("@")[2] not in self.local_domains
        ]
        unreachable += [entry for key, entry in aliases.domains.items() if key not in self.local_domains]
        for entry in sorted(unreachable, key=lambda entry: entry.line):
            self._log.warn(
                'aliases file={path} line={line} status=unused reason="{name} is not in a local domain"',
                path=self.path,
                line=entry.line,
                name=entry.name,
            )


@implementer(IAddressResolver)
class AliasesResolver:
    """
    The C{"aliases"} resolver: answers L{Forward} for the addresses of an
    L{AliasesTable}.

    @ivar table: the table.
    @ivar reloadables: C{(table,)}: what the service should reload on a
        timer and on SIGHUP (see L{mailappliance.resolve.plugins}).
    """

    name = "aliases"

    def __init__(self, table: AliasesTable) -> None:
        self.table = table
        self.reloadables = (table,)

    def resolve(self, mailbox: Mailbox) -> Deferred:
        """
        See L{IAddressResolver.resolve}: the full-address alias, else the
        bare local-part alias when the domain is local, else L{None}.
        """
        targets = self.table.lookup(mailbox)
        return succeed(None if targets is None else Forward(targets))

    def resolve_catch_all(self, domain: str) -> Deferred:
        """
        See L{IAddressResolver.resolve_catch_all}: the C{@domain} alias, or
        L{None}.
        """
        targets = self.table.lookup_catch_all(domain)
        return succeed(None if targets is None else Forward(targets))
