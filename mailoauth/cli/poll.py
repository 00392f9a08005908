"""``mailoauth poll``: run a poll worker from a TOML config; ``status``, ``add``,
``remove`` for a fleet on Redis.

``mailoauth poll --config mailboxes.toml`` watches the file's mailboxes with the
single-process :class:`~mailoauth.poll.Poller`, remembering what was handled in a state
file (``--state``; default: ``mailboxes.state.json`` next to the config), so that a
restart reports nothing twice. With ``--redis URL`` it runs one worker of a fleet
instead (:class:`~mailoauth.poll.fleet.FleetWorker`): the config's mailboxes are added
to the fleet, leases, state and tokens live in Redis.

Each event is one JSON object per line on stdout (:func:`event_json`), flushed at once,
and acknowledged once written; logs go to stderr. ``--handler module:function`` awaits
that function with each event instead, and acknowledges the event when it returns; if
it raises, the worker stops with status 1 and the event, unacknowledged, is reported
again on the next start. SIGTERM or SIGINT stops the worker cleanly (a fleet worker
hands its leases over at once), with status 0; a second one stops it at once, even in
the middle of a handler that does not return (status 1, that event unacknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import email.policy
import email.utils
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import textwrap
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, Final, Protocol

from mailoauth._util.text import escape_controls
from mailoauth.cli.metrics import PollMetrics
from mailoauth.errors import ConfigurationError, LockLostError, TransportError
from mailoauth.poll.config import PollConfig, TokenSources, load_config
from mailoauth.poll.fleet import DEFAULT_PREFIX, Fleet, FleetStatus, FleetWorker
from mailoauth.poll.mailbox_spec import MailboxSpec
from mailoauth.poll.poller import Poller
from mailoauth.poll.spec import Mailbox, MailboxFailed, NewMessage, PollEvent
from mailoauth.poll.state import FilePollStateStore

__all__ = [
    "DEFAULT_FLEET_PREFIX",
    "add_parser",
    "event_json",
    "load_handler",
    "state_path",
]

log = logging.getLogger("mailoauth.cli.poll")

DEFAULT_FLEET_PREFIX: Final = DEFAULT_PREFIX
#: The most of a message's head read for the JSON line and the delivery lag.
MAX_HEADER_BYTES: Final = 64 * 1024
#: How often a fleet worker's held mailboxes are sampled for the metrics.
OWNED_SAMPLE_INTERVAL: Final = 1.0
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_HEADERS = BytesHeaderParser(policy=email.policy.default)

EventHandler = Callable[[PollEvent], Awaitable[object] | object]

_USAGE = """\
The config file (TOML):

  [credentials.alice]            # one token provider per credential
  kind = "oauth2"                # or "google", "microsoft"
  token_url = "https://idp.example.com/token"
  client_id = "mail-worker"
  client_secret_env = "ALICE_SECRET"   # or client_secret = "..."
  refresh_token_env = "ALICE_RT"       # or refresh_token = "..."

  [[mailbox]]
  protocol = "imap"              # or "pop3"
  host = "imap.example.com"
  port = 993
  username = "alice@example.com"
  credential = "alice"
  security = "auto"              # auto | ssl_implicit | ssl_explicit
  folder = "INBOX"

  [tokens]                       # optional: keep refreshed tokens (not with --redis)
  store = "tokens.json"
  [poll]                         # optional: interval, use_idle, idle_timeout, start,
  start = "new"                  # fetch_batch, max_connections, max_per_host, ...

Each event is one JSON line on stdout:
  {"event": "new_message", "mailbox": KEY, "uid": 7, "uidvalidity": 1, "dedupe_key":
   "...", "redelivered": false, "message_id": "<...>", "subject": "...", "size": 1234}
  {"event": "mailbox_failed", "mailbox": KEY, "permanent": true, "reason": "..."}
Logs go to stderr. SIGTERM/SIGINT stop the worker cleanly (exit status 0).

