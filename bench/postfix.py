"""
Postfix as a peer: one instance per run, with its own configuration
folder, queue and Maildir base under the run's folder, started with
C{postfix -c DIR start} and stopped with C{postfix -c DIR stop}.

Equivalent settings to our server's: SMTP on a free port of 127.0.0.1 only,
one virtual domain (C{example.test}) with one Maildir user
(C{bench@example.test}, delivered by virtual(8)), relaying allowed for
127.0.0.0/8, everything else Postfix's defaults, fsync included (the queue
file is fsynced before the 250, each Maildir file before it is renamed
into C{new/}). Logging goes to a file through postlogd (there is no syslog
here), as ours goes to its log file. Services run unchrooted (upstream's
default) so that no chroot has to be populated.
"""

from __future__ import annotations

import os
import pwd

from bench.processes import Registry, accepting, free_port, run, wait_until

POSTFIX_USER = "postfix"
# The Maildir owner: an existing unprivileged account, so that the bench
# adds no user to the system (virtual(8) refuses root).
MAIL_OWNER = "nobody"

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.example.test
mydomain = example.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = example.test
virtual_mailbox_maps = inline:{{ bench@example.test=example.test/bench/ }}
virtual_mailbox_base = {base}/mail
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file_prefixes = {base}
maillog_file = {base}/postfix.log
relayhost = [127.0.0.1]:{relay_port}
smtp_tls_security_level = none
"""


class Postfix:
    """
    A Postfix instance per run (see the module docstring).
    """

    name = "postfix"
    memory_pid = None
    pop3_port = None

    def __init__(self, registry: Registry, sink_port: int | None = None) -> None:
        self.registry = registry
        # Without a sink, mail for other domains would go to a closed port.
        self.sink_port = sink_port or 9
        self.base = ""
        self.smtp_port = 0
        self._running = False
        self._record = ""

    @property
    def config_dir(self) -> str:
        return os.path.join(self.base, "conf")

    @property
    def maildir(self) -> str:
        return os.path.join(self.base, "mail", "example.test", "bench")

    def start(self, run_dir: str) -> None:
        self.base = os.path.join(run_dir, self.name)
        owner = pwd.getpwnam(MAIL_OWNER)
        for sub in ("conf", "queue", "data", "mail"):
            os.makedirs(os.path.join(self.base, sub))
        # Postfix checks ownership: the queue is root's (its subfolders
        # are made by postfix-script), the data folder the postfix
        # user's, the Maildir base the mail owner's.
        postfix = pwd.getpwnam(POSTFIX_USER)
        os.chown(os.path.join(self.base, "data"), postfix.pw_uid, postfix.pw_gid)
        os.chown(os.path.join(self.base, "mail"), owner.pw_uid, owner.pw_gid)
        self.smtp_port = free_port()
        with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(base=self.base, uid=owner.pw_uid, gid=owner.pw_gid, relay_port=self.sink_port))
        with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.smtp_port))
        self._record = f"postfix-{os.path.basename(run_dir)}"
        self.registry.add_postfix(self._record, self.config_dir)
        self._running = True
        run(["postfix", "-c", self.config_dir, "start"], "postfix start", tty=True)
        wait_until(lambda: accepting(self.smtp_port), 60.0, f"postfix to listen on 127.0.0.1:{self.smtp_port}")

    def check_running(self) -> None:
        pass

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        try:
            run(["postfix", "-c", self.config_dir, "stop"], "postfix stop", tty=True)
        finally:
            self.registry.remove_postfix(self._record)
