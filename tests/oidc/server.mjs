// node-oidc-provider 9 as a real, certified authorization server for mailoauth's tests.
//
//   node server.mjs CONFIG.json
//
// Everything that varies per test run comes from CONFIG.json, written by the Python
// launcher (tests/integration/oidc.py): host, port, issuer, clients, token lifetimes,
// the mail resource and who may introspect. The server listens on loopback only and
// prints one line `listening <issuer>` on stdout once it accepts connections.
//
// What this file adds to the library's defaults, and why (issue 16 asks to note what
// the defaults would have rejected):
//
// - features.deviceFlow, clientCredentials, introspection and revocation are all off
//   by default: those endpoints do not exist and no client may use those grants.
// - features.resourceIndicators: by default an access token is only good for the
//   userinfo endpoint and a non-OpenID scope such as `mail` is silently dropped (seen:
//   client_credentials with scope=mail gets a token with no scope). Here `mail` lives
//   on one resource server (the mail servers), used by default for every request and
//   kept on refresh (useGrantedResource), with *opaque* access tokens: the provider
//   refuses to introspect structured (JWT) tokens, and Dovecot introspects every token.
//   A token response's `scope` is then the access token's: `mail` alone.
// - issueRefreshToken: the default issues a refresh token only when `offline_access`
//   was granted, and grants `offline_access` only together with `prompt=consent`. Here
//   any client allowed the refresh_token grant gets one, as Google (access_type=offline)
//   and Microsoft do. Without prompt=consent the grant (and the refresh token) still
//   lacks `offline_access`, so a refresh that asks for the scope originally requested
//   is refused (invalid_scope, RFC 6749 §6): issue 16 item 2.
// - rotateRefreshToken: the default rotates only for public clients, or once 70% of
//   the refresh token's lifetime has passed. Here it rotates on every use, as Microsoft
//   does; presenting a rotated-away refresh token is reuse (RFC 9700 §4.14.2): the
//   server revokes the whole grant, which is what issue 16 item 3 is about.
// - extraTokenClaims: introspection answers `sub`, not `username`; Dovecot's oauth2
//   passdb is configured with `username_attribute = username`, so every token carries
//   `username` (the account id, a mail address).
// - introspection.allowedPolicy: the default lets any authenticated client introspect
//   any token: a refresh token presented to Dovecot as a bearer token would come back
//   `active`. Here the configured resource-server clients may introspect access tokens
//   only; a client may introspect its own tokens (tests read a refresh token's scope).
// - interactions: the default development login pages (devInteractions) are for
//   development only and are turned off; /interaction/:uid below is a small form-POST
//   login + consent handler that a test can drive as the browser or as the user of a
//   device code. The device flow's own pages are minimal forms for the same reason.
// - findAccount: the default is a placeholder; here any login name is an account,
//   unless the config lists `accounts`.
// - Token lifetimes (ttl) come from the config so that tests can run expiry in
//   seconds; the default access token lives an hour.
// - pkce.required: the default requires PKCE for public clients only; here every
//   authorization-code request must use it (S256), as OAuth 2.1 and RFC 9700 say.

import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const {
  host, port, issuer, resource, resource_scope: resourceScope,
} = config;
const introspectors = new Set(config.introspectors ?? []);
const accounts = config.accounts ? new Set(config.accounts) : null;
const ttl = config.ttl ?? {};
const ttlByClient = config.access_token_ttl_by_client ?? {};
const refreshTtlByClient = config.refresh_token_ttl_by_client ?? {};
// Digests of the refresh tokens presented at the token endpoint, in order (GET
// /_test/presented): lets a test prove a rotated-away refresh token was never sent.
const presented = [];
// Every secret the server hands out, for the test suite's log scan (GET /_test/secrets).
const issued = new Set();

// A fresh signing key per run (ID tokens only; access tokens are opaque).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: 'test' };

