// The fleet view: a page of sidecars at a time (PAGE rows; "Show more" appends the
// next page), filtered by service, status and text on the server, so a fleet of
// 10,000 is never read or drawn whole. Rows are built once and patched cell by cell
// from `sidecars` events; an event's rows that are not on display are skipped.
//
// The rows are this module's own state (sidecar id -> {tr, cells, data, prev}), in
// display order, with the cursor of the page after them (`next`, null at the end).

import { api, nextCursor } from '../api.js';
import { $, h } from '../dom.js';
import { ago, num, pct } from '../format.js';
import { store } from '../state.js';

const PAGE = 200;
const MAX_LIMIT = 10000;
const COLS = ['service', 'version', 'pod', 'status', 'revision', 'lastSeen', 'rate', 'errors', 'p99', 'limited', 'logs'];
const NUMERIC = ['rate', 'errors', 'p99', 'limited'];
const rows = new Map();
let next = null;
// Bumped by every fresh read, so an answer to an older one is dropped.
let generation = 0;

function syncText(s) {
  if (s.lastNack) return [`NACK r${s.lastNack.revision}: ${s.lastNack.error}`, 'sync-nack'];
  if (s.inSync) return [`in sync (r${s.appliedRevision})`, 'sync-ok'];
  return [`behind (r${s.appliedRevision} of r${s.targetRevision})`, 'sync-behind'];
}

// Error rate over the last report interval when two reports are known, else overall.
function errorRate(row, health) {
  if (!health) return null;
  const p = row.prev;
  if (p && health.requestsTotal > p.requestsTotal) {
    return (health.errorsTotal - p.errorsTotal) / (health.requestsTotal - p.requestsTotal);
  }
  if (p && health.requestsTotal === p.requestsTotal) return row.lastErrorRate ?? null;
  return health.requestsTotal > 0 ? health.errorsTotal / health.requestsTotal : null;
}

// Log shipping at a glance: nothing configured, shipping, or buffering while the sink fails.
function logsText(l) {
  if (!l || (l.linesRead === 0 && l.accessRecords === 0 && l.shipped === 0 && l.bufferedBytes === 0)) return ['–', ''];
  if (l.bufferedBytes > 0) return [`buffering ${Math.ceil(l.bufferedBytes / 1024)} KiB`, 'st-unhealthy'];
  return [`${l.shipped} shipped${l.dropped > 0 ? `, ${l.dropped} dropped` : ''}`, ''];
}

// Returns whether the row is new (the table then needs sorting).
function upsert(s) {
  let row = rows.get(s.id);
  const fresh = !row;
  if (fresh) {
    const cells = {};
    const tr = h('tr', { 'data-id': s.id });
    for (const c of COLS) {
      cells[c] = h('td', { class: NUMERIC.includes(c) ? 'num' : null });
      tr.append(cells[c]);
    }
    row = { tr, cells, data: null, prev: null };
    rows.set(s.id, row);
  }
  const hl = s.health || null;
  const rate = errorRate(row, hl);
  row.lastErrorRate = rate;
  row.prev = hl ? { requestsTotal: hl.requestsTotal, errorsTotal: hl.errorsTotal } : row.prev;
  row.data = s;
  const set = (c, text, cls) => {
    const td = row.cells[c];
    if (td.textContent !== text) td.textContent = text;
    if (cls !== undefined && td.className !== cls) td.className = cls;
  };
  set('service', s.service);
  set('version', s.version);
  set('pod', s.pod);
  set('status', s.status, `st-${s.status}`);
  const [sync, cls] = syncText(s);
  set('revision', sync, cls);
  set('lastSeen', ago(s.lastSeen));
  set('rate', hl ? num(hl.requestRate) : '–');
  set('errors', pct(rate));
  set('p99', hl ? num(hl.p99Ms) : '–');
  set('limited', hl ? String(hl.rateLimitedTotal) : '–');
  const [logs, logsCls] = logsText(hl && hl.logShipping);
  set('logs', logs, logsCls);
  return fresh;
}

const rowKey = (d) => `${d.service}\u0000${d.version}\u0000${d.pod}\u0000${d.id}`;

