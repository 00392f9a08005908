"""POP3 session states and every transition between them, in one table.

RFC 1939 §3 names three states: AUTHORIZATION, TRANSACTION and UPDATE. The client side
adds the moments around them: waiting for the greeting, waiting for the driver to run
the TLS handshake after ``STLS``, closed, and broken (after a protocol error).

States change only through :data:`TRANSITIONS`, keyed by (state, trigger); a pair that
is not in the table is a bug in the caller or in the protocol object, never a silent
no-op. Which commands may be sent in which state is :data:`ALLOWED_COMMANDS`; which
replies move the state is :data:`REPLY_TRIGGERS`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

__all__ = [
    "ALLOWED_COMMANDS",
    "BARRIER_COMMANDS",
    "REPLY_TRIGGERS",
    "TRANSITIONS",
    "State",
    "Trigger",
]


class State(enum.Enum):
    """Where a POP3 session is, seen from the client."""

    GREETING = "GREETING"
    """Connected; the server's greeting has not been read yet."""
    AUTHORIZATION = "AUTHORIZATION"
    """RFC 1939 §4: identify (USER/PASS, APOP, AUTH), STLS, CAPA."""
    STARTTLS = "STARTTLS"
    """``STLS`` was accepted; the driver must run the TLS handshake before anything else."""
    TRANSACTION = "TRANSACTION"
    """RFC 1939 §5: the maildrop is locked and open."""
    UPDATE = "UPDATE"
    """RFC 1939 §6: ``QUIT`` was sent from TRANSACTION; deletions are being committed."""
    CLOSED = "CLOSED"
    """The session is over (QUIT answered, the greeting refused, or the server hung up)."""
    ERROR = "ERROR"
    """The server broke the protocol or a limit; the connection must be dropped."""


class Trigger(enum.Enum):
    """What moves a session from one state to another."""

    GREETING_OK = "GREETING_OK"
    GREETING_ERR = "GREETING_ERR"
    LOGIN_OK = "LOGIN_OK"  # +OK to PASS, APOP or AUTH
    STLS_OK = "STLS_OK"
    TLS_STARTED = "TLS_STARTED"  # the driver is about to run the handshake
    QUIT_SENT = "QUIT_SENT"
    QUIT_REPLIED = "QUIT_REPLIED"  # +OK or -ERR: the server closes either way
    PEER_CLOSED = "PEER_CLOSED"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"


_S = State
_T = Trigger

TRANSITIONS: Final[Mapping[tuple[State, Trigger], State]] = {
    (_S.GREETING, _T.GREETING_OK): _S.AUTHORIZATION,
    (_S.GREETING, _T.GREETING_ERR): _S.CLOSED,
    (_S.AUTHORIZATION, _T.LOGIN_OK): _S.TRANSACTION,
    (_S.AUTHORIZATION, _T.STLS_OK): _S.STARTTLS,
    (_S.STARTTLS, _T.TLS_STARTED): _S.AUTHORIZATION,
    # QUIT from AUTHORIZATION ends the session without an UPDATE state (RFC 1939 §4).
    (_S.AUTHORIZATION, _T.QUIT_SENT): _S.AUTHORIZATION,
    (_S.AUTHORIZATION, _T.QUIT_REPLIED): _S.CLOSED,
    (_S.TRANSACTION, _T.QUIT_SENT): _S.UPDATE,
    (_S.UPDATE, _T.QUIT_REPLIED): _S.CLOSED,
    **{(state, _T.PEER_CLOSED): _S.CLOSED for state in State if state is not _S.ERROR},
    **{(state, _T.PROTOCOL_ERROR): _S.ERROR for state in State},
}

ALLOWED_COMMANDS: Final[Mapping[State, frozenset[str]]] = {
    _S.GREETING: frozenset(),
    _S.AUTHORIZATION: frozenset({"USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "QUIT"}),
    _S.STARTTLS: frozenset(),
    _S.TRANSACTION: frozenset(
        {"STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET", "CAPA", "QUIT"}
    ),
    _S.UPDATE: frozenset(),
    _S.CLOSED: frozenset(),
    _S.ERROR: frozenset(),
}

#: Commands whose reply may change the state (or, for STLS, the transport): nothing may
#: be pipelined behind them until that reply has been read (RFC 2449 §6.6, RFC 2595 §4).
BARRIER_COMMANDS: Final = frozenset({"PASS", "APOP", "AUTH", "STLS", "QUIT"})

#: The trigger a status reply fires, by (command, ``+OK``?); a reply not listed leaves
#: the state alone. QUIT ends the session either way: the server closes after it.
REPLY_TRIGGERS: Final[Mapping[tuple[str, bool], Trigger]] = {
    ("QUIT", True): _T.QUIT_REPLIED,
    ("QUIT", False): _T.QUIT_REPLIED,
    ("PASS", True): _T.LOGIN_OK,
    ("APOP", True): _T.LOGIN_OK,
    ("AUTH", True): _T.LOGIN_OK,
    ("STLS", True): _T.STLS_OK,
}
