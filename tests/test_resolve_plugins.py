# -*- test-case-name: tests.test_resolve_plugins -*-
"""
Tests for L{mailappliance.resolve.plugins}, with the example third-party
plug-in in L{tests.resolver_plugins}.
"""

import os

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import tests.resolver_plugins
from mailappliance.address import Mailbox, parse_mailbox
from mailappliance.config.load import load_config
from mailappliance.disk import SynchronousDiskPool
from mailappliance.interfaces import (
    Forward,
    IAddressResolver,
    IAddressResolverFactory,
    Resolved,
    ResolverContext,
)
from mailappliance.resolve import plugins as plugins_module
from mailappliance.resolve.aliases import (
    AliasesFileError,
    AliasesResolver,
    AliasesTable,
)
from mailappliance.resolve.chain import ResolverChain
from mailappliance.resolve.plugins import (
    BUILTIN_FACTORIES,
    AliasesResolverFactory,
    ResolverPluginError,
    UnknownResolverError,
    UsersResolverFactory,
    load_resolvers,
    reloadables_of,
)
from mailappliance.resolve.users import UsersResolver
from tests.resolver_plugins.example_static import StaticResolver, StaticResolverFactory
from tests.test_resolve_users import FakeStore


@implementer(IAddressResolverFactory)
class NamedFactory:
    """
    A plug-in factory with a given name, making a resolver that knows
    nothing.
    """

    def __init__(self, name, result=None):
        self.name = name
        self.result = result

    def make_resolver(self, context):
        if self.result is not None:
            return self.result
        return StaticResolver(context)


