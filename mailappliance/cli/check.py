# -*- test-case-name: tests.test_cli -*-
"""
C{mailappliance check}: validate the configuration (and the files it names)
the way start-up does, and print a short summary of what would run.
"""

from __future__ import annotations

from mailappliance.cli.main import CommandError


def add_parser(commands, common) -> None:
    parser = commands.add_parser("check", help="validate the configuration and print a summary", parents=[common])
    parser.set_defaults(run=run)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def summary(config, facts: dict) -> list[str]:
    """
    The lines C{check} prints.

    @param facts: what validation learned beyond the configuration
        (C{users}, C{aliases} counts).
    """
    s = config.server
    lines = [
        f"configuration: {config.path or 'built-in defaults'}",
        f"hostname: {s.hostname}",
        f"data folder: {s.data_dir}",
        f"local domains: {', '.join(s.local_domains) or '(none)'}",
        f"postmaster: {s.postmaster}",
    ]
    tls = "on" if config.tls else "off"
    for name, section in (("smtp", config.smtp), ("submission", config.submission), ("pop3", config.pop3)):
        if section is None:
            lines.append(f"{name}: not configured")
            continue
        listeners = ", ".join(section.listen) or "(none)"
        if section.listen_tls:
            listeners += "; implicit TLS: " + ", ".join(section.listen_tls)
        if name == "pop3":
            # Its own idle time-out; the connection limits are [smtp]'s.
            listeners += f" (idle {_duration(section.idle_timeout)})"
        lines.append(f"{name}: {listeners}")
    unchecked = facts.get("systemd_unchecked", ())
    if unchecked:
        lines.append(f"systemd sockets: none passed to this command, so not checked: {', '.join(unchecked)} "
                     "(start-up refuses a socket systemd does not pass)")
    limits = config.limits
    lines.append(
        f"limits: message {_size(limits.max_message_size)}, {limits.max_recipients} recipients, "
        f"{limits.max_connections} connections ({limits.max_connections_per_ip} per address) per service, "
        f"SMTP idle {_duration(limits.idle_timeout)}"
    )
    lines.append("trusted networks: " + ", ".join(str(n) for n in config.trusted_networks))
    lines.append(f"tls: {tls}" + (f" ({config.tls.certificate})" if config.tls else ""))
    lines += [f"warning: tls: {warning}" for warning in facts.get("tls_warnings", ())]
    a = config.accounts
    missing = facts.get("missing", ())

    def absent(path: str) -> str:
        return " (the file does not exist)" if path in missing else ""

    lines.append(f"users: {facts.get('users', '?')} in {a.users_file}{absent(a.users_file)}")
    lines.append(
        f"aliases: {facts.get('aliases', '?')} in {a.aliases_file}{absent(a.aliases_file)}"
        if a.aliases_file else "aliases: none"
    )
    lines.append(f"resolvers: {', '.join(a.resolvers)}")
    r = config.relay
    if r.smarthost:
        host, port = r.smarthost
        auth = f", AUTH as {r.smarthost_username}" if r.smarthost_username else ""
        lines.append(f"relay: smarthost {host}:{port} (TLS {r.smarthost_tls}{auth})")
    else:
        dns = ", ".join(f"{h}:{p}" for h, p in r.dns_servers) or "system resolver"
        lines.append(f"relay: MX lookup, port {r.mx_port}, DNS {dns}")
    lines.append(
        f"retries: {_duration(r.retry_initial)} up to {_duration(r.retry_max)}, "
        f"bounce after {_duration(r.max_queue_lifetime)}"
    )
    return lines


def run(config, args, stdin, stdout) -> int:
    from mailappliance.service import StartupError, validate

    try:
        facts = validate(config)
    except StartupError as e:
        raise CommandError(str(e)) from None
    for line in summary(config, facts):
        stdout.write(line + "\n")
    stdout.write("configuration OK\n")
    return 0
