"""One fleet worker process, for tests/integration/test_fleet_processes.py.

Usage: ``python -m tests.integration.fleet_worker CONFIG.json WORKER_ID``

CONFIG.json (written by the test, mode 0600) holds the Redis URL and prefix, the lease,
the poller options, and the credentials: a token endpoint, a client, and one refresh
token per credential name. Each credential becomes one OAuth2TokenProvider on a
RedisTokenStore shared by the fleet, so a credential is refreshed once per fleet.

Prints one JSON object per line on stdout: ``{"event": "ready"}`` once running, then
``new_message`` / ``mailbox_failed`` events; logs go to stderr. SIGTERM leaves cleanly
(leases handed over) and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Any

import httpx
import redis.asyncio

from mailoauth.poll import Mailbox, MailboxSpec, NewMessage
from mailoauth.poll.fleet import FleetWorker
from mailoauth.tokens import OAuth2TokenProvider, RefreshTokenGrant
from mailoauth.tokens.redis_store import RedisTokenStore


def emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def main(config: dict[str, Any], worker_id: str) -> int:
    # A blocking pool: hundreds of first refreshes at once would exceed a plain pool's
    # connections (MaxConnectionsError) and send their mailboxes into backoff.
    pool = redis.asyncio.BlockingConnectionPool.from_url(config["redis"], max_connections=64)
    store = RedisTokenStore(
        redis.asyncio.Redis(connection_pool=pool), prefix=config["prefix"] + ":tokens:"
    )
    providers: dict[str, OAuth2TokenProvider] = {}
    # One HTTP client for every provider: each client of its own would load the
    # system's CA store (about 50 ms of CPU apiece, blocking the loop).
    http = httpx.AsyncClient()

    def resolve(spec: MailboxSpec) -> Mailbox:
        provider = providers.get(spec.credential)
        if provider is None:
            provider = providers[spec.credential] = OAuth2TokenProvider(
                config["token_url"],
                RefreshTokenGrant(config["refresh_tokens"][spec.credential]),
                client_id=config["client_id"],
                client_secret=config["client_secret"],
                store=store,
                store_key=spec.credential,
                http_client=http,
            )
        return spec.to_mailbox(provider)

    worker = FleetWorker(
        config["redis"],
        resolve,
        worker_id=worker_id,
        lease=config["lease"],
        prefix=config["prefix"],
        **config["poller"],
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    async with worker:
        emit({"event": "ready", "worker": worker_id})
        async for event in worker:
            if isinstance(event, NewMessage):
                emit(
                    {
                        "event": "new_message",
                        "worker": worker_id,
                        "mailbox": event.mailbox,
                        "uid": event.uid,
                        "uidvalidity": event.uidvalidity,
                        "dedupe_key": event.dedupe_key,
                        "redelivered": event.redelivered,
                        "subject": str(event.message()["Subject"]),
                    }
                )
            else:
                emit(
                    {
                        "event": "mailbox_failed",
                        "worker": worker_id,
                        "mailbox": event.mailbox,
                        "permanent": event.permanent,
                        "reason": f"{type(event.error).__name__}: {event.error}",
                    }
                )
    for provider in providers.values():
        await provider.aclose()
    await store.aclose()
    await pool.aclose()
    await http.aclose()
    emit({"event": "left", "worker": worker_id})
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    with open(sys.argv[1]) as f:
        config = json.load(f)
    sys.exit(asyncio.run(main(config, sys.argv[2])))
