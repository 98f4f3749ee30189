# -*- test-case-name: tests.test_resolve_plugins -*-
"""
Building the resolvers named in C{[accounts] resolvers}: the built-ins
C{"users"} and C{"aliases"}, and third-party plug-ins found with
C{twisted.plugin}.

Writing a resolver plug-in
==========================

A third party adds a resolver (an SQL or LDAP lookup, say) without changing
mailappliance:

  1. Write the resolver: a class that provides
     L{mailappliance.interfaces.IAddressResolver}. Its C{resolve(mailbox)}
     and C{resolve_catch_all(domain)} return a L{Deferred} firing with an
     L{Account}, a L{Forward} or L{None} (compare addresses with
     L{Mailbox.key}); fail with L{TemporaryResolutionError} when the
     database cannot answer now. It must not block the reactor: use an
     asynchronous client, or C{context.disk.run} / a thread pool of its
     own. Recursion, loops, limits, sub-addresses and the local/remote
     split are the chain's work, not the resolver's.

  2. Write a factory that provides
     L{mailappliance.interfaces.IAddressResolverFactory} (which extends
     C{IPlugin}): a C{name} (the word written in the configuration) and
     C{make_resolver(context)} taking a
     L{mailappliance.interfaces.ResolverContext} (the whole configuration,
     the account store, the reactor and the disk pool). A resolver may also
     have an attribute C{reloadables} (see below).

  3. Put an instance of the factory in a module of a C{twisted/plugins/}
     folder shipped beside the third party's own package::

         mysqlresolver/__init__.py            the resolver and factory
         twisted/plugins/mysqlresolver_plugin.py

     where the plug-in module holds only, so that scanning for plug-ins
     (which imports every such module) stays cheap::

         from mysqlresolver import SQLResolverFactory
         sql_resolver = SQLResolverFactory()

     Ship no C{twisted/__init__.py} and no C{twisted/plugins/__init__.py}:
     Twisted finds every C{twisted/plugins} folder on C{sys.path}. With
     setuptools, list C{twisted.plugins} among the packages and the module
     in its C{package_data} (as mailappliance's own C{setup.cfg} does).
     After installing, refresh Twisted's plug-in cache once as the user
     who owns the installation (otherwise each start rescans)::

         python3 -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

  4. Select it by name, in order with the built-ins::

         [accounts]
         resolvers = ["sql", "aliases", "users"]

Built-in names take precedence over plug-ins of the same name. Two
plug-ins with the same name are an error when that name is selected.

Reloading
=========

A resolver built here may have an attribute C{reloadables}: a sequence of
objects with C{reload_if_changed() -> Deferred[bool]} (called on a timer)
and C{reload() -> Deferred[bool]} (called on SIGHUP). The built-in
C{"aliases"} resolver lists its L{AliasesTable} there; L{reloadables_of}
collects them from the resolvers for the service.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from twisted.plugin import getPlugins
from zope.interface import implementer

from mailappliance.interfaces import IAddressResolver, IAddressResolverFactory, ResolverContext
from mailappliance.resolve.aliases import AliasesResolver, AliasesTable
from mailappliance.resolve.users import UsersResolver


class ResolverPluginError(Exception):
    """
    The configured resolvers cannot be built. The message is one line for
    the administrator.
    """


class UnknownResolverError(ResolverPluginError):
    """
    A name in C{[accounts] resolvers} is neither a built-in nor an
    installed plug-in.

    @ivar name: the unknown name.
    @ivar available: the names that exist, sorted.
    """

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = tuple(sorted(available))
        super().__init__(
            f"unknown address resolver {name!r} (available: {', '.join(self.available) or 'none'})"
        )


@implementer(IAddressResolverFactory)
class UsersResolverFactory:
    """
    The built-in C{"users"} resolver: accounts of C{context.accounts}.
    """

    name = "users"

    def make_resolver(self, context: ResolverContext) -> UsersResolver:
        return UsersResolver(context.accounts)


@implementer(IAddressResolverFactory)
class AliasesResolverFactory:
    """
    The built-in C{"aliases"} resolver: the file C{[accounts] aliases_file}
    (none if unset), loaded when the resolver is built.
    """

    name = "aliases"

    def make_resolver(self, context: ResolverContext) -> AliasesResolver:
        """
        @raise mailappliance.resolve.aliases.AliasesFileError: if the file
            cannot be read or has a mistake (start-up must stop then).
        """
        config: Any = context.config
        table = AliasesTable(config.accounts.aliases_file, config.server.local_domains, context.disk)
        table.load()
        return AliasesResolver(table)


BUILTIN_FACTORIES: tuple[Any, ...] = (UsersResolverFactory(), AliasesResolverFactory())


def load_resolvers(
    names: Iterable[str], context: ResolverContext, package: ModuleType | None = None
) -> list[Any]:
    """
    Build the resolvers named in the configuration, in order.

    Plug-ins are looked for (which imports every module of the plug-in
    package) only when a name is not a built-in.

    @param names: resolver names, as in C{[accounts] resolvers}.
    @param context: what a resolver is given to build itself.
    @param package: where to look for plug-ins; C{twisted.plugins} (every
        C{twisted/plugins} folder on C{sys.path}) by default.
    @return: the L{IAddressResolver} providers, in the order of C{names}.
    @raise UnknownResolverError: for a name nobody provides.
    @raise ResolverPluginError: for a name two plug-ins provide, or a
        factory that makes something that is not an L{IAddressResolver}.
    @raise Exception: whatever a factory raises, e.g.
        L{mailappliance.resolve.aliases.AliasesFileError}.
    """
    names = list(names)
    factories: dict[str, list[Any]] = {factory.name: [factory] for factory in BUILTIN_FACTORIES}
    if any(name not in factories for name in names):
        for factory in getPlugins(IAddressResolverFactory, package):
            name = getattr(factory, "name", None)
            if not isinstance(name, str) or name in (builtin.name for builtin in BUILTIN_FACTORIES):
                continue
            factories.setdefault(name, []).append(factory)
    resolvers = []
    for name in names:
        candidates = factories.get(name)
        if not candidates:
            raise UnknownResolverError(name, factories)
        if len(candidates) > 1:
            modules = ", ".join(sorted(getattr(factory, "__module__", "?") for factory in candidates))
            raise ResolverPluginError(
                f"address resolver {name!r} is provided by several plug-ins ({modules})"
            )
        factory = candidates[0]
        if any(factory is builtin for builtin in BUILTIN_FACTORIES):
            resolver = factory.make_resolver(context)
        else:
            try:
                resolver = factory.make_resolver(context)
            except ResolverPluginError:
                raise
            except Exception as e:
                # A plug-in that cannot start (its data file is missing, its
                # server unreachable) is a configuration problem: one line.
                raise ResolverPluginError(
                    f"address resolver {name!r} ({getattr(factory, '__module__', '?')}) could not start: "
                    f"{type(e).__name__}: {e}"
                ) from None
        if not IAddressResolver.providedBy(resolver):
            raise ResolverPluginError(
                f"address resolver {name!r} ({getattr(candidates[0], '__module__', '?')}) "
                f"made {resolver!r}, which does not provide IAddressResolver"
            )
        resolvers.append(resolver)
    return resolvers


def reloadables_of(resolvers: Iterable[Any]) -> list[Any]:
    """
    @param resolvers: resolvers, as returned by L{load_resolvers}.
    @return: the objects to reload (their C{reloadables}), in resolver
        order, each once.
    """
    found: list[Any] = []
    for resolver in resolvers:
        for reloadable in getattr(resolver, "reloadables", ()):
            if not any(reloadable is seen for seen in found):
                found.append(reloadable)
    return found
