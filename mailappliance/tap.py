# -*- test-case-name: tests.e2e.test_startup -*-
"""
The twistd side of the plug-in: options and C{makeService}.

C{twistd -n mailappliance --config FILE}. Without C{--config}, the file
named by C{$MAILAPPLIANCE_CONFIG} if set, else C{etc/mailappliance.toml}
in the current directory if it exists, else the built-in defaults (SPEC
section 1), as for the admin command line.

A configuration mistake ends the process with a one-line message on
standard error and exit status 1, never a traceback: twistd prints the
argument of C{SystemExit} as it is.
"""

from __future__ import annotations

import os
import sys

from twisted.python import usage

from mailappliance.config.load import config_path, load_config
from mailappliance.config.model import ConfigError


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Run every configured mailappliance service (SMTP, submission, POP3, "
        "relay) in this process. Without --config, the file named by "
        "$MAILAPPLIANCE_CONFIG if set, else etc/mailappliance.toml in the "
        "current directory if it exists, else built-in defaults (loopback "
        "only, high ports)."
    )
    optParameters = [["config", "c", None, "The configuration file (TOML)."]]


def makeService(options: Options):
    """
    Build the service tree from the configuration named in C{options}.

    @raise SystemExit: with a one-line message for a configuration error.
    """
    from twisted.internet import reactor

    from mailappliance.service import StartupError, make_service

    path = config_path(options["config"], os.environ)
    try:
        config = load_config(path)
        root = make_service(config, reactor)
    except (ConfigError, StartupError) as e:
        sys.stderr.write(f"mailappliance: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    twistd_options = getattr(options, "parent", None)
    if twistd_options is not None and not twistd_options.get("nodaemon", False):
        root.daemon = True
    return root
