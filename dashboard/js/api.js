// The REST API client: every request carries the session's token, JSON bodies are
// encoded, and a non-2xx answer (problem+json) becomes an ApiError with its body.
//
// A 401 anywhere means the token is gone or refused; the boot module decides what the
// page does then (`onUnauthorized`), so this module imports no view.

import { store } from './state.js';

export class ApiError extends Error {
  constructor(status, body) {
    super(typeof body === 'object' && body ? body.detail || body.title : String(body || status));
    this.status = status;
    this.body = body || {};
  }
}

let unauthorized = () => {};
export function onUnauthorized(fn) {
  unauthorized = fn;
}
export function refused() {
  unauthorized('The token was refused. Sign in again.');
}

export function authHeaders() {
  const { token } = store.get();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// The `after` cursor of a `Link: <…&after=CURSOR>; rel="next"` header, or null.
export function nextCursor(link) {
  const m = link && link.match(/<([^>]*)>\s*;\s*rel="next"/);
  return m ? new URL(m[1], location.origin).searchParams.get('after') : null;
}

// `as: 'text'` reads the body as text whatever its type (config documents are stored
// as they are, JSON or not).
export async function api(method, path, { body, headers = {}, contentType, as } = {}) {
  const hdrs = { ...headers, ...authHeaders() };
  let payload;
  if (body !== undefined) {
    hdrs['Content-Type'] = contentType || 'application/json';
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const r = await fetch(`/api/v1${path}`, { method, headers: hdrs, body: payload });
  const ct = r.headers.get('content-type') || '';
  const json = ct.includes('json') && (as !== 'text' || !r.ok);
  const data = json ? await r.json().catch(() => null) : await r.text();
  if (r.status === 401) {
    refused();
    throw new ApiError(401, data);
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return { data, etag: r.headers.get('ETag'), contentType: ct, link: r.headers.get('Link') };
}
