"""A real Dovecot on loopback, checking bearer tokens against a test OAuth server.

``DovecotServer`` writes its own configuration into a temporary directory and runs
``dovecot -F -c FILE`` in the foreground, so the master's pid is ours to stop. It never
reads the system configuration nor talks to system services.

What it serves, all on free ports:

- IMAP and POP3, each on an implicit-TLS port and on a plain port that offers STARTTLS;
- optionally IMAP and POP3 on ports that do not offer STARTTLS at all. Dovecot decides
  STARTTLS per local address, not per listener, so these listen on a second loopback
  address (``127.0.0.2`` by default) with ``local 127.0.0.2 { ssl = no }``;
- LMTP and SASL auth on unix sockets, for Postfix to deliver and authenticate through.

Every user exists (static userdb, ``allow_all_users``) and authenticates with XOAUTH2
or OAUTHBEARER only; tokens are checked by RFC 7662 introspection on every login
(no auth cache, no failure delay, no per-IP penalty). The introspection endpoint is the
project's fake OAuth server by default, or any real authorization server: give its
introspection URL and the credentials of the client Dovecot introspects as.

TLS session resumption (``tls_resumption=True``, the default). Dovecot's login
processes (``imap-login``, ``pop3-login``) do the TLS, for the whole session, and by
default each connection gets a fresh one ("high-security mode", ``service_count = 1``):
a session id or ticket dies with its process, so no client ever resumes. In
"high-performance mode" (``service_count = 0``: one process serves many connections,
https://doc.dovecot.org/2.3/admin_manual/login_processes/#high-performance-mode) the
process's OpenSSL context keeps its session cache and ticket key, and Dovecot 2.3.19
with OpenSSL 3.0 then resumes TLS 1.3 tickets and TLS 1.2 sessions with no ``ssl_``
setting at all. ``process_min_avail = 1`` keeps one such process waiting; it takes
connections until ``default_client_limit`` is reached, so sequential test connections
land on the same process and resume. Seen: the second and later implicit-TLS and
STARTTLS connections resume, TLS 1.2 and 1.3 alike; with ``tls_resumption=False``
(high-security mode) none does -- a server that never resumes.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from mailoauth.testing._process import (
    DEFAULT_HOST,
    LOG_TAIL_LINES,
    ManagedServer,
    Probe,
    ServerStartError,
    free_ports,
    stop_process,
    tail,
    wait_until_ready,
)
from mailoauth.testing.certs import CertFiles

__all__ = ["DovecotServer", "MailUser", "ServerStartError"]

DEFAULT_NO_STARTTLS_HOST = "127.0.0.2"
STARTUP_TIMEOUT = 20.0
# Dovecot refuses to run mail processes as root; ``mail`` exists on every Debian system.
DEFAULT_MAIL_USER = "mail"
DEFAULT_MAX_SESSIONS = 100


@dataclass(frozen=True)
class MailUser:
    """The system account that owns the maildirs and runs Dovecot's mail processes."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> MailUser:
        entry = pwd.getpwnam(name)
        return cls(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


class DovecotServer(ManagedServer):
    """Dovecot with an oauth2 passdb, in a temporary directory, on free loopback ports.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Attributes after
    construction: ``host``, ``imap_port`` (plain, offers STARTTLS), ``imaps_port``,
    ``pop3_port``, ``pop3s_port``, ``no_starttls_host`` with ``imap_no_starttls_port`` /
    ``pop3_no_starttls_port`` (``None`` when disabled), ``lmtp_socket``, ``auth_socket``
    (for ``smtpd_sasl_path``), ``config_path``, ``log_path`` and, once started, ``pid``.
    """

    def __init__(
        self,
        introspection_url: str,
        certs: CertFiles,
        *,
        directory: str | os.PathLike[str] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        no_starttls_host: str | None = DEFAULT_NO_STARTTLS_HOST,
        mail_user: str = DEFAULT_MAIL_USER,
        startup_timeout: float = STARTUP_TIMEOUT,
        binary: str = "dovecot",
        introspection_client_id: str | None = None,
        introspection_client_secret: str | None = None,
        tls_resumption: bool = True,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be positive")
        if (introspection_client_secret is not None) and not introspection_client_id:
            raise ValueError("introspection_client_secret needs introspection_client_id")
        if urllib.parse.urlsplit(introspection_url).password is not None:
            # Dovecot would send HTTP Basic as well as the body credentials, which RFC
            # 6749 §2.3 forbids and real servers (node-oidc-provider) refuse; Dovecot
            # then reports a temporary failure for every login.
            raise ValueError(
                "put the introspection credentials in introspection_client_id / "
                "introspection_client_secret, not in the URL"
            )
        self.introspection_url = introspection_url
        self.introspection_client_id = introspection_client_id
        self.introspection_client_secret = introspection_client_secret
        self.certs = certs
        self.max_sessions = max_sessions
        self.tls_resumption = tls_resumption
        self.startup_timeout = startup_timeout
        self.binary = binary
        self.mail_user = MailUser.lookup(mail_user)
        self._own_directory = directory is None
        # Short paths: unix socket paths must fit in 108 bytes.
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mo-dc-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # dovecot, dovenull, postfix must traverse it
        self.host = DEFAULT_HOST
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = free_ports(4)
        self.no_starttls_host = no_starttls_host
        self.imap_no_starttls_port: int | None = None
        self.pop3_no_starttls_port: int | None = None
        if no_starttls_host is not None:
            self.imap_no_starttls_port, self.pop3_no_starttls_port = free_ports(2, no_starttls_host)
        self.base_dir = self.directory / "run"
        self.mail_root = self.directory / "mail"
        self.config_path = self.directory / "dovecot.conf"
        self.oauth2_path = self.directory / "oauth2.conf.ext"
        self.log_path = self.directory / "dovecot.log"
        self.lmtp_socket = self.base_dir / "lmtp"
        self.auth_socket = self.base_dir / "auth-postfix"
        self._proc: subprocess.Popen[bytes] | None = None
        self._deliveries = 0

    @property
    def pid(self) -> int | None:
        """The master process id while running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def probes(self) -> list[Probe]:
        """Every TCP listener, with the greeting it must send when ready."""
        h = self.host
        probes = [
            Probe(h, self.imaps_port, b"* OK", tls=True),
            Probe(h, self.pop3s_port, b"+OK", tls=True),
            Probe(h, self.imap_port, b"* OK"),
            Probe(h, self.pop3_port, b"+OK"),
        ]
        if self.no_starttls_host is not None:
            assert self.imap_no_starttls_port is not None
            assert self.pop3_no_starttls_port is not None
            probes += [
                Probe(self.no_starttls_host, self.imap_no_starttls_port, b"* OK"),
                Probe(self.no_starttls_host, self.pop3_no_starttls_port, b"+OK"),
            ]
        return probes

    def render_config(self) -> str:
        """The complete dovecot.conf for this instance."""
        n = self.max_sessions
        u = self.mail_user
        # One long-lived login process keeps TLS sessions and tickets resumable (see
        # the module docstring); else a process per connection (Dovecot's default).
        login_mode = (
            "  service_count = 0\n  process_min_avail = 1\n"
            if self.tls_resumption
            else "  service_count = 1\n"
        )
        no_tls = ""
        extra_imap = extra_pop3 = ""
        if self.no_starttls_host is not None:
            # Dovecot offers STARTTLS per local address; this address gets none.
            no_tls = f"local {self.no_starttls_host} {{\n  ssl = no\n}}\n"
            extra_imap = (
                f"  inet_listener imap_no_starttls {{\n"
                f"    address = {self.no_starttls_host}\n"
                f"    port = {self.imap_no_starttls_port}\n  }}\n"
            )
            extra_pop3 = (
                f"  inet_listener pop3_no_starttls {{\n"
                f"    address = {self.no_starttls_host}\n"
                f"    port = {self.pop3_no_starttls_port}\n  }}\n"
            )
        return f"""\
# Written by mailoauth.testing.dovecot; a test instance, not the system one.
instance_name = {self.directory.name}
base_dir = {self.base_dir}
state_dir = {self.directory / "state"}
log_path = {self.log_path}
protocols = imap pop3 lmtp
listen = {self.host}
default_login_user = dovenull
default_internal_user = dovecot
# No stats: a login process stopped mid-handshake with it delays shutdown by 5 s.
stats_writer_socket_path =
first_valid_uid = {u.uid}
first_valid_gid = {u.gid}

ssl = yes
ssl_cert = <{self.certs.cert}
ssl_key = <{self.certs.key}
{no_tls}
# Loopback counts as secure anyway; this also allows AUTH on the no-STARTTLS ports.
disable_plaintext_auth = no
auth_mechanisms = xoauth2 oauthbearer
auth_cache_size = 0
auth_failure_delay = 0
auth_verbose = yes
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.oauth2_path}
}}
# oauth2 cannot look users up; LMTP delivery needs every user to exist.
userdb {{
  driver = static
  args = uid={u.uid} gid={u.gid} home={self.mail_root}/%u allow_all_users=yes
}}
mail_location = maildir:~/Maildir

