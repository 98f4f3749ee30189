# -*- test-case-name: tests.test_cli -*-
"""
The C{mailappliance} admin command (SPEC section 6).

Every subcommand takes C{--config FILE} (or C{-c FILE}), before or after
the subcommand, and exits non-zero with a one-line error on failure.
Without C{--config}, the file named by the environment variable
C{MAILAPPLIANCE_CONFIG} is used (so that a C{sendmail} link run by cron
from any folder finds the configuration), else the default as for twistd:
C{etc/mailappliance.toml} if it exists, else the built-in defaults.
The commands work on the configuration and the data folder only, so they
are safe to run while the server is running.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Callable, TextIO

from mailappliance.config.load import CONFIG_ENVIRONMENT, config_path, load_config
from mailappliance.config.model import ConfigError


class CommandError(Exception):
    """
    A command failed; the message is printed as one line and the exit status
    is C{status}.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        raise CommandError(f"{self.prog}: {message} (see --help)", 2)


def build_parser() -> argparse.ArgumentParser:
    from mailappliance.cli import check, queue, sendmail, status, user

    config_help = (f"the configuration file (default: ${CONFIG_ENVIRONMENT} if set, else etc/mailappliance.toml "
                   "if it exists, else built-in defaults)")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a --config given before the subcommand when none
    # follows it.
    common.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=config_help)

    parser = _Parser(prog="mailappliance", description="Administer a mailappliance mail server.",
                     parents=[common])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    check.add_parser(commands, common)
    user.add_parser(commands, common)
    queue.add_parser(commands, common)
    sendmail.add_parser(commands, common)
    status.add_parser(commands, common)
    return parser


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    """
    Run the command line.

    @param environ: the environment (L{os.environ} by default).
    @return: the exit status.
    """
    environ = os.environ if environ is None else environ
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        parser = build_parser()
        if argv is None:
            argv = sys.argv[1:]
            if os.path.basename(sys.argv[0]) == "sendmail":
                # Installed as (a link named) sendmail: behave as one.
                argv = ["sendmail", *argv]
        args = parser.parse_args(argv)
        if getattr(args, "raw_sendmail", False):
            # sendmail parses its own options (the main parser does not
            # look into them), --config and -c included.
            from mailappliance.cli.sendmail import parse_arguments

            args.options = parse_arguments(args.arguments)
            if args.options.config:
                args.config = args.options.config
        path = config_path(getattr(args, "config", None), environ)
        config = load_config(path)
        run: Callable[..., int | None] = args.run
        return run(config, args, stdin, stdout) or 0
    except ConfigError as e:
        stderr.write(f"mailappliance: {e}\n")
        return 1
    except CommandError as e:
        stderr.write(f"{e}\n" if str(e).startswith("mailappliance") else f"mailappliance: {e}\n")
        return e.status
    except KeyboardInterrupt:
        stderr.write("mailappliance: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`queue list | head`): stop quietly, as a
        # command killed by SIGPIPE does, and keep Python's exit-time
        # flush from failing again.
        if stdout is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
        return 141


if __name__ == "__main__":  # pragma: no cover
    # Run through the package's module, not this __main__ copy, so that
    # there is one CommandError class.
    from mailappliance.cli.main import main as _main

    sys.exit(_main())
