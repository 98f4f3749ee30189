# -*- test-case-name: tests.test_resolve_plugins,tests.test_queue_manager,tests.test_maildir -*-
"""
The seams of mailappliance: what is meant to be replaced or faked.

L{IAddressResolver} and L{IAddressResolverFactory} are public API: third
parties implement them (for example an SQL or LDAP lookup) in a
C{twisted.plugin} plug-in and select them by name in C{[accounts] resolvers},
without changing the product. The result and error types they use are
defined here too, so a plug-in imports only this module (and
L{mailappliance.address} for L{Mailbox}).

The other interfaces are internal seams between the parts of the server
(accounts, spool, local delivery), so that tests can swap fakes in.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

from mailappliance.address import Mailbox

# ---------------------------------------------------------------------------
# Address resolution (public)


@dataclass(frozen=True)
class Account:
    """
    A resolution result: deliver to the mailbox of this local account.

    @ivar mailbox: the account's address; its Maildir is
        C{DATA_DIR/mail/<domain>/<local>/} (lower-cased).
    """

    mailbox: Mailbox


@dataclass(frozen=True)
class Forward:
    """
    A resolution result: the address stands for these addresses (an alias).

    Each target is resolved again through the whole resolver chain (so an
    alias may point at an account another resolver knows, or at another
    alias); targets outside the local domains are relayed. A target equal to
    the address being resolved means "deliver to the address itself as
    well": it is looked up in the resolvers after the one that returned this
    L{Forward} (sendmail's C{alice: alice, archive} idiom).

    @ivar targets: the addresses, in order; never empty.
    """

    targets: tuple[Mailbox, ...]


class ResolutionError(Exception):
    """
    An address cannot be resolved. Carries the SMTP reply to give at RCPT.

    @ivar code: the SMTP reply code (4xx temporary, 5xx permanent).
    @ivar status: the enhanced status code (RFC 3463), e.g. C{"5.1.1"}.
    @ivar reason: human-readable text for the reply and the log.
    """

    code = 550
    status = "5.1.1"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class UnknownAddress(ResolutionError):
    """
    No resolver knows the address: C{550 5.1.1}.
    """


class AliasLoop(ResolutionError):
    """
    Alias expansion came back to an address already being expanded.
    """

    code = 550
    status = "5.4.6"


class ExpansionTooLarge(ResolutionError):
    """
    Alias expansion produced more addresses than the limit (1000).
    """

    code = 550
    status = "5.3.0"


class TemporaryResolutionError(ResolutionError):
    """
    The resolver could not answer now (a database is down, say): the client
    should try again later. C{451 4.3.0}.
    """

    code = 451
    status = "4.3.0"


class IAddressResolver(Interface):
    """
    Knows some of the addresses of the local domains: which are accounts and
    which are aliases.

    Resolvers are consulted in the order given by C{[accounts] resolvers}.
    For an address C{a}, the chain asks every resolver's L{resolve} for C{a};
    if none knows it and C{a} has a sub-address (C{user+tag}), every
    resolver's L{resolve} for C{user}; if still none, every resolver's
    L{resolve_catch_all} for the domain. The first answer that is not L{None}
    wins. Recursion, loop detection, the expansion limit and the split into
    local and remote targets are the chain's work, not the resolver's.

    Implementations must not block: do I/O asynchronously or in a thread
    pool and return a L{Deferred}.
    """

    name = Attribute("The name that selects this resolver in the configuration.")

    def resolve(mailbox):
        """
        Look up one address of a local domain.

        @param mailbox: the normalised address; compare with
            L{Mailbox.key} (addresses are case-insensitive).
        @type mailbox: L{mailappliance.address.Mailbox}
        @return: a L{Deferred} firing with L{Account}, L{Forward}, or L{None}
            when this resolver does not know the address. It may fail with a
            L{ResolutionError} (most usefully L{TemporaryResolutionError});
            any other failure is logged and treated as temporary, and so is
            an answer that takes longer than a minute (the call is then
            cancelled). Build the addresses of an answer with
            L{mailappliance.address.parse_mailbox}. An L{Account} is a
            Maildir here (in a local domain); logging in to it (POP3, SMTP
            AUTH) needs a line in the users file too.
        """

    def resolve_catch_all(domain):
        """
        Look up the catch-all of a local domain, used last.

        @param domain: the normalised domain (L{Mailbox.domain}).
        @type domain: L{str}
        @return: a L{Deferred} firing as for L{resolve}.
        """


class IAddressResolverFactory(IPlugin):
    """
    A C{twisted.plugin} plug-in (in a C{twisted/plugins/} module) that makes
    an L{IAddressResolver}, selected by its C{name} in C{[accounts]
    resolvers}.
    """

    name = Attribute("The resolver's name, as written in the configuration.")

    def make_resolver(context):
        """
        Build the resolver. Called once at start-up (and by C{mailappliance
        check}), before the reactor runs: it may block briefly (read a
        file, open a connection pool), and any exception it raises stops
        start-up with a one-line error naming the plug-in.

        @param context: what the product offers a resolver.
        @type context: L{ResolverContext}
        @return: an L{IAddressResolver} provider (not a L{Deferred}).
        """


@dataclass(frozen=True)
class ResolverContext:
    """
    What a resolver plug-in is given to build itself.

    @ivar config: the whole parsed configuration
        (L{mailappliance.config.Config}: the data folder, the local
        domains). The configuration file takes no keys of a plug-in's own
        (unknown keys are errors): a plug-in reads its settings from its
        own file (beside the configuration file, say, or in the data
        folder) or from its environment.
    @ivar accounts: the L{IAccountStore} of the users file.
    @ivar reactor: the reactor.
    @ivar disk: the L{mailappliance.disk.DiskPool} for blocking work.
    """

    config: object
    accounts: object
    reactor: object
    disk: object


# ---------------------------------------------------------------------------
# Internal seams


@dataclass(frozen=True)
class Resolved:
    """
    The outcome of resolving one recipient through the whole chain.

    @ivar address: the address that was resolved (as given at RCPT).
    @ivar local: accounts to deliver to here (deduplicated, in order).
    @ivar remote: addresses outside the local domains, to relay.
    @ivar unknown: alias members in a local domain that resolve to nothing;
        they are recorded as failed recipients (and bounced), while the rest
        of the expansion is delivered.
    """

    address: Mailbox
    local: tuple[Mailbox, ...] = ()
    remote: tuple[Mailbox, ...] = ()
    unknown: tuple[Mailbox, ...] = ()


class IRecipientResolver(Interface):
    """
    The resolver chain as the SMTP server sees it.
    """

    def is_local_domain(domain):
        """
        @param domain: a normalised domain.
        @return: whether mail for it is delivered here.
        """

    def resolve(mailbox):
        """
        Resolve a recipient completely (aliases expanded recursively,
        sub-address and catch-all applied).

        @param mailbox: the recipient (L{Mailbox}).
        @return: a L{Deferred} firing with a L{Resolved} with at least one
            local or remote target; or failing with L{ResolutionError}
            (L{UnknownAddress} when nothing delivers, L{AliasLoop},
            L{ExpansionTooLarge}, L{TemporaryResolutionError}).
            An address outside the local domains resolves to itself as the
            only remote target, without consulting any resolver.
        """



class IAccountStore(Interface):
    """
    The accounts (users file): who may log in and who has a mailbox.
    """

    def lookup(mailbox):
        """
        @param mailbox: an address.
        @type mailbox: L{Mailbox}
        @return: the account's L{mailappliance.accounts.users.UserRecord}, or
            L{None}. Synchronous: the store is held in memory.
        """

    def check_password(mailbox, password):
        """
        Verify a password. Hashing runs off the reactor thread.

        @param mailbox: the login name, parsed.
        @param password: the password as given, L{bytes}.
        @return: a L{Deferred} firing with L{True} or L{False}.
        """


class IMessageWriter(Interface):
    """
    One message being received into the spool. Obtained from
    L{ISpool.new_message}; ends with exactly one of L{commit} or L{abort}.
    """

    queue_id = Attribute("The queue id the message will have, L{str}.")
    size = Attribute("Bytes written so far, L{int}.")

    def write(data):
        """
        Append bytes to the message body. Data is buffered and written to
        disk in a thread pool.

        @param data: L{bytes}.
        @return: L{None}, or a L{Deferred} when the caller should stop
            producing (pause its transport) until it fires, so that memory
            stays bounded when the disk is slower than the network.
        """

    def commit(envelope):
        """
        Make the message durable: body and envelope fsynced, renamed into the
        queue, directory fsynced. Only then may the server say 250.

        @param envelope: the L{mailappliance.queue.envelope.Envelope}.
        @return: a L{Deferred} firing with the queue id once durable, or
            failing (disk full, I/O error) with nothing left behind.
        """

    def abort():
        """
        Discard the message (size exceeded, bad data, connection lost).
        Idempotent; never fails.
        """


class ISpool(Interface):
    """
    The queue's entry point for new messages.
    """

    def new_message(expected=None):
        """
        @param expected: C{(sender, recipients)} of the envelope the
            message will be committed with, when known before the body
            (SMTP knows them at DATA), or L{None}.
        @return: a new L{IMessageWriter}.
        """


class ILocalDelivery(Interface):
    """
    Delivers one message to one local mailbox.
    """

    def deliver(mailbox, prefix, body_path, body_size=None):
        """
        @param mailbox: the account's address (L{Mailbox}).
        @param prefix: header lines to put in front (C{Return-Path:},
            C{Delivered-To:}), L{bytes} with CRLF line ends.
        @param body_path: path of the spooled message (L{str}).
        @param body_size: the message is the first C{body_size} bytes of
            C{body_path} (L{int}; a queue file of layout version 2 goes on
            with its envelope and trailer, which must never be delivered);
            L{None}: the whole file, to its end.
        @return: a L{Deferred} firing with the path of the delivered file
            once it is durable (file and directory fsynced), or failing with
            L{mailappliance.interfaces.DeliveryError}.
        """

    def deliver_data(mailbox, prefix, data):
        """
        Deliver a message held in memory (the queue manager's direct
        delivery of a small message, before it is ever queued).

        @param mailbox: as for L{deliver}.
        @param prefix: as for L{deliver}.
        @param data: the message (L{bytes}), byte for byte.
        @return: as for L{deliver}.
        """


    def withdraw(path):
        """
        Take back a copy delivered by L{deliver_data} moments ago, whose
        message could not be accepted after all (its queue commit failed,
        so the client is told to send it again): remove the file and make
        the removal durable.

        @param path: the path L{deliver_data} fired with.
        @return: a L{Deferred} firing when done.
        """

    def open_stream(mailbox, prefix):
        """
        Start delivering a message as it arrives (the direct delivery of a
        message too large to hold in memory).

        @param mailbox: as for L{deliver}.
        @param prefix: as for L{deliver}.
        @return: a stream with C{write_blocking(data)},
            C{finish_blocking() -> path} and C{discard_blocking()} (called
            in the disk pool, one at a time) and C{published(path) ->
            Deferred} (on the reactor thread, after C{finish_blocking}:
            fires with the path once the delivery is durable), as
            L{mailappliance.maildir.MaildirStream}.
        """


class DeliveryError(Exception):
    """
    A delivery failed.

    @ivar permanent: L{True} if retrying cannot help.
    @ivar reason: text for the log and for a DSN.
    """

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class IRemoteDelivery(Interface):
    """
    The seam through which the relay takes a message's remote recipients
    (C{local=False}). Pass a provider as C{remote_delivery} to
    L{mailappliance.queue.manager.QueueManager}.
    """

    def deliver(envelope, recipients, body_path, report):
        """
        Attempt some of a message's remote recipients.

        The manager calls this at most once at a time per message, with the
        pending remote recipients whose C{next_attempt} has come.

        @param envelope: the message's current L{mailappliance.queue.envelope.Envelope}.
        @param recipients: the due pending remote L{mailappliance.queue.envelope.Recipient}s, a
            L{tuple}.
        @param body_path: the spooled body (L{str}): the first
            C{envelope.size} bytes of that file (a queue file of layout
            version 2 goes on with its envelope, never to be sent).
        @param report: a callable (passed by keyword) taking a L{list} of
            C{(position, recipient)} pairs: the new state of some of
            C{recipients} (C{position} is the index in C{recipients}).
            The relay calls it as soon as the outcome of a part of them
            is known while others are still being attempted (one
            destination's transaction when another is slow), so that the
            manager can make it durable at once; the manager does not
            attempt those again in this call, whatever follows. The
            outcomes known last may come with the result alone. Calls
            after the result has fired are ignored.
        @return: a L{Deferred} firing with a sequence of L{mailappliance.queue.envelope.Recipient}s: the
            same recipients in the same order, with their new C{state},
            C{attempts}, C{last_error} and C{next_attempt} (those already
            reported as they were reported). The relay owns
            the retry schedule (backoff, lifetime) of remote recipients:
            the manager calls again at the earliest C{next_attempt} of
            those still pending. If it fails, the failure is logged and
            the recipients not reported are tried again after the
            manager's C{retry_delay}.
        """
