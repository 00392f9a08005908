"""The token side's dialer: an httpx transport that sends chosen URLs elsewhere.

``httpx.AsyncClient(transport=RoutingTransport({GOOGLE_TOKEN_URL: test_url}))``, given
to a provider as ``http_client=``, makes token requests meant for Google's endpoint
reach a test server while the code under test keeps the real URL. The sandbox builds
one (``MailSandbox.http_transport()``). Nothing global: each client routes as its
transport says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["RoutingClient", "RoutingTransport"]


class RoutingTransport(httpx.AsyncBaseTransport):
    """Requests whose URL starts with a key of ``urls`` go to that prefix's value
    instead (the longest matching prefix wins); others go unchanged. Both go over
    ``inner`` (default: a new :class:`httpx.AsyncHTTPTransport`, closed with this one).

    The ``Host`` header follows the new URL; method, headers and body stay.
    """

    def __init__(
        self, urls: Mapping[str, str], *, inner: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.urls = dict(sorted(urls.items(), key=lambda item: len(item[0]), reverse=True))
        self._own_inner = inner is None
        self.inner = inner or httpx.AsyncHTTPTransport()

    def route_url(self, url: str) -> str:
        """Where a request for ``url`` goes."""
        for prefix, target in self.urls.items():
            if url.startswith(prefix):
                return target + url[len(prefix) :]
        return url

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to its routed URL; raises as ``inner`` does."""
        target = self.route_url(str(request.url))
        if target != str(request.url):
            url = httpx.URL(target)
            headers = [(b"Host", url.netloc)]
            headers += [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
            request = httpx.Request(
                request.method,
                url,
                headers=headers,
                stream=request.stream,
                extensions=request.extensions,
            )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._own_inner:
            await self.inner.aclose()

    def __repr__(self) -> str:
        return f"RoutingTransport({len(self.urls)} routes)"


class RoutingClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` over a :class:`RoutingTransport` of ``urls``.

    A provider given it as ``http_client=`` asks its :meth:`route_url`, so that the
    refusal to send secrets over plain http to a host that is not loopback is decided
    on the address really reached. Keywords as for :class:`httpx.AsyncClient`
    (``transport=`` becomes the inner transport).
    """

    def __init__(self, urls: Mapping[str, str], **kwargs: Any) -> None:
        self.routing = RoutingTransport(urls, inner=kwargs.pop("transport", None))
        kwargs.setdefault("follow_redirects", False)
        super().__init__(transport=self.routing, **kwargs)

    def route_url(self, url: str) -> str:
        """Where a request for ``url`` goes."""
        return self.routing.route_url(url)
