"""B. Token single flight: 1,000 concurrent callers find the cached token expired.

An :class:`OAuth2TokenProvider` (refresh-token grant) against the FakeOAuthServer's
token endpoint over loopback HTTP, wrapped the way every client wraps it
(:func:`wrap_provider`). Tokens live ``LIFETIME`` seconds; a round waits until the
cached one has expired, then starts all callers at once and counts the requests the
token endpoint received. The warm round does the same with a fresh cached token.
Latency is per caller, from the moment all are released to its token in hand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks._common import Report, Samples, pct, servers
from mailoauth.tokens import OAuth2TokenProvider, RefreshTokenGrant, wrap_provider

LIFETIME = 1.5  # seconds; a margin of half the lifetime makes it due after 0.75 s


async def one_round(provider: OAuth2TokenProvider, callers: int) -> tuple[list[float], float]:
    manager = wrap_provider(provider)
    release = asyncio.Event()
    latencies: list[float] = []

    async def caller() -> None:
        await release.wait()
        start = time.perf_counter()
        await manager.get_access_token()
        latencies.append(time.perf_counter() - start)

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await asyncio.sleep(0)  # every caller is parked on the event
    start = time.perf_counter()
    release.set()
    await asyncio.gather(*tasks)
    return latencies, time.perf_counter() - start


async def bench(
    token_url: str, refresh: str, callers: int, repeat: int, stats: object
) -> dict[str, Any]:
    provider = OAuth2TokenProvider(token_url, RefreshTokenGrant(refresh), client_id="bench")
    async with provider:
        await provider.get_access_token()  # the HTTP client and connection are warm
        figures: dict[str, dict[str, Samples]] = {
            kind: {"requests": Samples(), "median_us": Samples(), "p99_us": Samples()}
            for kind in ("warm", "expired")
        }
        wall = {"warm": Samples(), "expired": Samples()}
        for _ in range(repeat):
            for kind in ("expired", "warm"):
                if kind == "expired":
                    await asyncio.sleep(LIFETIME + 0.1)  # the cached token is now expired
                else:
                    await provider.get_access_token()  # fresh: refreshed just now
                before = stats.token_requests  # type: ignore[attr-defined]
                latencies, elapsed = await one_round(provider, callers)
                made = stats.token_requests - before  # type: ignore[attr-defined]
                latencies.sort()
                f = figures[kind]
                f["requests"].add(made)
                f["median_us"].add(latencies[len(latencies) // 2] * 1e6)
                f["p99_us"].add(latencies[int(len(latencies) * 0.99) - 1] * 1e6)
                wall[kind].add(elapsed * 1000)
        return {"figures": figures, "wall_ms": wall}


def run(quick: bool = False, repeat: int | None = None) -> Report:
    callers = 1000
    repeat = repeat or (3 if quick else 7)
    report = Report("token_single_flight", quick)
    with servers() as srv:
        srv.oauth.access_token_lifetime = LIFETIME
        refresh = srv.oauth.issue_refresh_token("bench@example.test")
        result = asyncio.run(bench(srv.oauth.token_url, refresh, callers, repeat, srv.oauth.stats))
    fig, wall = result["figures"], result["wall_ms"]
    t = report.table(
        f"{callers:,} concurrent get_access_token() calls (median of {repeat} rounds)",
        "cache",
        "token requests",
        "max requests",
        "caller median µs",
        "caller p99 µs",
        "all done ms",
        "spread",
    )
    for kind in ("warm", "expired"):
        f = fig[kind]
        t.add(
            kind,
            f["requests"].median,
            max(f["requests"].values),
            f["median_us"].median,
            f["p99_us"].median,
            wall[kind].median,
            pct(wall[kind].spread),
        )
    added = wall["expired"].median - wall["warm"].median
    report.table("added latency of an expired cache", "figure", "ms").add(
        "all 1,000 served, expired - warm", added
    )
    report.target(
        "token requests for 1,000 callers (worst round)",
        max(fig["expired"]["requests"].values),
        1,
        higher=False,
    )
    report.data = {
        "callers": callers,
        "token_lifetime_s": LIFETIME,
        "figures": {k: {n: s.as_json() for n, s in v.items()} for k, v in fig.items()},
        "wall_ms": {k: s.as_json() for k, s in wall.items()},
    }
    report.notes.append(
        "the added latency is one refresh-token round trip to a loopback HTTP server "
        "(http.server in a thread) plus waking 1,000 waiters; no target was given for it"
    )
    return report
