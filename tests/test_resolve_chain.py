# -*- test-case-name: tests.test_resolve_chain -*-
"""
Tests for L{mailappliance.resolve.chain.ResolverChain}.
"""

import os
import sys

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mailappliance.address import parse_mailbox
from mailappliance.disk import SynchronousDiskPool
from mailappliance.interfaces import (
    Account,
    AliasLoop,
    ExpansionTooLarge,
    Forward,
    IAddressResolver,
    IRecipientResolver,
    Resolved,
    TemporaryResolutionError,
    UnknownAddress,
)
from mailappliance.resolve import chain as chain_module
from mailappliance.resolve.aliases import AliasesResolver, AliasesTable
from mailappliance.resolve.chain import ResolverChain
from mailappliance.resolve.users import UsersResolver
from tests.test_resolve_users import FakeStore

LOCAL = ("example.test", "other.test")


def mb(text):
    return parse_mailbox(text)


def mbs(*texts):
    return tuple(parse_mailbox(text) for text in texts)


def forward(*texts):
    return Forward(mbs(*texts))


@implementer(IAddressResolver)
class DictResolver:
    """
    A resolver that answers from dictionaries and records what it was
    asked (C{"key"} for C{resolve}, C{"@domain"} for C{resolve_catch_all}).
    """

    def __init__(self, name, answers=None, catch_alls=None):
        self.name = name
        self.answers = {mb(key).key: answer for key, answer in (answers or {}).items()}
        self.catch_alls = dict(catch_alls or {})
        self.asked = []

    def resolve(self, mailbox):
        self.asked.append(mailbox.key)
        return succeed(self.answers.get(mailbox.key))

    def resolve_catch_all(self, domain):
        self.asked.append("@" + domain)
        return succeed(self.catch_alls.get(domain))


@implementer(IAddressResolver)
class EveryoneResolver:
    """
    Every address whose local part starts with C{user} is an account.
    """

    name = "everyone"

    def resolve(self, mailbox):
        return succeed(Account(mailbox) if mailbox.local.startswith("user") else None)

    def resolve_catch_all(self, domain):
        return succeed(None)


@implementer(IAddressResolver)
class LaterResolver:
    """
    Answers with L{Deferred}s that the test fires, in any order.
    """

    name = "later"

    def __init__(self):
        self.pending = []

    def resolve(self, mailbox):
        d = Deferred()
        self.pending.append((mailbox.key, d))
        return d

    def resolve_catch_all(self, domain):
        return succeed(None)


@implementer(IAddressResolver)
class BrokenResolver:
    name = "broken"

    def __init__(self, exception=None, answer=None):
        self.exception = exception
        self.answer = answer

    def resolve(self, mailbox):
        if self.exception is not None:
            raise self.exception
        return succeed(self.answer)

    def resolve_catch_all(self, domain):
        return succeed(None)


@implementer(IAddressResolver)
class DepthRecorder:
    """
    Wraps a resolver and records the Python stack depth of each
    C{resolve} call.
    """

    def __init__(self, resolver):
        self.resolver = resolver
        self.name = resolver.name
        self.depths = []

    def resolve(self, mailbox):
        depth, frame = 0, sys._getframe()
        while frame is not None:
            depth, frame = depth + 1, frame.f_back
        self.depths.append(depth)
        return self.resolver.resolve(mailbox)

    def resolve_catch_all(self, domain):
        return self.resolver.resolve_catch_all(domain)


class ChainTestCase(SynchronousTestCase):
    def chain(self, *resolvers, **kwargs):
        self.events = []
        return ResolverChain(resolvers, LOCAL, log=Logger(observer=self.events.append), **kwargs)

    def resolved(self, chain, address):
        return self.successResultOf(chain.resolve(mb(address)))

    def refused(self, chain, address, error_type):
        return self.failureResultOf(chain.resolve(mb(address)), error_type).value

    def messages(self):
        return [formatEvent(event) for event in self.events]

    def aliases(self, content):
        """
        @return: an L{AliasesResolver} over a file with C{content}.
        """
        path = os.path.join(self.mktemp(), "aliases")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(content)
        table = AliasesTable(path, LOCAL, SynchronousDiskPool())
        table.load()
        return AliasesResolver(table)


