# -*- test-case-name: tests.test_config -*-
"""
Typed, located access to the tables of a parsed configuration file.

A L{Section} reads one table's values with their expected types and
ranges and reports any other key as unknown; every mistake becomes a
L{ConfigError} naming the file, the dotted key and, as found by
L{_KeyLocator}, the line.
"""

from __future__ import annotations

import os
import re
from typing import Any

from mailappliance.config.model import ConfigError
from mailappliance.config.values import parse_duration


class _KeyLocator:
    """
    Finds the line of C{[table] key = ...} in the TOML text, for error
    messages (tomllib gives no positions for values).
    """

    _HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(?:#.*)?$")
    _KEY = re.compile(r'\s*"?([A-Za-z0-9_-]+)"?\s*=')

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, str], int] = {}
        self._tables: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                table = header.group(1)
                self._tables.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self._lines.setdefault((table, key.group(1)), number)

    def line(self, table: str, key: str | None) -> int | None:
        if key is None:
            return self._tables.get(table)
        return self._lines.get((table, key), self._tables.get(table))


class Context:
    """
    The file being read: its path (L{None} for the built-in defaults), the
    folder relative paths resolve against, and where its keys are, so that
    errors can name the line.
    """

    def __init__(self, path: str | None, text: str, base: str) -> None:
        self.path = path
        self.base = base
        self.locator = _KeyLocator(text)

    def error(self, table: str, key: str | None, why: str) -> ConfigError:
        dotted = f"{table}.{key}" if key else f"[{table}]"
        return ConfigError(self.path, dotted, why, self.locator.line(table, key))


class Section:
    """
    Typed access to one table, recording which keys were used so that the
    rest can be reported as unknown.
    """

    def __init__(self, ctx: Context, name: str, data: Any) -> None:
        self.ctx = ctx
        self.name = name
        if not isinstance(data, dict):
            raise ctx.error(name, None, "must be a table")
        self.data = data

    def error(self, key: str, why: str) -> ConfigError:
        return self.ctx.error(self.name, key, why)

    def _get(self, key: str, kind: type | tuple[type, ...], what: str, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"expected {what}, got {_show(value)}")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {what}, got {_show(value)}")
        return value

    def string(self, key: str, default: Any, allow_empty: bool = True) -> Any:
        value = self._get(key, str, "a string", default)
        if value == "" and not allow_empty and key in self.data:
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return self._get(key, bool, "true or false", default)

    def integer(self, key: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
        value = self._get(key, int, "an integer", default)
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value}")
        return value

    def string_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, list, "a list of strings", None)
        if value is None:
            return default
        for item in value:
            if not isinstance(item, str):
                raise self.error(key, f"expected a list of strings, found {_show(item)}")
        return tuple(value)

    def duration(self, key: str, default: float, allow_zero: bool = False) -> float:
        text = self._get(key, str, 'a duration such as "30s", "15m", "4h" or "5d"', None)
        if text is None:
            return default
        try:
            seconds = parse_duration(text)
        except ValueError as e:
            raise self.error(key, str(e)) from None
        if seconds == 0 and not allow_zero:
            raise self.error(key, "must be longer than 0s")
        return float(seconds)

    def path(self, key: str, default: str | None) -> str | None:
        """
        A path, resolved against the configuration's folder. An absent key
        gives the default (resolved likewise); an empty string gives None.
        """
        value = self.string(key, None)
        if value is None:
            return None if default is None else self.ctx_path(default)
        if value == "":
            return None
        if "\0" in value:
            raise self.error(key, "path contains a NUL character")
        return self.ctx_path(value)

    def ctx_path(self, value: str) -> str:
        return os.path.normpath(os.path.join(self.ctx.base, os.path.expanduser(value)))

    def check_unknown(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in known:
                hint = ", ".join(known)
                raise self.error(key, f"unknown key (known keys: {hint})")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
