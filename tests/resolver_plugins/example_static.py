# -*- test-case-name: tests.test_resolve_plugins -*-
"""
An example third-party resolver plug-in: C{"example-static"}.

It knows one fixed address, C{info@example.test}, an alias of
C{alice@example.test}. A real plug-in would be written the same way, with
the resolver in its own package and only the factory instance in a module of
C{twisted/plugins/} (see L{mailappliance.resolve.plugins}).
"""

from twisted.internet.defer import succeed
from zope.interface import implementer

from mailappliance.address import Mailbox
from mailappliance.interfaces import Forward, IAddressResolver, IAddressResolverFactory

STATIC_ADDRESS = Mailbox("info", "example.test")
STATIC_TARGET = Mailbox("alice", "example.test")


@implementer(IAddressResolver)
class StaticResolver:
    """
    Answers C{Forward((STATIC_TARGET,))} for L{STATIC_ADDRESS}, nothing
    for any other address.

    @ivar context: the L{mailappliance.interfaces.ResolverContext} it was
        built with (kept so a test can check it was passed on).
    """

    name = "example-static"

    def __init__(self, context):
        self.context = context

    def resolve(self, mailbox):
        if mailbox.key == STATIC_ADDRESS.key:
            return succeed(Forward((STATIC_TARGET,)))
        return succeed(None)

    def resolve_catch_all(self, domain):
        return succeed(None)


@implementer(IAddressResolverFactory)
class StaticResolverFactory:
    """
    The plug-in: what C{twisted.plugin.getPlugins} finds in this module.
    """

    name = "example-static"

    def make_resolver(self, context):
        return StaticResolver(context)


example_static = StaticResolverFactory()