class BasicTests(ChainTestCase):
    def test_interface(self):
        """
        L{ResolverChain} provides L{IRecipientResolver}.
        """
        self.assertTrue(verifyObject(IRecipientResolver, self.chain()))

    def test_is_local_domain(self):
        """
        Only the configured domains are local.
        """
        chain = self.chain()
        self.assertTrue(chain.is_local_domain("example.test"))
        self.assertTrue(chain.is_local_domain("other.test"))
        self.assertFalse(chain.is_local_domain("remote.test"))

    def test_remote(self):
        """
        An address outside the local domains is its own remote target; no
        resolver is asked.
        """
        resolver = DictResolver("d")
        chain = self.chain(resolver)
        self.assertEqual(
            self.resolved(chain, "Bob@Remote.test"),
            Resolved(mb("Bob@remote.test"), remote=mbs("Bob@remote.test")),
        )
        self.assertEqual(resolver.asked, [])

    def test_account(self):
        """
        An L{Account} is a local target: the account's mailbox.
        """
        chain = self.chain(DictResolver("d", {"alice@example.test": Account(mb("Alice@example.test"))}))
        self.assertEqual(
            self.resolved(chain, "ALICE@example.test"),
            Resolved(mb("ALICE@example.test"), local=mbs("Alice@example.test")),
        )

    def test_unknown(self):
        """
        An address nobody knows is refused with L{UnknownAddress}:
        C{550 5.1.1}.
        """
        error = self.refused(self.chain(DictResolver("d")), "ghost@example.test", UnknownAddress)
        self.assertEqual(
            (error.code, error.status, error.reason), (550, "5.1.1", "<ghost@example.test>: user unknown")
        )


class PrecedenceTests(ChainTestCase):
    def test_first_resolver_wins(self):
        """
        Resolvers are asked in order; the first answer that is not L{None}
        wins and later resolvers are not asked.
        """
        first = DictResolver("first", {"a@example.test": None})
        second = DictResolver("second", {"a@example.test": Account(mb("two@example.test"))})
        third = DictResolver("third", {"a@example.test": Account(mb("three@example.test"))})
        chain = self.chain(first, second, third)
        self.assertEqual(self.resolved(chain, "a@example.test").local, mbs("two@example.test"))
        self.assertEqual((first.asked, second.asked, third.asked), (["a@example.test"], ["a@example.test"], []))

    def test_lookup_order(self):
        """
        For an unknown C{user+tag}: every resolver for the exact address,
        then every resolver for the base address, then every catch-all.
        """
        first, second = DictResolver("first"), DictResolver("second")
        self.refused(self.chain(first, second), "bob+tag@example.test", UnknownAddress)
        expected = ["bob+tag@example.test", "bob@example.test", "@example.test"]
        self.assertEqual(first.asked, expected)
        self.assertEqual(second.asked, expected)

    def test_exact_before_subaddress(self):
        """
        An exact match of C{user+tag}, in any resolver, wins over the base
        address.
        """
        chain = self.chain(
            DictResolver("first", {"bob@example.test": Account(mb("bob@example.test"))}),
            DictResolver("second", {"bob+lists@example.test": Account(mb("lists@example.test"))}),
        )
        self.assertEqual(self.resolved(chain, "bob+lists@example.test").local, mbs("lists@example.test"))

    def test_subaddress(self):
        """
        Without an exact match, C{user+tag} reaches C{user}; the result
        keeps the address as given.
        """
        chain = self.chain(DictResolver("d", {"bob@example.test": Account(mb("bob@example.test"))}))
        self.assertEqual(
            self.resolved(chain, "bob+tag@example.test"),
            Resolved(mb("bob+tag@example.test"), local=mbs("bob@example.test")),
        )

    def test_catch_all_after_subaddress(self):
        """
        The catch-all is used only when neither the address nor its base is
        known.
        """
        chain = self.chain(
            DictResolver(
                "d",
                {"bob@example.test": Account(mb("bob@example.test"))},
                {"example.test": forward("catch@remote.test")},
            )
        )
        self.assertEqual(self.resolved(chain, "bob+tag@example.test").local, mbs("bob@example.test"))
        self.assertEqual(self.resolved(chain, "carol+tag@example.test").remote, mbs("catch@remote.test"))

    def test_aliases_file_precedence(self):
        """
        With the real aliases resolver: full address, then bare local part,
        then the base of a sub-address, then the catch-all.
        """
        chain = self.chain(
            self.aliases(
                b"abuse@example.test: exact@remote.test\n"
                b"abuse: bare@remote.test\n"
                b"sales: sales-team@remote.test\n"
                b"@example.test: catch@remote.test\n"
            ),
            UsersResolver(FakeStore("sales+x@example.test")),
        )
        self.assertEqual(self.resolved(chain, "abuse@example.test").remote, mbs("exact@remote.test"))
        self.assertEqual(self.resolved(chain, "abuse@other.test").remote, mbs("bare@remote.test"))
        self.assertEqual(self.resolved(chain, "abuse+x@example.test").remote, mbs("exact@remote.test"))
        self.assertEqual(self.resolved(chain, "sales+x@example.test").local, mbs("sales+x@example.test"))
        self.assertEqual(self.resolved(chain, "sales+y@example.test").remote, mbs("sales-team@remote.test"))
        self.assertEqual(self.resolved(chain, "nobody@example.test").remote, mbs("catch@remote.test"))
        self.refused(chain, "nobody@other.test", UnknownAddress)


