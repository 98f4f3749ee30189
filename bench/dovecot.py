"""
Dovecot's POP3 server as a peer: one instance per run (C{dovecot -F -c
FILE}, a child of the bench, stopped by SIGTERM to its pid), with its
configuration, runtime and state folders and the Maildir under the run's
folder.

Equivalent settings to our server's: POP3 only, on a free port of
127.0.0.1 only, no TLS, plain-text login allowed, one user
(C{bench@example.test}, a C{{PLAIN}} password in a passwd-file, as in our
users file) whose Maildir is C{mail/example.test/bench}; everything else
Dovecot's defaults (C{mail_fsync = optimized}).

The mailbox is filled as Postfix's virtual(8) would have left it for
Dovecot: files with LF line ends in C{new/}, no Dovecot index yet, so the
first login indexes it, as it would after an outside delivery.
"""

from __future__ import annotations

import os
import pwd

from bench.maildirs import fill_maildir
from bench.processes import Child, Registry, free_port
from bench.targets import BENCH_PASSWORD, BENCH_USER

MAIL_OWNER = "nobody"

CONFIG = """\
base_dir = {base}/run
state_dir = {base}/state
instance_name = mailbench-{port}
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = {base}/dovecot.log
mail_location = maildir:~
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%d/%n
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


class Dovecot:
    """
    A Dovecot instance per run (see the module docstring). POP3 only.
    """

    name = "dovecot"
    memory_pid = None
    smtp_port = None

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.child: Child | None = None
        self.base = ""
        self.pop3_port = 0

    @property
    def maildir(self) -> str:
        return os.path.join(self.base, "mail", "example.test", "bench")

    def start(self, run_dir: str) -> None:
        self.base = os.path.join(run_dir, self.name)
        owner = pwd.getpwnam(MAIL_OWNER)
        for sub in ("run", "state", "mail"):
            os.makedirs(os.path.join(self.base, sub))
        os.chown(os.path.join(self.base, "mail"), owner.pw_uid, owner.pw_gid)
        self.pop3_port = free_port()
        config = os.path.join(self.base, "dovecot.conf")
        with open(config, "w") as f:
            f.write(CONFIG.format(base=self.base, port=self.pop3_port, uid=owner.pw_uid, gid=owner.pw_gid))
        with open(os.path.join(self.base, "users"), "w") as f:
            f.write(f"{BENCH_USER}:{{PLAIN}}{BENCH_PASSWORD}\n")
        self.child = Child(self.registry, self.name, ["dovecot", "-F", "-c", config],
                           os.path.join(self.base, "dovecot.stdout")).start()
        self.child.wait_for_port(self.pop3_port)

    def fill_mailbox(self, count: int, size: int) -> None:
        owner = pwd.getpwnam(MAIL_OWNER)
        fill_maildir(self.maildir, count, size, b"\n", owner=(owner.pw_uid, owner.pw_gid))

    def check_running(self) -> None:
        if self.child is not None:
            self.child.check_running()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None
