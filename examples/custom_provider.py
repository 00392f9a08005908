"""Scenario 3: a custom provider for Office 365, in a dozen lines (Azure ROPC flow)."""

import asyncio
import time

import httpx

from mailoauth import AccessToken, ImapClient

AUTHORITY = "https://login.microsoftonline.com"
IMAP_SCOPE = "https://outlook.office.com/IMAP.AccessAsUser.All"


class Office365Provider:
    def __init__(self, tenant: str, form: dict[str, str], authority: str = AUTHORITY) -> None:
        self.url = f"{authority}/{tenant}/oauth2/v2.0/token"
        self.form = {**form, "grant_type": "password"}
        self.lock, self.token, self.expires = asyncio.Lock(), "", 0.0

    async def get_access_token(self, *, force_refresh: bool = False) -> AccessToken:
        async with self.lock:  # one request at a time; everyone else reuses its answer
            if force_refresh or time.monotonic() > self.expires - 60:
                async with httpx.AsyncClient(timeout=30) as http:
                    reply = (await http.post(self.url, data=self.form)).raise_for_status()
                body = reply.json()
                self.token = body["access_token"]
                self.expires = time.monotonic() + int(body.get("expires_in", 3600))
            return AccessToken(self.token)


async def main(tenant: str, client_id: str, user: str, password: str, **kw: str) -> None:
    form = {"client_id": client_id, "scope": IMAP_SCOPE, "username": user, "password": password}
    provider = Office365Provider(tenant, form, **kw)
    async with ImapClient("outlook.office365.com", 993, user, provider) as imap:
        print(await imap.select("INBOX"))


if __name__ == "__main__":
    asyncio.run(main("contoso.onmicrosoft.com", "app-id", "me@contoso.com", "password"))