class ExpansionTests(ChainTestCase):
    def test_recursive(self):
        """
        Targets are resolved again through the whole chain, depth first in
        the order written; an alias may point at another resolver's
        accounts.
        """
        chain = self.chain(
            self.aliases(
                b"team@example.test: a@example.test, sub@example.test, d@example.test\n"
                b"sub@example.test: b@example.test, c@other.test\n"
            ),
            UsersResolver(FakeStore("a@example.test", "b@example.test", "c@other.test", "d@example.test")),
        )
        self.assertEqual(
            self.resolved(chain, "team@example.test"),
            Resolved(
                mb("team@example.test"),
                local=mbs("a@example.test", "b@example.test", "c@other.test", "d@example.test"),
            ),
        )

    def test_remote_targets(self):
        """
        Targets outside the local domains are remote, kept as written, and
        not looked up.
        """
        resolver = DictResolver(
            "d",
            {
                "team@example.test": forward("a@example.test", "Bob@Remote.test"),
                "a@example.test": Account(mb("a@example.test")),
            },
        )
        chain = self.chain(resolver)
        self.assertEqual(
            self.resolved(chain, "team@example.test"),
            Resolved(mb("team@example.test"), local=mbs("a@example.test"), remote=mbs("Bob@remote.test")),
        )
        self.assertEqual(resolver.asked, ["team@example.test", "a@example.test"])

    def test_forward_to_remote_only(self):
        """
        An alias with only remote targets is deliverable.
        """
        chain = self.chain(DictResolver("d", {"x@example.test": forward("y@remote.test")}))
        self.assertEqual(
            self.resolved(chain, "x@example.test"),
            Resolved(mb("x@example.test"), remote=mbs("y@remote.test")),
        )

    def test_unknown_members(self):
        """
        Members in a local domain that resolve to nothing are listed as
        unknown; the rest is delivered.
        """
        chain = self.chain(
            DictResolver(
                "d",
                {
                    "team@example.test": forward("a@example.test", "ghost@example.test", "far@remote.test"),
                    "a@example.test": Account(mb("a@example.test")),
                },
            )
        )
        self.assertEqual(
            self.resolved(chain, "team@example.test"),
            Resolved(
                mb("team@example.test"),
                local=mbs("a@example.test"),
                remote=mbs("far@remote.test"),
                unknown=mbs("ghost@example.test"),
            ),
        )

    def test_only_unknown_members(self):
        """
        An alias whose members are all unknown leaves nothing to deliver:
        L{UnknownAddress}.
        """
        chain = self.chain(
            DictResolver("d", {"team@example.test": forward("x@example.test", "y@example.test")})
        )
        error = self.refused(chain, "team@example.test", UnknownAddress)
        self.assertEqual(error.reason, "<team@example.test>: user unknown")

    def test_deduplicated(self):
        """
        Targets reached several ways are listed once, in first-seen order
        and spelling; an address expanded once is not expanded again.
        """
        resolver = DictResolver(
            "d",
            {
                "team@example.test": forward(
                    "a@example.test", "s1@example.test", "s2@example.test", "R@remote.test"
                ),
                "s1@example.test": forward("A@example.test", "c@example.test", "r@remote.test"),
                "s2@example.test": forward("c@example.test", "s1@example.test"),
                "a@example.test": Account(mb("a@example.test")),
                "c@example.test": Account(mb("c@example.test")),
            },
        )
        chain = self.chain(resolver)
        self.assertEqual(
            self.resolved(chain, "team@example.test"),
            Resolved(
                mb("team@example.test"),
                local=mbs("a@example.test", "c@example.test"),
                remote=mbs("r@remote.test"),
            ),
        )
        self.assertEqual(resolver.asked.count("s1@example.test"), 1)
        self.assertEqual(self.events, [])

    def test_subaddress_member(self):
        """
        Sub-addressing applies to alias members too.
        """
        chain = self.chain(
            DictResolver(
                "d",
                {
                    "team@example.test": forward("bob+lists@example.test"),
                    "bob@example.test": Account(mb("bob@example.test")),
                },
            )
        )
        self.assertEqual(self.resolved(chain, "team@example.test").local, mbs("bob@example.test"))


