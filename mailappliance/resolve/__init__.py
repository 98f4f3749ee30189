# -*- test-case-name: tests.test_resolve_chain,tests.test_resolve_plugins -*-
"""
Address resolution (SPEC section 4): which recipients of the local domains
exist, and where their mail goes.

  - L{mailappliance.resolve.chain.ResolverChain}: the
    L{mailappliance.interfaces.IRecipientResolver} the SMTP server asks; it
    runs the configured resolvers in order, expands aliases recursively,
    applies sub-addressing and catch-alls, and refuses loops and oversized
    expansions.
  - L{mailappliance.resolve.users.UsersResolver} (C{"users"}): accounts.
  - L{mailappliance.resolve.aliases.AliasesResolver} (C{"aliases"}): the
    aliases file (syntax in L{mailappliance.resolve.aliasfile}), reloaded
    when it changes.
  - L{mailappliance.resolve.plugins.load_resolvers}: builds the resolvers
    named in C{[accounts] resolvers}, built-in or C{twisted.plugin}
    plug-ins; its docstring is the guide for writing a plug-in.
"""