class ContextMixin:
    def make_context(self, aliases=b"", aliases_key='aliases_file = "aliases"'):
        """
        A L{ResolverContext} with a real configuration (local domain
        C{example.test}), an aliases file with C{aliases} (or none when
        L{None}) and a fake account store knowing alice.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "mailappliance.toml")
        with open(path, "w") as f:
            f.write(
                '[server]\nhostname = "mail.example.test"\nlocal_domains = ["example.test"]\n'
                f"[accounts]\n{aliases_key}\n"
            )
        if aliases is not None:
            with open(os.path.join(folder, "aliases"), "wb") as f:
                f.write(aliases)
        self.folder = folder
        store = FakeStore("alice@example.test")
        return ResolverContext(load_config(path), store, Clock(), SynchronousDiskPool())

    def scan_example_package(self):
        """
        Remove the plug-in cache Twisted writes beside the example plug-in,
        if this test created it, to leave the tree as it was.
        """
        cache = os.path.join(os.path.dirname(tests.resolver_plugins.__file__), "dropin.cache")
        if not os.path.exists(cache):
            self.addCleanup(lambda: os.path.exists(cache) and os.unlink(cache))


class BuiltinTests(ContextMixin, SynchronousTestCase):
    def test_factories(self):
        """
        The built-in factories provide L{IAddressResolverFactory}, named
        C{"users"} and C{"aliases"}.
        """
        self.assertEqual([factory.name for factory in BUILTIN_FACTORIES], ["users", "aliases"])
        for factory in BUILTIN_FACTORIES:
            self.assertTrue(verifyObject(IAddressResolverFactory, factory))
        self.assertIsInstance(BUILTIN_FACTORIES[0], UsersResolverFactory)
        self.assertIsInstance(BUILTIN_FACTORIES[1], AliasesResolverFactory)

    def test_load_builtins(self):
        """
        C{["aliases", "users"]} builds the two built-ins, in that order: the
        aliases file of the configuration, loaded, and the users of the
        context's account store.
        """
        context = self.make_context(b"postmaster: alice@example.test\n")
        aliases, users = load_resolvers(["aliases", "users"], context)
        self.assertIsInstance(aliases, AliasesResolver)
        self.assertEqual(aliases.table.path, os.path.join(os.path.abspath(self.folder), "aliases"))
        self.assertEqual(aliases.table.local_domains, frozenset({"example.test"}))
        self.assertEqual(
            self.successResultOf(aliases.resolve(parse_mailbox("postmaster@example.test"))),
            Forward((Mailbox("alice", "example.test"),)),
        )
        self.assertIsInstance(users, UsersResolver)
        self.assertIs(users.store, context.accounts)
        for resolver in (aliases, users):
            self.assertTrue(verifyObject(IAddressResolver, resolver))

    def test_no_aliases_file(self):
        """
        With C{aliases_file = ""} the aliases resolver has an empty table.
        """
        context = self.make_context(None, aliases_key='aliases_file = ""')
        [aliases] = load_resolvers(["aliases"], context)
        self.assertIsNone(aliases.table.path)
        self.assertEqual(len(aliases.table), 0)

    def test_missing_aliases_file(self):
        """
        A configured aliases file that does not exist is an empty table.
        """
        [aliases] = load_resolvers(["aliases"], self.make_context(None))
        self.assertEqual(len(aliases.table), 0)

    def test_bad_aliases_file(self):
        """
        A mistake in the aliases file stops the building with
        L{AliasesFileError}.
        """
        context = self.make_context(b"x: |cmd\n")
        error = self.assertRaises(AliasesFileError, load_resolvers, ["aliases"], context)
        self.assertEqual(error.line, 1)

    def test_builtins_need_no_scan(self):
        """
        When only built-ins are named, plug-ins are not scanned for.
        """

        def no_scan(*args):
            raise AssertionError("plug-ins scanned")

        self.patch(plugins_module, "getPlugins", no_scan)
        self.assertEqual(len(load_resolvers(["users", "aliases"], self.make_context())), 2)

    def test_reloadables(self):
        """
        L{reloadables_of} collects the aliases table (once), nothing for the
        users resolver.
        """
        aliases, users = load_resolvers(["aliases", "users"], self.make_context())
        self.assertEqual(reloadables_of([users, aliases, aliases]), [aliases.table])
        self.assertIsInstance(reloadables_of([aliases])[0], AliasesTable)
        self.assertEqual(reloadables_of([users]), [])


class PluginTests(ContextMixin, SynchronousTestCase):
    def setUp(self):
        self.scan_example_package()
        self.context = self.make_context()

    def fake_plugins(self, *factories):
        """
        Make the plug-in scan find C{factories}.
        """
        self.patch(plugins_module, "getPlugins", lambda interface, package=None: list(factories))

    def test_found(self):
        """
        The example plug-in is found by C{twisted.plugin} in its package
        and provides L{IAddressResolverFactory}.
        """
        found = list(getPlugins(IAddressResolverFactory, tests.resolver_plugins))
        self.assertEqual([factory.name for factory in found], ["example-static"])
        self.assertIsInstance(found[0], StaticResolverFactory)
        self.assertTrue(verifyObject(IAddressResolverFactory, found[0]))

    def test_plugin_in_chain(self):
        """
        A plug-in is selected by name beside the built-ins, is given the
        context, and resolves through a chain: C{info@example.test} is the
        plug-in's alias of alice, whose account the users resolver knows.
        """
        static, users = load_resolvers(
            ["example-static", "users"], self.context, package=tests.resolver_plugins
        )
        self.assertIsInstance(static, StaticResolver)
        self.assertTrue(verifyObject(IAddressResolver, static))
        self.assertIs(static.context, self.context)
        self.assertIsInstance(users, UsersResolver)
        domains = self.context.config.server.local_domains
        chain = ResolverChain([static, users], domains, log=Logger(observer=[].append))
        self.assertEqual(
            self.successResultOf(chain.resolve(parse_mailbox("INFO@example.test"))),
            Resolved(Mailbox("INFO", "example.test"), local=(Mailbox("alice", "example.test"),)),
        )

    def test_unknown_name(self):
        """
        An unknown name raises L{UnknownResolverError} naming it and listing
        the names available.
        """
        error = self.assertRaises(
            UnknownResolverError, load_resolvers, ["users", "ldap"], self.context, tests.resolver_plugins
        )
        self.assertEqual(
            str(error), "unknown address resolver 'ldap' (available: aliases, example-static, users)"
        )
        self.assertEqual(error.name, "ldap")
        self.assertEqual(error.available, ("aliases", "example-static", "users"))

    def test_default_package(self):
        """
        Without a package, plug-ins are looked for in C{twisted.plugins}
        (C{getPlugins}' default).
        """
        calls = []

        def fake_get_plugins(interface, package=None):
            calls.append((interface, package))
            return [NamedFactory("sql")]

        self.patch(plugins_module, "getPlugins", fake_get_plugins)
        [resolver] = load_resolvers(["sql"], self.context)
        self.assertIsInstance(resolver, StaticResolver)
        self.assertEqual(calls, [(IAddressResolverFactory, None)])

    def test_builtin_name_wins(self):
        """
        A plug-in may not replace a built-in by taking its name.
        """
        self.fake_plugins(NamedFactory("users"), NamedFactory("x"))
        users, _ = load_resolvers(["users", "x"], self.context)
        self.assertIsInstance(users, UsersResolver)

    def test_ambiguous(self):
        """
        Two plug-ins with the selected name are an error naming their
        modules.
        """
        self.fake_plugins(NamedFactory("x"), NamedFactory("x"))
        error = self.assertRaises(ResolverPluginError, load_resolvers, ["x"], self.context)
        self.assertEqual(
            str(error),
            "address resolver 'x' is provided by several plug-ins "
            "(tests.test_resolve_plugins, tests.test_resolve_plugins)",
        )

    def test_not_a_resolver(self):
        """
        A factory that makes something that is not an L{IAddressResolver}
        is an error.
        """
        self.fake_plugins(NamedFactory("x", result=object()))
        error = self.assertRaises(ResolverPluginError, load_resolvers, ["x"], self.context)
        self.assertIn("does not provide IAddressResolver", str(error))
        self.assertTrue(
            str(error).startswith("address resolver 'x' (tests.test_resolve_plugins) made <object object")
        )

    def test_factory_fails(self):
        """
        A plug-in whose factory raises (its data file is missing) is a
        one-line error naming it and its module, not a traceback.
        """

        class Failing(NamedFactory):
            def make_resolver(self, context):
                raise FileNotFoundError(2, "No such file or directory", "/etc/mail/table.csv")

        self.fake_plugins(Failing("csv"))
        error = self.assertRaises(ResolverPluginError, load_resolvers, ["csv"], self.context)
        self.assertEqual(str(error), "address resolver 'csv' (tests.test_resolve_plugins) could not start: "
                                     "FileNotFoundError: [Errno 2] No such file or directory: '/etc/mail/table.csv'")

    def test_example_resolver(self):
        """
        The example resolver knows only its fixed address.
        """
        resolver = StaticResolver(self.context)
        self.assertEqual(
            self.successResultOf(resolver.resolve(parse_mailbox("info@example.test"))),
            Forward((Mailbox("alice", "example.test"),)),
        )
        self.assertIsNone(self.successResultOf(resolver.resolve(parse_mailbox("x@example.test"))))
        self.assertIsNone(self.successResultOf(resolver.resolve_catch_all("example.test")))