class SelfReferenceTests(ChainTestCase):
    def test_alias_and_account(self):
        """
        C{alice: alice, archive}: the self-reference continues with the
        resolvers after the aliases, so alice's account gets the mail as
        well as archive.
        """
        aliases = self.aliases(b"alice@example.test: alice@example.test, archive@example.test\n")
        chain = self.chain(aliases, UsersResolver(FakeStore("alice@example.test", "archive@example.test")))
        self.assertEqual(
            self.resolved(chain, "alice@example.test"),
            Resolved(mb("alice@example.test"), local=mbs("alice@example.test", "archive@example.test")),
        )

    def test_later_resolvers_only(self):
        """
        The continuation asks only the resolvers after the one that
        answered the L{Forward} (so it cannot loop on itself).
        """
        first = DictResolver("first", {"alice@example.test": forward("alice@example.test", "x@remote.test")})
        second = DictResolver("second", {"alice@example.test": Account(mb("alice@example.test"))})
        chain = self.chain(first, second)
        self.assertEqual(
            self.resolved(chain, "alice@example.test"),
            Resolved(mb("alice@example.test"), local=mbs("alice@example.test"), remote=mbs("x@remote.test")),
        )
        self.assertEqual(first.asked, ["alice@example.test"])
        self.assertEqual(second.asked, ["alice@example.test"])

    def test_self_reference_without_account(self):
        """
        A self-reference that nothing after it knows is an unknown member;
        the other targets are delivered.
        """
        chain = self.chain(
            DictResolver("d", {"alice@example.test": forward("alice@example.test", "x@remote.test")})
        )
        self.assertEqual(
            self.resolved(chain, "alice@example.test"),
            Resolved(mb("alice@example.test"), remote=mbs("x@remote.test"), unknown=mbs("alice@example.test")),
        )

    def test_only_self(self):
        """
        An alias that points only at itself, with nothing behind it, is an
        unknown address, not a loop.
        """
        chain = self.chain(DictResolver("d", {"alice@example.test": forward("alice@example.test")}))
        self.refused(chain, "alice@example.test", UnknownAddress)

    def test_stacked(self):
        """
        Two alias resolvers that both keep the address: each continues
        after itself, down to the account.
        """
        chain = self.chain(
            DictResolver("one", {"a@example.test": forward("a@example.test", "x@remote.test")}),
            DictResolver("two", {"a@example.test": forward("y@remote.test", "a@example.test")}),
            DictResolver("three", {"a@example.test": Account(mb("a@example.test"))}),
        )
        self.assertEqual(
            self.resolved(chain, "a@example.test"),
            Resolved(
                mb("a@example.test"),
                local=mbs("a@example.test"),
                remote=mbs("y@remote.test", "x@remote.test"),
            ),
        )

    def test_catch_all_to_itself(self):
        """
        A catch-all whose target is also unknown is not a loop: the
        target's own catch-all lookup meets itself and continues past the
        aliases, finds nothing, and the recipient is unknown.
        """
        chain = self.chain(self.aliases(b"@example.test: nobody@example.test\n"), UsersResolver(FakeStore()))
        self.refused(chain, "x@example.test", UnknownAddress)
        self.assertEqual(self.events, [])

    def test_member_alias_with_self(self):
        """
        A member that is itself an C{x: x, y} alias gets both.
        """
        chain = self.chain(
            self.aliases(
                b"team@example.test: bob@example.test\n"
                b"bob@example.test: bob@example.test, bob@remote.test\n"
            ),
            UsersResolver(FakeStore("bob@example.test")),
        )
        self.assertEqual(
            self.resolved(chain, "team@example.test"),
            Resolved(mb("team@example.test"), local=mbs("bob@example.test"), remote=mbs("bob@remote.test")),
        )