default_process_limit = {n}
default_client_limit = {max(1000, 2 * n)}
service imap {{
  process_limit = {n}
}}
service pop3 {{
  process_limit = {n}
}}
protocol imap {{
  mail_max_userip_connections = {n}
}}
protocol pop3 {{
  mail_max_userip_connections = {n}
}}

service imap-login {{
{login_mode}  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
{extra_imap}}}
service pop3-login {{
{login_mode}  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port}
    ssl = yes
  }}
{extra_pop3}}}
service lmtp {{
  unix_listener {self.lmtp_socket.name} {{
    mode = 0666
  }}
}}
# Started with the master, so a login process never waits for it (nor makes stop wait).
service auth {{
  process_min_avail = 1
  # One connection per login/LMTP process at full load: Dovecot counts 4 services.
  client_limit = {4 * n + 16}
  unix_listener {self.auth_socket.name} {{
    mode = 0666
  }}
}}
# Failed logins from 127.0.0.1 would otherwise delay later ones by up to 15 s.
service anvil {{
  client_limit = {3 * n + 16}
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

    def render_oauth2_config(self) -> str:
        """The oauth2 passdb's args file (RFC 7662 introspection by POST).

        Client credentials, when given, go in the POST body only (``client_id`` /
        ``client_secret``, which Dovecot 2.3 adds to the introspection form).
        """
        credentials = ""
        if self.introspection_client_id is not None:
            credentials = f"client_id = {self.introspection_client_id}\n"
            if self.introspection_client_secret is not None:
                credentials += f"client_secret = {self.introspection_client_secret}\n"
        return f"""\
introspection_mode = post
introspection_url = {self.introspection_url}
{credentials}username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 5000
"""

    def start(self) -> None:
        """Write the configuration, start Dovecot and wait until every listener is up.

        Raises ``ServerStartError`` (with the log tail) if it exits or is not ready
        within ``startup_timeout`` seconds; the process is stopped in that case.
        """
        if self._proc is not None:
            raise RuntimeError("already started")
        binary = shutil.which(self.binary) or shutil.which(self.binary, path="/usr/sbin")
        if binary is None:
            raise FileNotFoundError(f"{self.binary} not found")
        self.config_path.write_text(self.render_config())
        self.oauth2_path.write_text(self.render_oauth2_config())
        self.mail_root.mkdir(exist_ok=True)
        os.chown(self.mail_root, self.mail_user.uid, self.mail_user.gid)
        # The master keeps its stderr open; never let it inherit the caller's.
        with (self.directory / "dovecot.stderr").open("ab") as err:
            self._proc = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        problem = wait_until_ready(
            self.probes(),
            [self.lmtp_socket, self.auth_socket],
            self._proc,
            time.monotonic() + self.startup_timeout,
        )
        if problem is not None:
            self.stop(cleanup=False)
            raise ServerStartError(
                f"dovecot {problem} (config {self.config_path})\n"
                f"--- {self.log_path} ---\n{tail(self.log_path)}\n"
                f"--- stderr ---\n{tail(self.directory / 'dovecot.stderr')}"
            )

    def stop(self, *, cleanup: bool = True) -> None:
        """Stop the master by its pid (SIGTERM, then SIGKILL) and, if we created the
        directory and ``cleanup`` is true, remove it."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if cleanup and self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def maildir(self, user: str) -> Path:
        """The Maildir of ``user`` (as Dovecot names it: lower-cased), existing or not."""
        return self.mail_root / user.lower() / "Maildir"

    def deliver(self, user: str, message: bytes | str | Message, *, seen: bool = False) -> Path:
        """Put ``message`` straight into the INBOX of ``user``, bypassing SMTP and LMTP.

        Written to ``tmp/`` then renamed into ``new/`` (or ``cur/`` with the ``S`` flag
        if ``seen``), as the Maildir convention requires, and owned by the mail user.
        Returns the path of the message file.
        """
        if isinstance(message, Message):
            data = message.as_bytes()
        elif isinstance(message, str):
            data = message.encode()
        else:
            data = message
        data = data.replace(b"\r\n", b"\n")  # maildir files use bare LF
        maildir = self.maildir(user)
        created = [maildir.parent, maildir] + [maildir / sub for sub in ("cur", "new", "tmp")]
        for path in created:
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, self.mail_user.uid, self.mail_user.gid)
        self._deliveries += 1
        now = time.time()
        host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        base = (
            f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{self._deliveries}"
            f".{host},S={len(data)}"
        )
        tmp = maildir / "tmp" / base
        tmp.write_bytes(data)
        os.chown(tmp, self.mail_user.uid, self.mail_user.gid)
        final = maildir / "cur" / f"{base}:2,S" if seen else maildir / "new" / base
        tmp.rename(final)
        return final