function seconds(name, fallback) {
  return () => ttl[name] ?? fallback;
}

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access'],
  clientAuthMethods: [
    'client_secret_post', 'client_secret_basic', 'private_key_jwt', 'none',
  ],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      allowedPolicy: (ctx, client, token) => token.clientId === client.clientId
        || (introspectors.has(client.clientId) && token.kind !== 'RefreshToken'),
    },
    revocation: { enabled: true },
    deviceFlow: {
      enabled: true,
      charset: 'digits',
      userCodeInputSource: (ctx, form, out, err) => {
        const problem = err ? `<p class="error">${err.name}</p>` : '';
        ctx.body = `<!doctype html><title>Device sign-in</title>${problem}${form}`;
      },
      userCodeConfirmSource: (ctx, form) => {
        ctx.body = `<!doctype html><title>Confirm device</title>${form}`;
      },
      successSource: (ctx) => {
        ctx.body = '<!doctype html><title>Device signed in</title><p>device-signed-in</p>';
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf ?? resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator, client) => {
        if (indicator !== resource) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: resourceScope,
          accessTokenFormat: 'opaque',
          accessTokenTTL: ttlByClient[client.clientId] ?? ttl.AccessToken ?? 3600,
        };
      },
    },
  },
  issueRefreshToken: (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => config.rotate_refresh_tokens ?? true,
  extraTokenClaims: (ctx, token) => (token.accountId ? { username: token.accountId } : undefined),
  findAccount: (ctx, sub) => {
    if (accounts && !accounts.has(sub)) {
      return undefined;
    }
    return { accountId: sub, claims: () => ({ sub, email: sub }) };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? ttl.AccessToken ?? 3600,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL
      ?? ttl.ClientCredentials ?? 600,
    RefreshToken: (ctx, token, client) => refreshTtlByClient[client.clientId]
      ?? ttl.RefreshToken ?? 14 * 24 * 3600,
    DeviceCode: seconds('DeviceCode', 600),
    AuthorizationCode: seconds('AuthorizationCode', 60),
    IdToken: seconds('IdToken', 3600),
    Interaction: seconds('Interaction', 600),
    Session: seconds('Session', 3600),
    Grant: seconds('Grant', 14 * 24 * 3600),
  },
});

// Not authorization codes: a test's browser sees them in redirects, which httpx logs.
for (const kind of ['access_token', 'refresh_token', 'client_credentials', 'device_code']) {
  provider.on(`${kind}.saved`, (token) => issued.add(token.jti));
}
for (const client of config.clients) {
  if (client.client_secret) issued.add(client.client_secret);
}
function notePresented(ctx) {
  const value = ctx.oidc?.params?.refresh_token;
  if (value) presented.push(createHash('sha256').update(value).digest('hex'));
}
provider.on('grant.success', notePresented);
provider.on('grant.error', notePresented);
// RFC 8628 §3.2: the device authorization response may say how often to poll (the
// default is 5 s); node-oidc-provider leaves it out, so tests would wait 5 s per code.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route === 'device_authorization' && ctx.status === 200 && ctx.body) {
    ctx.body.interval = config.device_poll_interval ?? 5;
  }
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

// -- the interaction handler: login, then consent, each one form POST ------------------

function html(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    html(res, 400, '<p>interaction mismatch</p>');
    return;
  }
  const { prompt, params, session, grantId } = details;
  if (req.method === 'GET' && !action) {
    // One form per prompt; its action tells a scripted browser what is being asked.
    const fields = prompt.name === 'login'
      ? '<input name="login" autofocus>'
      : `<p>${escape(params.client_id)} asks for: ${escape(params.scope ?? '')}</p>`;
    html(res, 200, `<!doctype html><title>${prompt.name}</title>`
      + `<form method="post" action="/interaction/${uid}/${prompt.name}">${fields}`
      + '<button>Continue</button></form>'
      + `<form method="post" action="/interaction/${uid}/abort"><button>Cancel</button></form>`);
    return;
  }
  if (req.method !== 'POST') {
    html(res, 405, '<p>method not allowed</p>');
    return;
  }
  const form = await readForm(req);
  let result;
  if (action === 'abort') {
    result = { error: 'access_denied', error_description: 'the user cancelled the sign-in' };
  } else if (action === 'login' && prompt.name === 'login') {
    const login = form.get('login');
    if (!login || (accounts && !accounts.has(login))) {
      html(res, 403, '<p>unknown account</p>');
      return;
    }
    result = { login: { accountId: login } };
  } else if (action === 'consent' && prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    html(res, 400, `<p>the interaction asks for ${escape(prompt.name)}, not ${escape(action)}</p>`);
    return;
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

const INTERACTION = /^\/interaction\/([\w-]+)(?:\/(login|consent|abort))?$/;
const callback = provider.callback();

const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, issuer);
  if (pathname === '/_test/secrets' || pathname === '/_test/presented') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(pathname === '/_test/secrets' ? [...issued] : presented));
    return;
  }
  const match = INTERACTION.exec(pathname);
  if (!match) {
    callback(req, res);
    return;
  }
  interaction(req, res, match[1], match[2]).catch((err) => {
    console.error('interaction failed', err);
    if (!res.headersSent) html(res, 400, `<p>${escape(err.name)}: ${escape(err.message)}</p>`);
  });
});

server.listen(port, host, () => {
  console.log(`listening ${issuer}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
