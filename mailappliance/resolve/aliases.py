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

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mailappliance.address import Mailbox, fold_local
from mailappliance.interfaces import Forward, IAddressResolver
from mailappliance.watchedfile import WatchedFile
from mailappliance.resolve.aliasfile import AliasEntry, Aliases, AliasesFileError, parse_aliases

__all__ = ["AliasesFileError", "AliasesResolver", "AliasesTable", "parse_aliases"]

_log = Logger()

class AliasesTable(WatchedFile):
    """
    The aliases file, held in memory and reloaded when it changes.

    @ivar path: the file, or L{None} for no aliases file at all (an empty
        table that never changes).
    @ivar local_domains: the local domains (normalised), where bare
        local-part aliases apply.
    """

    kind = "aliases"
    error_type = AliasesFileError

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
        super().__init__(path, disk, log if log is not None else _log)
        self.local_domains = frozenset(local_domains)
        self._aliases = Aliases()

    def __len__(self) -> int:
        """
        @return: the number of aliases in force.
        """
        return len(self._aliases)

    def lookup(self, mailbox: Mailbox) -> tuple[Mailbox, ...] | None:
        """
        The targets of an address: its full-address alias if there is one,
        else the alias of its bare local part when its domain is local.

        @param mailbox: the address.
        @return: the targets, or L{None} when no alias matches.
        """
        entry = self._aliases.addresses.get(mailbox.key)
        if entry is None and mailbox.domain in self.local_domains:
            entry = self._aliases.local_parts.get(fold_local(mailbox.local))
        return None if entry is None else entry.targets

    def lookup_catch_all(self, domain: str) -> tuple[Mailbox, ...] | None:
        """
        @param domain: a normalised domain.
        @return: the targets of the domain's catch-all (C{@domain}), or
            L{None}.
        """
        entry = self._aliases.domains.get(domain)
        return None if entry is None else entry.targets

    def parse(self, data: bytes) -> Aliases:
        return parse_aliases(data, self.path)

    def install(self, aliases: Aliases) -> None:
        # The one assignment that makes a version current (see the module
        # docstring).
        self._aliases = aliases
        self._log.info("aliases file={path} status=loaded aliases={count}", path=self.path, count=len(aliases))
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
