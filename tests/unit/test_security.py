"""SecurityOptions: AUTO never means plaintext; NONE needs an explicit opt-in."""

from __future__ import annotations

import ssl

import pytest

from mailoauth.errors import ConfigurationError, InsecureTransportError
from mailoauth.security import SecurityOptions, create_ssl_context, plan_transport


@pytest.mark.parametrize("port", [465, 993, 995])
def test_auto_is_implicit_tls_on_tls_ports(port: int) -> None:
    plan = plan_transport(SecurityOptions.AUTO, port)
    assert plan.implicit_tls and not plan.starttls


@pytest.mark.parametrize("port", [25, 110, 143, 587, 2525, 10143])
def test_auto_is_required_starttls_elsewhere(port: int) -> None:
    plan = plan_transport(SecurityOptions.AUTO, port)
    assert plan.starttls and not plan.implicit_tls and plan.encrypted


@pytest.mark.parametrize("port", [25, 110, 143, 587])
def test_auto_never_probes_a_well_known_starttls_port_with_tls(port: int) -> None:
    # An MTA delaying its greeting on purpose (postscreen on 25) must not see a
    # ClientHello before it has spoken.
    assert not plan_transport(SecurityOptions.AUTO, port).detect


@pytest.mark.parametrize("port", [465, 993, 995, 2525, 10143])
def test_auto_lets_the_server_decide_elsewhere(port: int) -> None:
    assert plan_transport(SecurityOptions.AUTO, port).detect


def test_explicit_options() -> None:
    assert plan_transport(SecurityOptions.SSL_IMPLICIT, 587).implicit_tls
    assert plan_transport(SecurityOptions.SSL_EXPLICIT, 993).starttls


def test_none_needs_opt_in() -> None:
    with pytest.raises(InsecureTransportError, match="allow_insecure_auth=True"):
        plan_transport(SecurityOptions.NONE, 143)
    plan = plan_transport(SecurityOptions.NONE, 143, allow_insecure_auth=True)
    assert not plan.encrypted


def test_not_a_member() -> None:
    with pytest.raises(ConfigurationError):
        plan_transport("auto", 993)  # type: ignore[arg-type]


def test_context_verifies() -> None:
    ctx = create_ssl_context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