class LoopTests(ChainTestCase):
    def test_loop(self):
        """
        An address that comes back on its own expansion path is an
        L{AliasLoop}; the reply names only the recipient, the log the loop.
        """
        chain = self.chain(
            self.aliases(b"a@example.test: b@example.test\nb@example.test: c@remote.test, a@example.test\n")
        )
        error = self.refused(chain, "a@example.test", AliasLoop)
        self.assertEqual(
            (error.code, error.status, error.reason),
            (550, "5.4.6", "<a@example.test>: alias expansion loop, please tell the postmaster"),
        )

    def test_loop_below_recipient(self):
        """
        A loop further down names only its own members.
        """
        chain = self.chain(
            self.aliases(
                b"team@example.test: x@remote.test, a@example.test\n"
                b"a@example.test: b@example.test\n"
                b"b@example.test: a@example.test\n"
            )
        )
        error = self.refused(chain, "team@example.test", AliasLoop)
        # The reply names only the recipient the client gave; the log has the path.
        self.assertEqual(error.reason, "<team@example.test>: alias expansion loop, please tell the postmaster")
        self.assertEqual(
            self.messages(),
            ["to=<team@example.test> status=alias-loop path=a@example.test -> b@example.test -> a@example.test"],
        )

    def test_logged_once(self):
        """
        A loop is logged once, however many recipients run into it and
        wherever they enter it.
        """
        chain = self.chain(self.aliases(b"a@example.test: b@example.test\nb@example.test: a@example.test\n"))
        self.refused(chain, "a@example.test", AliasLoop)
        self.refused(chain, "a@example.test", AliasLoop)
        error = self.refused(chain, "b@example.test", AliasLoop)
        self.assertEqual(error.reason, "<b@example.test>: alias expansion loop, please tell the postmaster")
        self.assertEqual(
            self.messages(),
            ["to=<a@example.test> status=alias-loop path=a@example.test -> b@example.test -> a@example.test"],
        )
        self.assertEqual(self.events[0]["log_level"].name, "error")

    def test_remembered_problems_bounded(self):
        """
        The memory of logged problems is bounded: when full it is emptied,
        so an old problem is logged again.
        """
        self.patch(chain_module, "MAX_REMEMBERED_PROBLEMS", 1)
        chain = self.chain(
            self.aliases(
                b"a@example.test: b@example.test\nb@example.test: a@example.test\n"
                b"c@example.test: d@example.test\nd@example.test: c@example.test\n"
            )
        )
        for address in ("a@example.test", "a@example.test", "c@example.test", "a@example.test"):
            self.refused(chain, address, AliasLoop)
        self.assertEqual(len(self.events), 3)

    def test_diamond_is_not_a_loop(self):
        """
        Two paths to the same address are not a loop.
        """
        chain = self.chain(
            self.aliases(
                b"team@example.test: a@example.test, b@example.test\n"
                b"a@example.test: c@example.test\n"
                b"b@example.test: c@example.test\n"
            ),
            UsersResolver(FakeStore("c@example.test")),
        )
        self.assertEqual(self.resolved(chain, "team@example.test").local, mbs("c@example.test"))

    def test_loop_through_subaddress(self):
        """
        A loop through a sub-address is found too (the recipient, with its
        tag, is on the path).
        """
        chain = self.chain(
            DictResolver(
                "d",
                {"a@example.test": forward("b@example.test"), "b@example.test": forward("a+x@example.test")},
            )
        )
        self.refused(chain, "a+x@example.test", AliasLoop)
        self.assertEqual(
            self.messages(),
            ["to=<a+x@example.test> status=alias-loop path=a+x@example.test -> b@example.test -> a+x@example.test"],
        )


