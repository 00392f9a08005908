"""Issue 15, "what the new user met": the items that need no socket, one test each
(named test_item_N_...); the others are in tests/integration/test_friction.py."""

from __future__ import annotations

import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailoauth import GoogleTokenProvider, MicrosoftTokenProvider

# -- 9. one spelling of scope= ------------------------------------------------------------


def _service_account() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {"client_email": "robot@example.iam.gserviceaccount.com", "private_key": pem}


def test_item_9_scope_is_one_spelling_and_scopes_is_deprecated() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one spelling warns nowhere
        providers = [
            MicrosoftTokenProvider.ropc("app", "u@example.test", "pw", scope="a b"),
            MicrosoftTokenProvider.client_credentials("app", "s", tenant="t", scope="a b"),
            MicrosoftTokenProvider.refresh_token("app", "rt", scope="a b"),
            MicrosoftTokenProvider.device_code("app", scope="a b"),
            GoogleTokenProvider("app", "s", "rt", scope="a b"),
            GoogleTokenProvider.from_service_account(_service_account(), scope="a b"),
        ]
    for provider in providers:
        assert provider.store_key.endswith("|a b")
    with pytest.warns(DeprecationWarning, match=r"refresh_token\(scopes=...\) is deprecated") as rec:
        old = MicrosoftTokenProvider.refresh_token("app", "rt", scopes=["a", "b"])
    assert rec[0].filename == __file__  # points at the caller's line
    assert old.store_key == providers[2].store_key
    with pytest.warns(DeprecationWarning, match="pass scope="):
        google = GoogleTokenProvider.from_service_account(_service_account(), scopes="a b")
    assert google.store_key.endswith("|a b")
    with pytest.raises(TypeError, match="both scope= and"):
        MicrosoftTokenProvider.ropc("app", "u", "pw", scope="a", scopes="b")
