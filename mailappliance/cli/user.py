# -*- test-case-name: tests.test_cli -*-
"""
C{mailappliance user add|passwd|del|list}: manage the users file.

Passwords come from standard input (the first line), or are asked for
twice without echo when standard input is a terminal. They are hashed with
argon2id; the file is rewritten atomically under a lock (see
L{mailappliance.accounts.users}).
"""

from __future__ import annotations

import getpass
from typing import TextIO

from mailappliance.address import AddressError, parse_mailbox
from mailappliance.cli.main import CommandError

# The longest password every login can send: POP3's PASS command line is
# at most 255 octets with its CRLF (RFC 2449 section 4), and "PASS " takes
# five. (SASL PLAIN takes fields of up to 255 octets, RFC 4616 section 2.)
MAX_PASSWORD_BYTES = 248


def add_parser(commands, common) -> None:
    parser = commands.add_parser("user", help="manage accounts (the users file)", parents=[common])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    for name, run, text in (
        ("add", _add, "add an account; the password is read from standard input"),
        ("passwd", _passwd, "change an account's password; read from standard input"),
        ("del", _delete, "delete an account (its mailbox is kept)"),
    ):
        action = actions.add_parser(name, help=text, parents=[common])
        action.add_argument("address", metavar="ADDRESS")
        action.set_defaults(run=run)
    listing = actions.add_parser("list", help="list the accounts", parents=[common])
    listing.set_defaults(run=_list)


def read_password(stdin: TextIO, prompt=None) -> bytes:
    """
    Read a new password: from a terminal, asked twice without echo; else the
    first line of standard input.

    @raise CommandError: if it is empty, too long or the two differ, or
        the terminal ends the input (Ctrl-D) at a prompt.
    """
    if stdin.isatty():
        prompt = prompt or getpass.getpass
        try:
            first = prompt("New password: ")
            second = prompt("Repeat password: ")
        except EOFError:
            # Ctrl-D at a prompt: getpass raises EOFError.
            raise CommandError("no password given (end of input)") from None
        if second != first:
            raise CommandError("the passwords differ")
        password = first
    else:
        password = stdin.readline()
        if password.endswith("\n"):
            password = password[:-1]
        if password.endswith("\r"):
            password = password[:-1]
    data = password.encode("utf-8", "surrogateescape")
    if not data:
        raise CommandError("empty password")
    if len(data) > MAX_PASSWORD_BYTES:
        raise CommandError(f"password longer than {MAX_PASSWORD_BYTES} bytes (a POP3 client could not send it)")
    return data


def _users_file(config) -> str:
    return config.accounts.users_file


def _add(config, args, stdin, stdout) -> int:
    from mailappliance.accounts.hashing import hash_password
    from mailappliance.accounts.users import AccountError, add_user

    try:
        mailbox = parse_mailbox(args.address)
        if mailbox.domain not in config.server.local_domains:
            raise CommandError(
                f"{args.address}: domain {mailbox.domain} is not in local_domains "
                f"({', '.join(config.server.local_domains)})"
            )
        password = read_password(stdin)
        add_user(_users_file(config), args.address, hash_password(password))
    except AddressError as e:
        raise CommandError(f"{args.address}: {e.reason}") from None
    except AccountError as e:
        raise CommandError(str(e)) from None
    stdout.write(f"added {mailbox.key}\n")
    return 0


def _passwd(config, args, stdin, stdout) -> int:
    from mailappliance.accounts.hashing import hash_password
    from mailappliance.accounts.users import AccountError, set_password

    try:
        password = read_password(stdin)
        set_password(_users_file(config), args.address, hash_password(password))
    except AccountError as e:
        raise CommandError(str(e)) from None
    stdout.write(f"password changed for {args.address.lower()}\n")
    return 0


def _delete(config, args, stdin, stdout) -> int:
    from mailappliance.accounts.users import AccountError, delete_user

    try:
        delete_user(_users_file(config), args.address)
    except AccountError as e:
        raise CommandError(str(e)) from None
    stdout.write(f"deleted {args.address.lower()} (its mailbox is kept)\n")
    return 0


def _list(config, args, stdin, stdout) -> int:
    from mailappliance.accounts.users import AccountError, UsersFileError, list_users

    try:
        for record in list_users(_users_file(config)):
            stdout.write(f"{record.mailbox.key}\n")
    except (AccountError, UsersFileError) as e:
        raise CommandError(str(e)) from None
    return 0