class LimitTests(ChainTestCase):
    def big_alias(self, count):
        return DictResolver(
            "d", {"big@example.test": forward(*("user%d@example.test" % (i,) for i in range(count)))}
        )

    def test_wide_at_limit(self):
        """
        An alias of 1000 targets (the limit) is delivered.
        """
        chain = self.chain(self.big_alias(1000), EveryoneResolver())
        result = self.resolved(chain, "big@example.test")
        self.assertEqual(len(result.local), 1000)
        self.assertEqual(result.local[0], mb("user0@example.test"))
        self.assertEqual(result.local[-1], mb("user999@example.test"))

    def test_wide_over_limit(self):
        """
        An alias of 1001 targets is L{ExpansionTooLarge}, logged once per
        alias.
        """
        chain = self.chain(self.big_alias(1001), EveryoneResolver())
        error = self.refused(chain, "big@example.test", ExpansionTooLarge)
        self.assertEqual(
            (error.code, error.status, error.reason),
            (550, "5.3.0", "alias expansion of <big@example.test> exceeds 1000 addresses"),
        )
        self.refused(chain, "big@example.test", ExpansionTooLarge)
        self.assertEqual(self.messages(), ["to=<big@example.test> status=expansion-too-large limit=1000"])

    def long_chain(self, length):
        """
        C{a0 -> a1 -> ... -> a<length-1> -> user}.
        """
        answers = {"a%d@example.test" % (i,): forward("a%d@example.test" % (i + 1,)) for i in range(length - 1)}
        answers["a%d@example.test" % (length - 1,)] = forward("user@example.test")
        return DictResolver("d", answers)

    def test_deep_chain(self):
        """
        A chain of 1000 aliases resolves (1000 addresses reached from the
        recipient) without growing the Python stack with the depth.
        """
        resolver = DepthRecorder(self.long_chain(1000))
        chain = self.chain(resolver, EveryoneResolver())
        self.assertEqual(self.resolved(chain, "a0@example.test").local, mbs("user@example.test"))
        self.assertEqual(len(resolver.depths), 1001)
        self.assertLessEqual(max(resolver.depths) - min(resolver.depths), 5)

    def test_wide_alias_stack(self):
        """
        Expanding a 1000-wide alias does not grow the Python stack either.
        """
        resolver = DepthRecorder(self.big_alias(1000))
        chain = self.chain(resolver, EveryoneResolver())
        self.assertEqual(len(self.resolved(chain, "big@example.test").local), 1000)
        self.assertLessEqual(max(resolver.depths) - min(resolver.depths), 5)

    def test_deep_chain_over_limit(self):
        """
        A chain of 1001 aliases reaches 1001 addresses: too large.
        """
        chain = self.chain(self.long_chain(1001), EveryoneResolver())
        self.refused(chain, "a0@example.test", ExpansionTooLarge)

    def test_deep_chain_answered_later(self):
        """
        A 1000-deep chain whose every answer comes later (each fired by
        hand) resolves too.
        """
        later = LaterResolver()
        chain = self.chain(later, EveryoneResolver())
        d = chain.resolve(mb("a0@example.test"))
        fired = 0
        while later.pending:
            key, pending = later.pending.pop()
            if key == "user@example.test":
                pending.callback(None)
                continue
            index = int(key.split("@")[0][1:])
            pending.callback(forward("a%d@example.test" % (index + 1,) if index < 999 else "user@example.test"))
            fired += 1
        self.assertEqual(fired, 1000)
        self.assertEqual(self.successResultOf(d).local, mbs("user@example.test"))

    def test_remote_targets_count(self):
        """
        Remote targets count towards the limit like local ones.
        """
        chain = self.chain(
            DictResolver("d", {"x@example.test": forward("a@remote.test", "b@remote.test", "c@remote.test")}),
            max_expansion=2,
        )
        self.refused(chain, "x@example.test", ExpansionTooLarge)
        chain = self.chain(
            DictResolver("d", {"x@example.test": forward("a@remote.test", "b@remote.test")}), max_expansion=2
        )
        self.assertEqual(self.resolved(chain, "x@example.test").remote, mbs("a@remote.test", "b@remote.test"))

    def test_duplicates_do_not_count(self):
        """
        An address reached twice counts once.
        """
        chain = self.chain(
            DictResolver(
                "d",
                {
                    "x@example.test": forward("a@remote.test", "s@example.test"),
                    "s@example.test": forward("a@remote.test"),
                },
            ),
            max_expansion=2,
        )
        self.assertEqual(self.resolved(chain, "x@example.test").remote, mbs("a@remote.test"))


