# -*- test-case-name: tests.test_resolve_chain -*-
"""
The resolver chain: resolves one recipient completely, through the
configured L{IAddressResolver}s in order (SPEC section 4).

For an address C{a} of a local domain, the first answer that is not
L{None} wins, looking in this order:

  1. every resolver's C{resolve(a)};
  2. if C{a} has a sub-address (C{user+tag}), every resolver's
     C{resolve(user)} (so C{user+tag} reaches C{user} only when no exact
     match exists);
  3. every resolver's C{resolve_catch_all(a.domain)}.

An L{Account} is a local target. A L{Forward} is expanded: each target goes
through the whole chain again (outside the local domains it is a remote
target, relayed as it is), except a target equal to the address being
expanded, which continues with the resolvers I{after} the one that answered
(C{alice: alice, archive} delivers to the account alice as well).

The expansion is depth-first, in the order the targets are written, and
results are deduplicated by L{Mailbox.key}. An address already expanded
elsewhere in the same tree is not expanded again (its targets are in the
result already). It is an explicit work stack driven by one
L{inlineCallbacks} loop, which unrolls answers that are already there, so
neither a 1000-deep alias chain nor a 1000-wide alias grows the Python
stack, and resolvers may answer later (a L{Deferred} not yet fired).

Errors, in the order they can happen:

  - an address coming back on its own expansion path is an L{AliasLoop};
  - more than C{max_expansion} addresses reached from the recipient (the
    recipient itself not counted) is L{ExpansionTooLarge};
  - both are logged once per offending alias (the loop's members, or the
    recipient for a too-large expansion), not on every RCPT;
  - a resolver's L{ResolutionError} passes through unchanged; any other
    exception (or an answer that is not L{None}, L{Account} or
    L{Forward}) is logged with its traceback and becomes a
    L{TemporaryResolutionError} (451 4.3.0): the client retries later.
  - a recipient with neither local nor remote targets is an
    L{UnknownAddress} (550 5.1.1). Members of an expansion that resolve to
    nothing are listed in L{Resolved.unknown} while the rest is delivered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generator

from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from mailappliance.address import Mailbox, log_address
from mailappliance.interfaces import (
    Account,
    AliasLoop,
    ExpansionTooLarge,
    Forward,
    IRecipientResolver,
    ResolutionError,
    Resolved,
    TemporaryResolutionError,
    UnknownAddress,
)
from mailappliance.logtext import quote

# SPEC section 4: an expansion of more than 1000 addresses is refused.
DEFAULT_MAX_EXPANSION = 1000
# Seconds one resolver call may take (well within the 5 minutes an SMTP
# client waits for the reply to RCPT, RFC 5321 section 4.5.3.2.3).
LOOKUP_TIMEOUT = 60.0
# Problems already logged, remembered so that each is logged once; forgotten
# all at once when this many have piled up, to bound memory.
MAX_REMEMBERED_PROBLEMS = 1000

_log = Logger()


@dataclass(frozen=True)
class _Visit:
    """
    Work item: look C{address} up, asking resolvers from index C{start}.

    @ivar continuation: L{True} for the self-reference of a L{Forward}
        (the same address, continuing after the resolver that answered);
        such an item is exempt from the loop and duplicate checks.
    """

    address: Mailbox
    start: int = 0
    continuation: bool = False


class _Leave:
    """
    Work item: the expansion of the address on top of the path is complete.
    """


_LEAVE = _Leave()


class _Targets:
    """
    The results of one resolution, deduplicated by key, in order.
    """

    def __init__(self) -> None:
        self.local: dict[str, Mailbox] = {}
        self.remote: dict[str, Mailbox] = {}
        self.unknown: dict[str, Mailbox] = {}

    def add(self, kind: dict[str, Mailbox], mailbox: Mailbox) -> None:
        kind.setdefault(mailbox.key, mailbox)


@implementer(IRecipientResolver)
class ResolverChain:
    """
    The configured resolvers, as one L{IRecipientResolver}.

    @ivar resolvers: the L{IAddressResolver}s, in the configured order.
    @ivar local_domains: the normalised local domains.
    @ivar max_expansion: the most addresses one recipient may expand to.
    """

    def __init__(
        self,
        resolvers: Iterable[Any],
        local_domains: Iterable[str],
        max_expansion: int = DEFAULT_MAX_EXPANSION,
        log: Logger | None = None,
        clock: Any = None,
        timeout: float = LOOKUP_TIMEOUT,
    ) -> None:
        """
        @param resolvers: L{IAddressResolver} providers, in order.
        @param local_domains: normalised domains delivered here.
        @param max_expansion: see L{ExpansionTooLarge}.
        @param log: where to log; a module logger by default.
        @param clock: an C{IReactorTime} for the time-out of each resolver
            call, or L{None} for no time-out (the CLI's checks).
        @param timeout: seconds a resolver may take to answer; a plug-in
            whose lookup hangs (an SQL or LDAP server that does not
            answer) then fails temporarily (451 4.3.0) instead of holding
            the SMTP session for ever.
        """
        self.resolvers = tuple(resolvers)
        self.local_domains = frozenset(local_domains)
        self.max_expansion = max_expansion
        self._log = log if log is not None else _log
        self._reported: set[object] = set()
        self._clock = clock
        self._timeout = timeout

    def is_local_domain(self, domain: str) -> bool:
        """
        @param domain: a normalised domain (L{Mailbox.domain}).
        @return: whether mail for it is delivered here.
        """
        return domain in self.local_domains

    def resolve(self, mailbox: Mailbox) -> Deferred:
        """
        Resolve a recipient completely; see the module docstring and
        L{IRecipientResolver.resolve}.

        @param mailbox: the recipient.
        @return: a L{Deferred} firing with a L{Resolved} that has at least
            one local or remote target, or failing with a
            L{ResolutionError}.
        """
        if not self.is_local_domain(mailbox.domain):
            return succeed(Resolved(mailbox, remote=(mailbox,)))
        return self._expand(mailbox)

    @inlineCallbacks
    def _expand(self, root: Mailbox) -> Generator[Deferred, Any, Resolved]:
        found = _Targets()
        reached = {root.key}
        # The addresses whose expansion is in progress, outermost first; a
        # continuation repeats its address, hence the counts.
        path: list[Mailbox] = []
        on_path: dict[str, int] = {}
        work: list[_Visit | _Leave] = [_Visit(root, continuation=True)]
        while work:
            item = work.pop()
            if isinstance(item, _Leave):
                left = path.pop()
                on_path[left.key] -= 1
                if not on_path[left.key]:
                    del on_path[left.key]
                continue
            address = item.address
            if not item.continuation:
                if address.key in on_path:
                    raise self._loop(path, address)
                if address.key in reached:
                    continue
                reached.add(address.key)
                if len(reached) - 1 > self.max_expansion:
                    raise self._too_large(root)
                if not self.is_local_domain(address.domain):
                    found.add(found.remote, address)
                    continue
            answer, index = yield self._lookup(address, item.start)
            if isinstance(answer, Account):
                found.add(found.local, answer.mailbox)
            elif isinstance(answer, Forward):
                path.append(address)
                on_path[address.key] = on_path.get(address.key, 0) + 1
                work.append(_LEAVE)
                for target in reversed(answer.targets):
                    if target.key == address.key:
                        work.append(_Visit(address, index + 1, continuation=True))
                    else:
                        work.append(_Visit(target))
            elif path:
                # Nothing knows this member of an expansion (possibly the
                # recipient's own self-reference): report it, deliver the
                # rest. The recipient itself, unknown, is dealt with below.
                found.add(found.unknown, address)
        if not found.local and not found.remote:
            raise UnknownAddress(f"<{root}>: user unknown")
        return Resolved(
            root,
            local=tuple(found.local.values()),
            remote=tuple(found.remote.values()),
            unknown=tuple(found.unknown.values()),
        )

    @inlineCallbacks
    def _lookup(self, address: Mailbox, start: int) -> Generator[Deferred, Any, tuple[Any, int]]:
        """
        Ask the resolvers from index C{start} on, in the three steps of the
        module docstring.

        @return: a L{Deferred} firing with C{(answer, index)}: the first
            answer that is not L{None} and the index of the resolver that
            gave it, or C{(None, -1)}.
        """
        steps: list[tuple[str, Any]] = [("resolve", address)]
        base = address.without_subaddress()
        if base is not None:
            steps.append(("resolve", base))
        steps.append(("resolve_catch_all", address.domain))
        for method, argument in steps:
            for index in range(start, len(self.resolvers)):
                answer = yield self._ask(self.resolvers[index], method, argument, address)
                if answer is not None:
                    return answer, index
        return None, -1

    def _ask(self, resolver: Any, method: str, argument: Any, address: Mailbox) -> Deferred:
        """
        Call one resolver, turning its surprises into
        L{TemporaryResolutionError}.
        """

        def check(answer: Any) -> Any:
            if answer is None or _is_valid_answer(answer):
                return answer
            raise TypeError(f"resolver answered {answer!r}, not None, Account or Forward")

        def failed(failure: Failure) -> Failure:
            if failure.check(ResolutionError):
                return failure
            if failure.check(defer.TimeoutError):
                self._log.error("to=<{to}> resolver={resolver} call={call} status=timeout reason={reason}",
                                to=log_address(address), resolver=getattr(resolver, "name", repr(resolver)),
                                call=method, reason=quote(str(failure.value)))
                return Failure(TemporaryResolutionError(f"<{address}>: address lookup timed out, try again later"))
            self._log.failure(
                "to=<{to}> resolver={resolver} call={call} status=error",
                failure,
                to=log_address(address),
                resolver=getattr(resolver, "name", repr(resolver)),
                call=method,
                level=LogLevel.error,
            )
            return Failure(TemporaryResolutionError(f"<{address}>: address lookup failed, try again later"))

        d = maybeDeferred(getattr(resolver, method), argument)
        if self._clock is not None and not d.called:
            d.addTimeout(self._timeout, self._clock,
                         onTimeoutCancel=lambda result, timeout: _timed_out(resolver, method, timeout))
        return d.addCallback(check).addErrback(failed)

    def _loop(self, path: list[Mailbox], again: Mailbox) -> AliasLoop:
        first = next(index for index, mailbox in enumerate(path) if mailbox.key == again.key)
        cycle: list[Mailbox] = []
        for mailbox in path[first:] + [again]:
            if not cycle or cycle[-1].key != mailbox.key:
                cycle.append(mailbox)
        shown = " -> ".join(log_address(mailbox) for mailbox in cycle)
        members = frozenset(mailbox.key for mailbox in cycle)
        if self._first_report(("loop", members)):
            self._log.error("to=<{to}> status=alias-loop path={path}", to=log_address(path[0]), path=shown)
        # The reply goes to the (possibly remote) client: name only the
        # recipient it gave, not the alias members; the log has the path.
        return AliasLoop(f"<{path[0]}>: alias expansion loop, please tell the postmaster")

    def _too_large(self, root: Mailbox) -> ExpansionTooLarge:
        if self._first_report(("too-large", root.key)):
            self._log.error(
                "to=<{to}> status=expansion-too-large limit={limit}", to=log_address(root), limit=self.max_expansion
            )
        return ExpansionTooLarge(f"alias expansion of <{root}> exceeds {self.max_expansion} addresses")

    def _first_report(self, problem: object) -> bool:
        """
        @return: whether C{problem} is new (and remember it).
        """
        if problem in self._reported:
            return False
        if len(self._reported) >= MAX_REMEMBERED_PROBLEMS:
            self._reported.clear()
        self._reported.add(problem)
        return True


def _timed_out(resolver: Any, method: str, timeout: float) -> Any:
    name = getattr(resolver, "name", repr(resolver))
    raise defer.TimeoutError(f"resolver {name} did not answer {method} within {timeout:g} s")


def _is_valid_answer(answer: Any) -> bool:
    if isinstance(answer, Account):
        return isinstance(answer.mailbox, Mailbox)
    if isinstance(answer, Forward):
        return (
            isinstance(answer.targets, tuple)
            and len(answer.targets) > 0
            and all(isinstance(target, Mailbox) for target in answer.targets)
        )
    return False
