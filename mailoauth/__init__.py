"""mailoauth: asyncio SMTP, IMAP and POP3 clients with OAuth 2.0 bearer tokens."""