class AsynchronousTests(ChainTestCase):
    def test_answer_later(self):
        """
        A resolver may answer with a L{Deferred} that fires later; the
        result waits for it, and expansion goes on from there.
        """
        later = LaterResolver()
        chain = self.chain(later, EveryoneResolver())
        d = chain.resolve(mb("team@example.test"))
        self.assertNoResult(d)
        self.assertEqual([key for key, _ in later.pending], ["team@example.test"])
        later.pending.pop(0)[1].callback(forward("user1@example.test", "user2@example.test"))
        self.assertNoResult(d)
        later.pending.pop(0)[1].callback(None)
        self.assertNoResult(d)
        later.pending.pop(0)[1].callback(None)
        self.assertEqual(
            self.successResultOf(d),
            Resolved(mb("team@example.test"), local=mbs("user1@example.test", "user2@example.test")),
        )

    def test_interleaved(self):
        """
        Two resolutions in progress at once, answered in the reverse order,
        each get their own result.
        """
        later = LaterResolver()
        chain = self.chain(later)
        first = chain.resolve(mb("one@example.test"))
        second = chain.resolve(mb("two@example.test"))
        (_, d1), (_, d2) = later.pending
        del later.pending[:]
        d2.callback(Account(mb("two@example.test")))
        d1.callback(Account(mb("one@example.test")))
        self.assertEqual(self.successResultOf(first).local, mbs("one@example.test"))
        self.assertEqual(self.successResultOf(second).local, mbs("two@example.test"))

    def test_failure_later(self):
        """
        A resolver's L{ResolutionError} arriving later fails the
        resolution with it.
        """
        later = LaterResolver()
        chain = self.chain(later)
        d = chain.resolve(mb("one@example.test"))
        error = TemporaryResolutionError("database down")
        later.pending[0][1].errback(error)
        self.assertIs(self.failureResultOf(d, TemporaryResolutionError).value, error)