function render() {
  $('#fleet tbody').replaceChildren(...[...rows.values()].map((r) => r.tr));
  $('#fleet-count').textContent = next ? `(first ${rows.size} sidecars shown)` : `(${rows.size} sidecars)`;
  $('#fleet-more').hidden = !next;
}

function filters() {
  return { service: $('#fleet-service').value, status: $('#fleet-status').value, q: $('#fleet-filter').value.trim() };
}

async function page(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries({ ...filters(), ...params })) if (v !== '' && v != null) p.set(k, String(v));
  const { data, link } = await api('GET', `/sidecars?${p}`);
  return { data, next: nextCursor(link) };
}

// The service choices, from the services list (one request, not the fleet).
async function services() {
  const { data } = await api('GET', '/services');
  const sel = $('#fleet-service');
  const names = data.map((s) => s.name);
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (names.join('\u0000') === have.join('\u0000')) return;
  const chosen = sel.value;
  sel.replaceChildren(h('option', { value: '', text: 'all' }), ...names.map((n) => h('option', { value: n, text: n })));
  sel.value = names.includes(chosen) ? chosen : '';
}

// Reads the first page with the filters. `keep`: as many rows as are shown (a
// re-read after a resync or reconnect), else one page (new filters, a visit).
export async function load({ keep = false } = {}) {
  const gen = ++generation;
  services().catch(() => {});
  const limit = keep ? Math.min(MAX_LIMIT, Math.max(PAGE, rows.size)) : PAGE;
  const got = await page({ limit });
  if (gen !== generation) return;
  // Rows still listed keep their element and their previous report (for error rates).
  const before = new Map(rows);
  rows.clear();
  for (const s of got.data) {
    if (before.has(s.id)) rows.set(s.id, before.get(s.id));
    upsert(s);
  }
  next = got.next;
  render();
}

// Appends the next page.
export async function more() {
  if (!next) return;
  const gen = generation;
  const got = await page({ limit: PAGE, after: next });
  if (gen !== generation) return;
  for (const s of got.data) upsert(s);
  next = got.next;
  render();
}

// Re-reads one service's shown rows (after a membership or snapshot change): rows
// that joined or left the service within the shown range, nothing beyond it.
export async function refreshService(service) {
  const f = filters();
  if (f.service && f.service !== service) return;
  const shown = [...rows.values()].filter((r) => r.data.service === service);
  const gen = generation;
  const got = await page({ service, limit: Math.min(MAX_LIMIT, shown.length + PAGE) });
  if (gen !== generation) return;
  const last = next ? rowKey([...rows.values()].at(-1).data) : null;
  const inRange = got.data.filter((s) => last === null || rowKey(s) <= last);
  const ids = new Set(inRange.map((s) => s.id));
  for (const r of shown) if (!ids.has(r.data.id)) rows.delete(r.data.id);
  let added = false;
  for (const s of inRange) added = upsert(s) || added;
  if (added) {
    const sorted = [...rows.entries()].sort(([, a], [, b]) => (rowKey(a.data) < rowKey(b.data) ? -1 : 1));
    rows.clear();
    for (const [id, r] of sorted) rows.set(id, r);
  }
  render();
}

// The rows of a `sidecars` event: only those on display are patched.
export function patch(changed) {
  for (const s of changed) if (rows.has(s.id)) upsert(s);
}

export function init() {
  const reload = () => load().catch(() => {});
  let typing = null;
  $('#fleet-filter').addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(reload, 250);
  });
  $('#fleet-filters').addEventListener('submit', (ev) => ev.preventDefault());
  $('#fleet-service').addEventListener('change', reload);
  $('#fleet-status').addEventListener('change', reload);
  $('#fleet-more').addEventListener('click', () => more().catch(() => {}));
  // "Last seen" ages without a request.
  setInterval(() => {
    if (store.get().view !== 'fleet') return;
    for (const r of rows.values()) {
      const t = ago(r.data.lastSeen);
      if (r.cells.lastSeen.textContent !== t) r.cells.lastSeen.textContent = t;
    }
  }, 1000);
}