Fleet: 'mailoauth poll --redis URL --config F' on each machine; 'mailoauth poll status
--redis URL' shows workers, leases, lag and failures; 'poll add' / 'poll remove' change
the fleet's mailboxes while it runs.
"""


# -- the parser ------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "poll",
        usage="mailoauth poll --config FILE [--redis URL] [options]\n"
        "       mailoauth poll {status,add,remove} --redis URL ...",
        help="watch the mailboxes of a config file; print each new message as a JSON line",
        description=textwrap.fill(
            "Run a poll worker: watch the mailboxes of a TOML config file and report each "
            "new message (and each failure) as one JSON line on stdout. With --redis, run "
            "one worker of a fleet sharing the mailboxes through Redis.",
            width=88,
        ),
        epilog=_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the TOML config file (required to run)"
    )
    parser.add_argument(
        "--redis", metavar="URL", help="run as a fleet worker on this Redis (redis://host:6379/0)"
    )
    parser.add_argument(
        "--worker-id", metavar="ID", help="this worker's name in the fleet (with --redis)"
    )
    parser.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        help="how long a mailbox lease lives without renewal (with --redis; default 30)",
    )
    parser.add_argument(
        "--prefix",
        default=DEFAULT_FLEET_PREFIX,
        help=f"the fleet's Redis key prefix (with --redis; default {DEFAULT_FLEET_PREFIX})",
    )
    parser.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="where the handled state is kept without --redis (default: CONFIG.state.json)",
    )
    parser.add_argument(
        "--handler",
        dest="event_handler",
        metavar="MODULE:FUNCTION",
        help="await this function with each event instead of printing it; the event is "
        "acknowledged when it returns",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus metrics on this port (needs mailoauth[metrics])",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address the metrics are served on (default 127.0.0.1)",
    )
    parser.set_defaults(handler=run_worker)
    actions = parser.add_subparsers(title="fleet actions", metavar="ACTION")
    status = actions.add_parser(
        "status",
        prog="mailoauth poll status",
        help="the fleet's workers, leases, lag and failures",
        description="Show the fleet's workers (last heartbeat, mailboxes held), its "
        "mailboxes' leases and lag, and their failures.",
    )
    _fleet_arguments(status)
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")
    status.set_defaults(handler=run_status)
    add = actions.add_parser(
        "add",
        prog="mailoauth poll add",
        help="add (or replace) the mailboxes of a config file in the fleet",
        description="Add the [[mailbox]] entries of the config file to the fleet (one "
        "with the same key is replaced). Every worker needs the credentials they name.",
    )
    _fleet_arguments(add)
    add.add_argument(
        "--config", type=Path, metavar="FILE", required=True, help="the TOML config file"
    )
    add.set_defaults(handler=run_add)
    remove = actions.add_parser(
        "remove",
        prog="mailoauth poll remove",
        help="remove a mailbox from the fleet, by key",
        description="Remove the mailbox KEY from the fleet; its worker stops watching it.",
    )
    _fleet_arguments(remove)
    remove.add_argument("key", nargs="+", help="the mailbox key(s) ('poll status' lists them)")
    remove.set_defaults(handler=run_remove)


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", metavar="URL", required=True, help="the fleet's Redis")
    parser.add_argument(
        "--prefix",
        default=DEFAULT_FLEET_PREFIX,
        help=f"the fleet's Redis key prefix (default {DEFAULT_FLEET_PREFIX})",
    )


# -- events as JSON --------------------------------------------------------------------


def _head(raw: bytes) -> bytes:
    end = _BLANK_LINE.search(raw, 0, MAX_HEADER_BYTES)
    return raw[: end.start() if end else MAX_HEADER_BYTES] + b"\r\n\r\n"


def _header(headers: Any, name: str) -> str | None:
    try:
        value = headers.get(name)
    except Exception:  # a malformed header must not lose the event
        return None
    return None if value is None else str(value).strip()


def _arrival(headers: Any) -> dt.datetime | None:
    """When the message arrived: the newest ``Received:`` timestamp, else ``Date:``."""
    candidates: list[str] = []
    try:
        received = headers.get_all("received") or []
        if received:
            candidates.append(str(received[0]).rpartition(";")[2])
        if headers.get("date") is not None:
            candidates.append(str(headers.get("date")))
    except Exception:
        return None
    for text in candidates:
        try:
            moment = email.utils.parsedate_to_datetime(text.strip())
        except (TypeError, ValueError, IndexError):
            continue
        # "-0000" (RFC 5322 §3.3: UTC, origin's zone unknown) parses as naive.
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
    return None


def event_json(event: PollEvent) -> tuple[dict[str, Any], float | None]:
    """The JSON object that reports ``event``, and its delivery lag in seconds (None
    when the message names no arrival time)."""
    if isinstance(event, MailboxFailed):
        reason = f"{type(event.error).__name__}: {event.error}".strip().rstrip(":")
        return {
            "event": "mailbox_failed",
            "mailbox": event.mailbox,
            "permanent": event.permanent,
            "reason": reason,
        }, None
    headers = _HEADERS.parsebytes(_head(event.raw))
    arrived = _arrival(headers)
    lag = None if arrived is None else (dt.datetime.now(dt.timezone.utc) - arrived).total_seconds()
    return {
        "event": "new_message",
        "mailbox": event.mailbox,
        "uid": event.uid,
        "uidvalidity": event.uidvalidity,
        "dedupe_key": event.dedupe_key,
        "redelivered": event.redelivered,
        "message_id": _header(headers, "message-id"),
        "subject": _header(headers, "subject"),
        "size": len(event.raw),
    }, lag


# -- the handler -----------------------------------------------------------------------


def load_handler(spec: str) -> EventHandler:
    """The function ``module:function`` names (the current directory is searched
    first, as ``python -m`` does). Raises
    :class:`~mailoauth.errors.ConfigurationError` when it cannot be imported or is not
    callable."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"--handler must be MODULE:FUNCTION (e.g. myapp.mail:on_event), not {spec!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"--handler {spec}: cannot import {module_name}: {exc}; run from the directory "
            "that holds it or set PYTHONPATH"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigurationError(f"--handler {spec}: {module_name} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigurationError(f"--handler {spec}: {attribute} is not callable")
    handler: EventHandler = target
    return handler


# -- running a worker ------------------------------------------------------------------


class EventStream(Protocol):
    """What the worker reads events from: a :class:`~mailoauth.poll.Poller`, or a
    fleet worker (``auto_ack=False`` for both: the command acknowledges)."""

    def __aiter__(self) -> AsyncIterator[PollEvent]: ...

    async def ack(self, event: NewMessage) -> None: ...

    def stop(self) -> None: ...


def state_path(config: Path) -> Path:
    """The default state file of ``config``: ``NAME.state.json`` beside it."""
    return config.with_name(f"{config.stem}.state.json")


def safe_url(url: str) -> str:
    """``url`` without its password, for log lines and output."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.hostname or ""
    netloc = (
        user + (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _single_process(
    config: PollConfig, sources: TokenSources, state: Path
) -> AbstractAsyncContextManager[EventStream]:
    if not config.mailboxes:
        raise ConfigurationError(
            f"{config.path} has no [[mailbox]] table: nothing to watch (a config of "
            "credentials only is for a fleet worker, with --redis)"
        )
    mailboxes = [sources.resolve(spec) for spec in config.mailboxes]
    log.info("watching %d mailbox(es) of %s; state in %s", len(mailboxes), config.path, state)
    return Poller(
        mailboxes,
        state_store=FilePollStateStore(state),
        auto_ack=False,
        **config.poll_options,
    )


@contextlib.asynccontextmanager
async def _fleet_worker(
    config: PollConfig, sources: TokenSources, args: argparse.Namespace
) -> AsyncIterator[EventStream]:
    def resolve(spec: MailboxSpec) -> Mailbox:
        return sources.resolve(spec)

    async with Fleet(args.redis, prefix=args.prefix) as fleet:
        for spec in config.mailboxes:
            await fleet.add(spec)
    options: dict[str, Any] = dict(config.poll_options)
    if args.lease is not None:
        options["lease"] = args.lease
    # The worker makes its connection budgets itself (a RedisBudgets with its own id,
    # lease and the [poll] limits): the caps hold across the fleet, not per worker
    # (Gmail's and Exchange's limits count an account's connections wherever they come
    # from), and `poll status` counts each worker's connections under its id.
    worker = FleetWorker(
        args.redis,
        resolve,
        worker_id=args.worker_id,
        prefix=args.prefix,
        auto_ack=False,
        **options,
    )
    async with worker:
        log.info(
            "fleet worker %s on %s (prefix %s); %d mailbox(es) of %s added",
            worker.worker_id,
            safe_url(args.redis),
            args.prefix,
            len(config.mailboxes),
            config.path,
        )
        yield worker


def _write_line(data: Mapping[str, Any]) -> None:
    # ensure_ascii: control characters and line breaks in a subject stay escaped, so
    # one event is always exactly one line.
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def _sample_owned(stream: EventStream, metrics: PollMetrics) -> None:
    while True:
        owned = getattr(stream, "owned", None)
        if owned is not None:
            metrics.watching(owned)
        await asyncio.sleep(OWNED_SAMPLE_INTERVAL)


def _setup_logging() -> None:
    """Log lines to stderr (INFO for the command, WARNING for the library) unless
    ``--debug`` set up logging already."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    log.setLevel(logging.INFO)


class _EscapingFormatter(logging.Formatter):
    """Log lines quote server text: its control characters are shown, never obeyed."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def run_worker(args: argparse.Namespace) -> int:
    if args.config is None:
        raise ConfigurationError("mailoauth poll needs --config FILE (see mailoauth poll --help)")
    fleet_only = [
        name
        for name, value in (("--worker-id", args.worker_id), ("--lease", args.lease))
        if value is not None
    ]
    if args.redis is None and fleet_only:
        raise ConfigurationError(f"{', '.join(fleet_only)} only make sense with --redis")
    if args.redis is not None and args.state is not None:
        raise ConfigurationError("--state is for a single worker: with --redis, state is in Redis")
    if args.lease is not None and not args.lease > 0:
        raise ConfigurationError(f"--lease must be a positive number of seconds, not {args.lease}")
    _setup_logging()
    config = load_config(args.config)
    handler = load_handler(args.event_handler) if args.event_handler else None
    metrics = PollMetrics() if args.metrics_port is not None else None
    return asyncio.run(_run(args, config, handler, metrics))


async def _run(
    args: argparse.Namespace,
    config: PollConfig,
    handler: EventHandler | None,
    metrics: PollMetrics | None,
) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stopping = asyncio.Event()
    stream: EventStream | None = None
    forced = False

    def on_signal(signum: int) -> None:
        nonlocal forced
        name = signal.Signals(signum).name
        if stopping.is_set():
            # A second signal: whatever runs (a handler that does not return) is
            # cancelled; its event stays unacknowledged.
            if not forced and main is not None:
                forced = True
                log.warning("%s again: stopping now, without waiting", name)
                main.cancel()
            return
        log.info("%s: stopping", name)
        stopping.set()
        if stream is not None:
            stream.stop()

    sources = config.sources(
        redis=args.redis,
        # One prefix holds all of a fleet's keys, its tokens included.
        redis_prefix=f"{args.prefix}:tokens:",
        dialer=metrics.dialer if metrics is not None else None,
        on_token_request=metrics.token_request if metrics is not None else None,
    )
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        if metrics is not None:
            port = metrics.serve(args.metrics_port, args.metrics_host)
            log.info("metrics on http://%s:%d/metrics", args.metrics_host, port)
        async with sources:
            source: AbstractAsyncContextManager[EventStream] = (
                _single_process(config, sources, args.state or state_path(config.path))
                if args.redis is None
                else _fleet_worker(config, sources, args)
            )
            async with source as stream:
                if stopping.is_set():
                    stream.stop()
                return await _consume(stream, stopping, handler, metrics, args.event_handler)
    except asyncio.CancelledError:
        if forced:
            return 1
        raise
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        if metrics is not None:
            metrics.close()


async def _consume(
    stream: EventStream,
    stopping: asyncio.Event,
    handler: EventHandler | None,
    metrics: PollMetrics | None,
    handler_name: str | None,
) -> int:
    sampler: asyncio.Task[None] | None = None
    if metrics is not None:
        if getattr(stream, "owned", None) is None and isinstance(stream, Poller):
            metrics.watching(stream.mailboxes)
        else:
            sampler = asyncio.create_task(_sample_owned(stream, metrics))
    try:
        async for event in stream:
            if stopping.is_set():
                break  # not acknowledged: reported again on the next start
            data, lag = event_json(event)
            if metrics is not None:
                metrics.observe(event, lag)
            if isinstance(event, MailboxFailed) and event.permanent:
                log.warning("%s: set aside: %s", event.mailbox, data["reason"])
            if handler is None:
                try:
                    _write_line(data)
                except BrokenPipeError:
                    # Whoever read stdout is gone; stop, leaving this event unacknowledged.
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, sys.stdout.fileno())
                    log.error("stdout was closed; stopping")
                    return 1
            else:
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    what = event.dedupe_key if isinstance(event, NewMessage) else event.mailbox
                    log.exception(
                        "the handler %s raised on %s; stopping. The event was not "
                        "acknowledged: the next start (in a fleet, the mailbox's next "
                        "worker) reports it again",
                        handler_name,
                        what,
                    )
                    return 1
            if isinstance(event, NewMessage):
                try:
                    await stream.ack(event)
                except (LockLostError, TransportError) as exc:
                    # Unacknowledged, so never lost: the next holder of the mailbox (a
                    # fleet takeover) or the next start reports it again.
                    log.warning("%s: not acknowledged: %s", event.dedupe_key, exc)
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    return 0


# -- the fleet actions -----------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    return asyncio.run(_status(args.redis, args.prefix, as_json=args.json))


def run_add(args: argparse.Namespace) -> int:
    # Only the mailboxes go to Redis: the secrets' variables need not be set here.
    config = load_config(args.config, secrets=False)
    return asyncio.run(_add(args.redis, args.prefix, config))


def run_remove(args: argparse.Namespace) -> int:
    return asyncio.run(_remove(args.redis, args.prefix, args.key))


async def _status(redis: str, prefix: str, *, as_json: bool) -> int:
    async with Fleet(redis, prefix=prefix) as fleet:
        status = await fleet.status()
        mailboxes = await fleet.mailboxes()
    report = status_json(status, mailboxes)
    if as_json:
        _write_line(report)
    else:
        for line in status_text(report, safe_url(redis), prefix):
            print(escape_controls(line), flush=True)
    return 0


def status_json(status: FleetStatus, mailboxes: Mapping[str, MailboxSpec]) -> dict[str, Any]:
    """A fleet's status (a :class:`~mailoauth.poll.fleet.FleetStatus`) as one
    JSON-ready object: ``workers`` (id, seconds since the last heartbeat, keys held),
    and per mailbox its worker, lag (seconds its oldest unacknowledged event waited)
    and failure. The heartbeat age compares the Redis server's clock with this
    machine's."""
    now = time.time()
    workers = [
        {
            "id": worker.worker_id,
            "heartbeat_age": round(max(0.0, now - worker.last_heartbeat), 3),
            "mailboxes": sorted(worker.keys),
        }
        for worker in status.workers.values()
    ]
    leases: Mapping[str, str] = status.leases
    failures: Mapping[str, str] = status.failures
    lag: Mapping[str, float] = status.lag
    boxes = {
        key: {
            "worker": leases.get(key),
            "lag": None if lag.get(key) is None else round(lag[key], 3),
            "failure": failures.get(key),
        }
        for key in sorted(set(mailboxes) | set(leases) | set(failures))
    }
    return {"workers": workers, "mailboxes": boxes}


def status_text(report: Mapping[str, Any], redis: str, prefix: str) -> list[str]:
    """``status_json``'s report as lines for a terminal."""
    boxes: Mapping[str, Mapping[str, Any]] = report["mailboxes"]
    leased = sum(1 for box in boxes.values() if box["worker"])
    failed = sum(1 for box in boxes.values() if box["failure"])
    lines = [
        f"fleet {prefix} on {redis}: {len(report['workers'])} worker(s), {len(boxes)} "
        f"mailbox(es), {leased} leased, {failed} failed"
    ]
    lines.append("")
    lines.append("workers:")
    for worker in report["workers"]:
        age = worker["heartbeat_age"]
        lines.append(
            f"  {worker['id']}  heartbeat {age:.1f} s ago  {len(worker['mailboxes'])} mailbox(es)"
        )
    if not report["workers"]:
        lines.append("  none")
    lines.append("")
    lines.append("mailboxes:")
    for key, box in boxes.items():
        lag = "-" if box["lag"] is None else f"{box['lag']:.1f} s"
        parts = [f"  {key}", f"worker {box['worker'] or '(none)'}", f"lag {lag}"]
        if box["failure"]:
            parts.append(f"FAILED: {box['failure']}")
        lines.append("  ".join(parts))
    if not boxes:
        lines.append("  none")
    return lines


async def _add(redis: str, prefix: str, config: PollConfig) -> int:
    async with Fleet(redis, prefix=prefix) as fleet:
        for spec in config.mailboxes:
            await fleet.add(spec)
    print(f"added {len(config.mailboxes)} mailbox(es) of {config.path} to {prefix}", flush=True)
    return 0


async def _remove(redis: str, prefix: str, keys: Sequence[str]) -> int:
    async with Fleet(redis, prefix=prefix) as fleet:
        known = await fleet.mailboxes()
        missing = [key for key in keys if key not in known]
        if missing:
            raise ConfigurationError(
                f"no mailbox {', '.join(map(repr, missing))} in the fleet {prefix} "
                "('mailoauth poll status' lists them); nothing removed"
            )
        for key in keys:
            await fleet.remove(key)
    print(f"removed {len(keys)} mailbox(es) from {prefix}", flush=True)
    return 0