class FailingResolverTests(ChainTestCase):
    def test_resolution_error_passes(self):
        """
        A resolver's L{ResolutionError} is the chain's answer, unchanged and
        not logged.
        """
        error = TemporaryResolutionError("ldap down")
        chain = self.chain(BrokenResolver(exception=error))
        self.assertIs(self.refused(chain, "a@example.test", TemporaryResolutionError), error)
        self.assertEqual(self.events, [])

    def test_hanging_resolver_times_out(self):
        """
        A resolver that never answers (an SQL or LDAP server that does not
        reply) fails temporarily after the time-out, logged on one line,
        instead of holding the SMTP session for ever; its lookup is
        cancelled.
        """
        clock = Clock()
        later = LaterResolver()
        chain = self.chain(later, clock=clock, timeout=60)
        d = chain.resolve(mb("a@example.test"))
        clock.advance(59)
        self.assertNoResult(d)
        clock.advance(1)
        error = self.failureResultOf(d, TemporaryResolutionError).value
        self.assertEqual((error.code, error.status, error.reason),
                         (451, "4.3.0", "<a@example.test>: address lookup timed out, try again later"))
        self.assertEqual(self.messages(), ['to=<a@example.test> resolver=later call=resolve status=timeout '
                                           'reason="resolver later did not answer resolve within 60 s"'])
        [(_, pending)] = later.pending
        self.assertTrue(pending.called)

    def test_unknown_address_from_resolver(self):
        """
        A resolver may itself refuse an address with L{UnknownAddress}.
        """
        chain = self.chain(
            BrokenResolver(exception=UnknownAddress("disabled")),
            DictResolver("d", {"a@example.test": Account(mb("a@example.test"))}),
        )
        self.assertEqual(self.refused(chain, "a@example.test", UnknownAddress).reason, "disabled")

    def test_exception(self):
        """
        Any other exception is logged with its traceback and becomes a
        L{TemporaryResolutionError} (451 4.3.0).
        """
        chain = self.chain(BrokenResolver(exception=ZeroDivisionError("oops")))
        error = self.refused(chain, "a@example.test", TemporaryResolutionError)
        self.assertEqual(
            (error.code, error.status, error.reason),
            (451, "4.3.0", "<a@example.test>: address lookup failed, try again later"),
        )
        self.assertEqual(self.messages(), ["to=<a@example.test> resolver=broken call=resolve status=error"])
        self.assertIsInstance(self.events[0]["log_failure"].value, ZeroDivisionError)
        self.assertEqual(self.events[0]["log_level"].name, "error")

    def test_failed_deferred(self):
        """
        A failed L{Deferred} with an unexpected exception is treated the
        same way; the member's address is the one logged.
        """

        @implementer(IAddressResolver)
        class FailingLater:
            name = "failing"

            def resolve(self, mailbox):
                if mailbox.key == "b@example.test":
                    return fail(KeyError("b"))
                return succeed(forward("b@example.test") if mailbox.key == "a@example.test" else None)

            def resolve_catch_all(self, domain):
                return succeed(None)

        chain = self.chain(FailingLater())
        self.refused(chain, "a@example.test", TemporaryResolutionError)
        self.assertEqual(self.messages(), ["to=<b@example.test> resolver=failing call=resolve status=error"])

    def test_invalid_answers(self):
        """
        An answer that is not L{None}, an L{Account} or a non-empty
        L{Forward} of L{Mailbox}es is a resolver bug: logged, temporary.
        """
        for answer in ["yes", Forward(()), Forward(("a@example.test",)), Account("a@example.test")]:
            with self.subTest(answer=answer):
                chain = self.chain(BrokenResolver(answer=answer))
                self.refused(chain, "a@example.test", TemporaryResolutionError)
                self.assertEqual(len(self.events), 1)
                self.assertIsInstance(self.events[0]["log_failure"].value, TypeError)
