// The fleet view: one table row per sidecar, built once and then patched cell by cell
// from `sidecars` events, so 500 rows stay cheap; the filter only hides rows.
//
// The rows are this module's own state (sidecar id -> {tr, cells, data, prev}).

import { api } from '../api.js';
import { $, h } from '../dom.js';
import { ago, num, pct } from '../format.js';
import { store } from '../state.js';

const COLS = ['service', 'version', 'pod', 'status', 'revision', 'lastSeen', 'rate', 'errors', 'p99', 'limited', 'logs'];
const NUMERIC = ['rate', 'errors', 'p99', 'limited'];
const rows = new Map();

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

function filterText() {
  return $('#fleet-filter').value.trim().toLowerCase();
}

function applyFilter(row, f = filterText()) {
  const d = row.data;
  row.tr.hidden = f !== '' && ![d.service, d.version, d.pod, d.status].some((v) => v.toLowerCase().includes(f));
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
  applyFilter(row);
  return fresh;
}

const rowKey = (d) => `${d.service}\u0000${d.version}\u0000${d.pod}`;

function sort() {
  const sorted = [...rows.values()].sort((a, b) => (rowKey(a.data) < rowKey(b.data) ? -1 : 1));
  $('#fleet tbody').replaceChildren(...sorted.map((r) => r.tr));
  $('#fleet-count').textContent = `(${rows.size} sidecars)`;
}

// Reads the whole fleet, or one service's sidecars (after a membership change).
export async function load(service) {
  const { data } = await api('GET', service ? `/sidecars?service=${encodeURIComponent(service)}` : '/sidecars');
  const seen = new Set();
  let added = false;
  for (const s of data) {
    seen.add(s.id);
    added = upsert(s) || added;
  }
  for (const [id, row] of rows) {
    if (!seen.has(id) && (!service || row.data.service === service)) {
      row.tr.remove();
      rows.delete(id);
    }
  }
  if (added || !service) sort();
}

// The rows of a `sidecars` event.
export function patch(changed) {
  let added = false;
  for (const s of changed) added = upsert(s) || added;
  if (added) sort();
}

export function init() {
  $('#fleet-filter').addEventListener('input', () => {
    const f = filterText();
    for (const r of rows.values()) applyFilter(r, f);
  });
  // "Last seen" ages without a request.
  setInterval(() => {
    if (store.get().view !== 'fleet') return;
    for (const r of rows.values()) {
      const t = ago(r.data.lastSeen);
      if (r.cells.lastSeen.textContent !== t) r.cells.lastSeen.textContent = t;
    }
  }, 1000);
}
