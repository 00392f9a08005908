"""A real Postfix on loopback as the submission server, authenticating through Dovecot.

``PostfixServer`` writes ``main.cf`` and ``master.cf`` into a temporary directory (with
the queue and data directories inside it) and runs ``postfix -c DIR start``; it never
reads ``/etc/postfix/main.cf`` nor touches the system instance. SMTP AUTH (XOAUTH2,
OAUTHBEARER) is delegated to Dovecot's auth socket, so the same oauth2 passdb decides,
and mail for ``*@example.test`` is delivered to Dovecot over LMTP. Mail for any other
domain is accepted from authenticated clients and discarded.

Listeners, all on ``127.0.0.1`` and free ports:

- ``submission_port``: STARTTLS required before MAIL and before AUTH is offered;
- ``smtps_port``: implicit TLS (``smtpd_tls_wrappermode``);
- ``no_starttls_port``: does not offer STARTTLS at all (AUTH is offered in plaintext),
  for clients that must refuse to go on without it.

``line_length_limit`` is left at Postfix's default of 2048 on purpose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from mailoauth.testing._process import (
    DEFAULT_HOST,
    LOG_TAIL_LINES,
    POLL_INTERVAL,
    STOP_TIMEOUT,
    ManagedServer,
    Probe,
    ServerStartError,
    free_ports,
    tail,
    wait_until_ready,
)
from mailoauth.testing.certs import CertFiles

__all__ = ["PostfixServer", "ServerStartError"]

DEFAULT_DOMAIN = "example.test"
STARTUP_TIMEOUT = 20.0
DEFAULT_MAX_SESSIONS = 100
# Postfix sleeps ~1.5 s at start-up when main.cf changed within the last second.
MAIN_CF_BACKDATE = 10.0

# Only what a submission server needs; chroot off so absolute socket paths work.
_MASTER_SERVICES = """\
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
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixServer(ManagedServer):
    """Postfix submission on free loopback ports, in a temporary directory.

    ``dovecot_auth_socket`` is Dovecot's auth unix listener (``smtpd_sasl_path``) and
    ``dovecot_lmtp_socket`` its LMTP listener (``virtual_transport``). Use as a context
    manager or call :meth:`start` / :meth:`stop`. Attributes: ``host``,
    ``submission_port``, ``smtps_port``, ``no_starttls_port``, ``domain``,
    ``config_dir``, ``log_path`` and, once started, ``pid`` (the master's).
    """

    def __init__(
        self,
        certs: CertFiles,
        dovecot_auth_socket: str | os.PathLike[str],
        dovecot_lmtp_socket: str | os.PathLike[str],
        *,
        directory: str | os.PathLike[str] | None = None,
        domain: str = DEFAULT_DOMAIN,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        startup_timeout: float = STARTUP_TIMEOUT,
        binary: str = "postfix",
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be positive")
        self.certs = certs
        self.auth_socket = Path(dovecot_auth_socket)
        self.lmtp_socket = Path(dovecot_lmtp_socket)
        self.domain = domain
        self.max_sessions = max_sessions
        self.startup_timeout = startup_timeout
        self.binary = binary
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mo-pf-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # the postfix user must traverse it
        self.host = DEFAULT_HOST
        self.submission_port, self.smtps_port, self.no_starttls_port = free_ports(3)
        self.config_dir = self.directory / "etc"
        self.queue_dir = self.directory / "queue"
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "postfix.log"
        self.pid: int | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def render_main_cf(self) -> str:
        """The complete main.cf for this instance."""
        return f"""\
# Written by mailoauth.testing.postfix; a test instance, not the system one.
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {self.log_path}
maillog_file_prefixes = {self.directory}
myhostname = localhost
mydomain = {self.domain}
myorigin = {self.domain}
mydestination =
inet_interfaces = {self.host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
relayhost =
biff = no
smtpd_peername_lookup = no
smtpd_error_sleep_time = 0
default_process_limit = {self.max_sessions}

# Everything @{self.domain} goes to Dovecot over LMTP; every user exists there.
virtual_mailbox_domains = {self.domain}
virtual_transport = lmtp:unix:{self.lmtp_socket}
smtpd_reject_unlisted_recipient = no
# Authenticated mail to other domains is accepted and dropped, never relayed.
default_transport = discard
relay_transport = discard

smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {self.auth_socket}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject

smtpd_tls_cert_file = {self.certs.cert}
smtpd_tls_key_file = {self.certs.key}
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_tls_loglevel = 1
"""

    def render_master_cf(self) -> str:
        """The complete master.cf: three smtpd listeners plus the internal services."""
        h = self.host
        return (
            f"{h}:{self.submission_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/submission\n"
            f"{h}:{self.smtps_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/smtps\n"
            "  -o smtpd_tls_wrappermode=yes\n"
            f"{h}:{self.no_starttls_port} inet n - n - - smtpd\n"
            "  -o syslog_name=postfix/no-starttls\n"
            "  -o smtpd_tls_security_level=none\n"
            "  -o smtpd_tls_auth_only=no\n" + _MASTER_SERVICES
        )

    def _postfix(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        binary = shutil.which(self.binary) or shutil.which(self.binary, path="/usr/sbin")
        if binary is None:
            raise FileNotFoundError(f"{self.binary} not found")
        return subprocess.run(
            [binary, "-c", str(self.config_dir), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """Write the configuration, start Postfix and wait until its ports accept.

        Raises ``ServerStartError`` (with the log tail) when ``postfix start`` fails or
        the listeners are not up within ``startup_timeout`` seconds.
        """
        if self.pid is not None:
            raise RuntimeError("already started")
        for path in (self.config_dir, self.queue_dir):
            path.mkdir(mode=0o755, exist_ok=True)
        main_cf = self.config_dir / "main.cf"
        main_cf.write_text(self.render_main_cf())
        (self.config_dir / "master.cf").write_text(self.render_master_cf())
        backdated = time.time() - MAIN_CF_BACKDATE
        os.utime(main_cf, (backdated, backdated))
        deadline = time.monotonic() + self.startup_timeout
        # `start` creates the queue directories with the ownership Postfix wants.
        result = self._postfix("start", timeout=self.startup_timeout)
        if result.returncode != 0:
            self._fail(f"`postfix start` exited with {result.returncode}", result.stderr)
        self.pid = self._read_pid(deadline)
        problem = wait_until_ready(
            [
                Probe(self.host, self.smtps_port, b"220", tls=True),
                Probe(self.host, self.submission_port, b"220"),
                Probe(self.host, self.no_starttls_port, b"220"),
            ],
            [],
            None,
            deadline,
        )
        if problem is not None:
            self._fail(f"postfix {problem}", result.stderr)

    def _read_pid(self, deadline: float) -> int | None:
        pid_file = self.queue_dir / "pid" / "master.pid"
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(pid_file.read_text().strip())
            time.sleep(POLL_INTERVAL)
        return None

    def _fail(self, problem: str, stderr: str) -> None:
        self.stop(cleanup=False)
        raise ServerStartError(
            f"{problem} (config {self.config_dir})\n"
            f"--- postfix output ---\n{stderr.strip()}\n"
            f"--- {self.log_path} ---\n{tail(self.log_path)}"
        )

    def stop(self, *, cleanup: bool = True) -> None:
        """Stop the master by its pid (SIGTERM, then SIGKILL) and, if we created the
        directory and ``cleanup`` is true, remove it."""
        pid, self.pid = self.pid, None
        if pid is not None and _alive(pid):
            # The master's SIGTERM handler stops its children too, as `postfix stop` does.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, STOP_TIMEOUT):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, STOP_TIMEOUT)
        if cleanup and self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0; Postfix's master is not our child, so it is
    # reaped by init, but check /proc for the window before that.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(POLL_INTERVAL)
    return False
