"""GoogleTokenProvider: Gmail tokens from a refresh token or a service account."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailoauth._providers import GOOGLE_MAIL_SCOPE, GOOGLE_TOKEN_URL
from mailoauth._util.deprecated import renamed_keyword
from mailoauth._util.jsonfile import read_json_file
from mailoauth.errors import ConfigurationError
from mailoauth.tokens.grants import JwtBearerGrant, RefreshTokenGrant
from mailoauth.tokens.jwt import load_rsa_private_key, make_service_account_assertion
from mailoauth.tokens.oauth2 import OAuth2TokenProvider, join_scopes
from mailoauth.tokens.stores import TokenStore

if TYPE_CHECKING:
    import datetime as dt

    from typing_extensions import Unpack

    from mailoauth.tokens.oauth2 import ProviderOptions

__all__ = ["GoogleTokenProvider"]

_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key")


class GoogleTokenProvider(OAuth2TokenProvider):
    """Google OAuth tokens for Gmail's IMAP, POP3 and SMTP.

    ``GoogleTokenProvider(client_id, client_secret, refresh_token)`` uses the refresh
    token (an installed or web app's); :meth:`from_service_account` uses a service
    account key. Options as for :class:`OAuth2TokenProvider`. A dead refresh token gives
    :class:`~mailoauth.errors.PermanentTokenError` (``invalid_grant``) whose message
    lists the usual causes (app in "Testing" status: refresh tokens last 7 days).
    """

    vendor = "google"

    def __init__(
        self,
        client_id: str,
        client_secret: str | None,
        refresh_token: str,
        *,
        token_url: str = GOOGLE_TOKEN_URL,
        scope: str | Iterable[str] | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> None:
        super().__init__(
            token_url,
            RefreshTokenGrant(refresh_token),
            client_id=client_id,
            client_secret=client_secret,
            scope=scope,
            store=store,
            **options,
        )

    @classmethod
    def from_service_account(
        cls,
        info_or_path: Mapping[str, Any] | str | os.PathLike[str],
        *,
        subject: str | None = None,
        scope: str | Iterable[str] | None = None,
        scopes: str | Iterable[str] | None = None,
        token_url: str | None = None,
        store: TokenStore | None = None,
        **options: Unpack[ProviderOptions],
    ) -> GoogleTokenProvider:
        """A provider signing jwt-bearer assertions with a service account key.

        ``info_or_path`` is the key's JSON (a dict) or the path of its file, with
        ``client_email``, ``private_key`` and ``token_uri``. ``subject`` is the user to
        act as (domain-wide delegation, needed for Gmail); ``scope`` defaults to Gmail's
        (``scopes=``, the old spelling, still works with a DeprecationWarning). Raises
        :class:`~mailoauth.errors.ConfigurationError` when the file or a field is missing
        or the key is unreadable, or ``cryptography`` is not installed.
        """
        scope_arg = renamed_keyword(
            "GoogleTokenProvider.from_service_account", "scope", scope, "scopes", scopes
        )
        info = _load_info(info_or_path)
        missing = [name for name in _SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(name), str)]
        if missing:
            raise ConfigurationError(
                f"the service account info lacks {', '.join(missing)}; pass the JSON key "
                "file downloaded from the Google Cloud console"
            )
        client_email: str = info["client_email"]
        private_key: str = info["private_key"]
        key_id = info.get("private_key_id")
        load_rsa_private_key(private_key)  # fail now, not at the first refresh
        joined = join_scopes(scope_arg) or GOOGLE_MAIL_SCOPE
        info_url = info.get("token_uri")
        url = token_url or (info_url if isinstance(info_url, str) else None) or GOOGLE_TOKEN_URL

        def make_assertion(audience: str, now: dt.datetime) -> str:
            return make_service_account_assertion(
                client_email=client_email,
                private_key=private_key,
                audience=audience,
                scope=joined,
                now=now,
                subject=subject,
                key_id=key_id if isinstance(key_id, str) else None,
            )

        self = cls.__new__(cls)
        OAuth2TokenProvider.__init__(
            self,
            url,
            JwtBearerGrant(make_assertion, issuer=client_email, subject=subject),
            client_id=client_email,
            client_auth="none",
            scope=joined,
            store=store,
            **options,
        )
        return self


def _load_info(info_or_path: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    if isinstance(info_or_path, Mapping):
        return info_or_path
    path = Path(info_or_path)
    try:
        data = read_json_file(path, "the service account file")
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the service account file {str(path)!r}: {exc.strerror}"
        ) from exc
    if data is None:
        raise ConfigurationError(
            f"cannot read the service account file {str(path)!r}: there is no such file"
        )
    if not isinstance(data, dict):
        raise ConfigurationError(f"the service account file {str(path)!r} is not a JSON object")
    return data
