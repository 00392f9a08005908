"""Moved to :mod:`mailoauth._util.routing`; this private path re-exports it."""

from mailoauth._util.routing import Route, override_routes, route_address, route_url

__all__ = ["Route", "override_routes", "route_address", "route_url"]
