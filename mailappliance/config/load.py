# -*- test-case-name: tests.test_config -*-
"""
Reading the configuration file: which file is used when none is given,
and L{load_config}, which reads, decodes and parses the TOML and hands it
to the section builders.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping

from mailappliance.config.model import Config, ConfigError
from mailappliance.config.reader import Context
from mailappliance.config.sections import build_config

DEFAULT_CONFIG_PATH = os.path.join("etc", "mailappliance.toml")


def default_config_path(cwd: str | None = None) -> str | None:
    """
    The configuration used when none is given (SPEC section 1):
    C{etc/mailappliance.toml} in the current directory if it exists.

    @return: its path, or L{None} for the built-in defaults.
    """
    path = os.path.join(cwd or os.getcwd(), DEFAULT_CONFIG_PATH)
    return path if os.path.exists(path) else None


# The environment variable naming the configuration file when no --config
# is given (twistd and every CLI command), so that a sendmail link run by
# cron, or a service manager's environment, finds it from any folder.
CONFIG_ENVIRONMENT = "MAILAPPLIANCE_CONFIG"


def config_path(given: str | None, environ: Mapping[str, str], cwd: str | None = None) -> str | None:
    """
    The configuration file to use.

    @param given: the C{--config} argument, if any: it always wins.
    @param environ: the environment; a non-empty L{CONFIG_ENVIRONMENT}
        comes next (a relative path is relative to the current folder, as
        for C{--config}).
    @param cwd: the current folder, for the default lookup.
    @return: the path, or L{None} for the built-in defaults (no
        C{etc/mailappliance.toml} in the current folder).
    """
    return given or environ.get(CONFIG_ENVIRONMENT) or default_config_path(cwd)


def load_config(path: str | None) -> Config:
    """
    Read and validate a configuration file.

    @param path: the file, or L{None} for the built-in defaults (loopback
        high ports, data in C{./var}, local domain C{localhost}).
    @raise ConfigError: for any mistake, with a one-line message.
    """
    if path is None:
        return build_config({}, Context(None, "", os.getcwd()))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, None, f"cannot read configuration: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        line = None
        m = re.search(r"\(at line (\d+), column \d+\)", message)
        if m:
            line = int(m.group(1))
            message = message[: m.start()].rstrip()
        raise ConfigError(path, None, f"invalid TOML: {message}", line) from None
    base = os.path.dirname(os.path.abspath(path))
    return build_config(data, Context(path, text, base))
