# -*- test-case-name: tests.test_config -*-
"""
The main configuration file (SPEC section 2): TOML into frozen, typed
objects.

Everything is validated here, once, so that the rest of the product can
trust its configuration: endpoint strings (with Twisted's own parser),
durations, sizes, networks, host:port pairs, paths, enumerations and
addresses. Unknown sections and keys are errors, and so is a value of the
wrong type. Every error is a L{ConfigError}, whose text is one line naming
the file, the line (where it can be found) and the key::

    etc/mailappliance.toml:14: smtp.max_recipients: expected an integer, got 'ten'

C{tomllib} reports the position of syntax errors but not of values, so for
semantic errors the line is found by scanning the file for the key inside
its table (L{mailappliance.config.reader._KeyLocator}).

Relative paths resolve against the folder of the configuration file (for
the built-in defaults, against the current directory).

The package's modules, each one concern:
  - L{mailappliance.config.model}: the frozen objects and L{ConfigError};
  - L{mailappliance.config.load}: finding and reading the file;
  - L{mailappliance.config.reader}: typed, located access to one table;
  - L{mailappliance.config.sections}: one builder per table, and the
    checks that span tables;
  - L{mailappliance.config.values}: durations, host:port pairs and
    endpoint strings.

The names the product and plug-ins use (the configuration objects,
L{ConfigError}, L{load_config}, L{default_config_path} and the value
parsers) are importable from here as well, as they were when the
package was one module.
"""

from mailappliance.config.load import (
    DEFAULT_CONFIG_PATH,
    default_config_path,
    load_config,
)
from mailappliance.config.model import (
    SMARTHOST_TLS_MODES,
    AccountsConfig,
    Config,
    ConfigError,
    Network,
    POP3Config,
    RelayConfig,
    ServerConfig,
    SMTPConfig,
    SubmissionConfig,
    TLSConfig,
)
from mailappliance.config.values import check_endpoint, parse_duration, parse_host_port

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "SMARTHOST_TLS_MODES",
    "AccountsConfig",
    "Config",
    "ConfigError",
    "Network",
    "POP3Config",
    "RelayConfig",
    "SMTPConfig",
    "ServerConfig",
    "SubmissionConfig",
    "TLSConfig",
    "check_endpoint",
    "default_config_path",
    "load_config",
    "parse_duration",
    "parse_host_port",
]
