# -*- test-case-name: tests.test_resolve_plugins -*-
"""
A plug-in package for the tests of L{mailappliance.resolve.plugins}: it
plays the part of C{twisted.plugins} for a third party's resolver, so the
tests can find plug-ins with
C{load_resolvers(names, context, package=tests.resolver_plugins)} without
installing anything.

Unlike C{twisted/plugins}, this is an ordinary package (it has this
C{__init__.py}), since it is only ever scanned explicitly.
"""
