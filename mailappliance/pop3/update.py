# -*- test-case-name: tests.test_pop3_server -*-
"""
QUIT and the UPDATE state (RFC 1939 section 6) for the POP3 server.
L{POP3UpdateHandler} is this part of the session, a mixin of
L{mailappliance.pop3.server.POP3Protocol}.

QUIT after login removes the messages marked deleted and marks the
retrieved ones seen, in the disk pool
(L{mailappliance.pop3.mailbox.apply_update}), then answers and closes.
The mailbox lock is held until the changes are made, even if the
connection goes away meanwhile, so no new session snapshots a
half-updated mailbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from mailappliance.pop3.commands import TRANSACTION, UPDATE
from mailappliance.pop3.mailbox import MessageInfo, apply_update
from mailappliance.pop3.readahead import MessageReader


class POP3UpdateHandler:
    """
    QUIT, and the UPDATE state it leads to after login, a mixin of
    L{mailappliance.pop3.server.POP3Protocol}.

    Uses the protocol's C{factory} (C{disk}), C{state}, C{snapshot},
    C{deleted}, C{retrieved}, C{_log}, C{_peer_key}, C{_closing},
    C{_mailbox}, C{_reader_ahead}, and its methods C{close_after},
    C{_release_lock} and C{_user_field}.
    """

    factory: Any
    state: str
    snapshot: list[MessageInfo]
    deleted: set[int]
    retrieved: set[int]
    _log: Logger
    _peer_key: str
    _closing: bool
    _mailbox: str | None
    _reader_ahead: MessageReader | None
    close_after: Callable[[bytes], None]
    _release_lock: Callable[[], None]
    _user_field: Callable[[], str]

    def quit(self) -> None:
        """
        QUIT: in TRANSACTION, enter UPDATE (RFC 1939 section 6), make the
        changes in the disk pool, then answer and close.
        """
        if self.state != TRANSACTION:
            self.close_after(b"+OK Bye")
            return
        self.state = UPDATE
        self._closing = True
        self._reader_ahead.close()
        deleted = [self.snapshot[i] for i in sorted(self.deleted)]
        retrieved = [self.snapshot[i] for i in sorted(self.retrieved - self.deleted)]
        mailbox = self._mailbox
        d = self.factory.disk.run(apply_update, mailbox, deleted, retrieved)
        d.addCallbacks(self._updated, self._update_failed)
        d.addBoth(self._update_finished)
        # Not block_on: the session takes no further commands anyway, and the
        # update must finish even if the connection goes away.

    def _updated(self, result: Any) -> None:
        self._log.info(
            "service=pop3 event=logout user={user} peer={peer} "
            "session={session} retrieved={retrieved} deleted={deleted} failed={failed}",
            user=self._user_field(),
            peer=self._peer_key,
            session=self._session,
            retrieved=len(self.retrieved),
            deleted=result.deleted,
            failed=result.failed,
        )
        if result.failed:
            self.close_after(b"-ERR [SYS/TEMP] Some changes could not be made")
        else:
            self.close_after(b"+OK Bye")

    def _update_failed(self, reason: Failure) -> None:
        self._log.failure(
            "service=pop3 event=logout status=error user={user} peer={peer} session={session}",
            reason,
            user=self._user_field(),
            peer=self._peer_key,
            session=self._session,
        )
        self.close_after(b"-ERR [SYS/TEMP] Some changes could not be made")

    def _update_finished(self, result: Any) -> None:
        self._release_lock()
