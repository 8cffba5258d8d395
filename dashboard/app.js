// Outrider dashboard: a client of the REST API (/api/v1), nothing more.
// No build step and no dependency: the control plane embeds this file as it is.
//
// Live updates: one server-sent-event stream (read with fetch so the token travels in
// a header, never in a URL). `sidecars` events carry the changed rows, which are
// patched in place; `snapshot`/`membership` events re-read only the affected service,
// debounced; `resync` (the stream fell behind) re-reads everything once.
'use strict';

const TOKEN_KEY = 'outrider.token';
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  rows: new Map(), // sidecar id -> {tr, cells, data, prev}
  services: [],
  view: null,
  stream: null,
  dirty: new Set(),
  dirtyTimer: null,
};

const $ = (sel, el = document) => el.querySelector(sel);
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  }
  return el;
};

class ApiError extends Error {
  constructor(status, body) {
    super(typeof body === 'object' && body ? body.detail || body.title : String(body || status));
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, { body, headers = {}, contentType } = {}) {
  const hdrs = { ...headers };
  if (state.token) hdrs.Authorization = `Bearer ${state.token}`;
  let payload;
  if (body !== undefined) {
    hdrs['Content-Type'] = contentType || 'application/json';
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const r = await fetch(`/api/v1${path}`, { method, headers: hdrs, body: payload });
  const ct = r.headers.get('content-type') || '';
  const data = ct.includes('json') ? await r.json().catch(() => null) : await r.text();
  if (r.status === 401) {
    showLogin('The token was refused. Sign in again.');
    throw new ApiError(401, data);
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return { data, etag: r.headers.get('ETag') };
}

function banner(msg, kind = 'error') {
  const b = $('#banner');
  if (!msg) { b.hidden = true; return; }
  b.textContent = msg;
  b.className = kind === 'info' ? 'banner info' : 'banner';
  b.hidden = false;
}

// ---- sign-in -------------------------------------------------------------------------

function showLogin(msg) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = msg || '';
  $('#token-input').focus();
  if (state.stream) state.stream.abort();
  state.stream = null;
}

async function signIn(token) {
  state.token = token || null;
  try {
    await api('GET', '/services');
  } catch (e) {
    if (e.status !== 401) $('#login-error').textContent = `The control plane did not answer: ${e.message}`;
    return false;
  }
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  $('#login').hidden = true;
  $('#logout').hidden = !token;
  $('#who').textContent = token ? 'signed in' : 'open API (no tokens configured)';
  listen();
  route();
  return true;
}

// ---- formatting ----------------------------------------------------------------------

const ago = (iso) => {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};
const num = (v, d = 1) => (typeof v === 'number' && isFinite(v) ? v.toFixed(d) : '–');
const pct = (v) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(1)}%`);

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

// ---- fleet ---------------------------------------------------------------------------

const FLEET_COLS = ['service', 'version', 'pod', 'status', 'revision', 'lastSeen', 'rate', 'errors', 'p99', 'limited', 'logs'];

// Log shipping at a glance: nothing configured, shipping, or buffering while the sink fails.
function logsText(l) {
  if (!l || (l.linesRead === 0 && l.accessRecords === 0 && l.shipped === 0 && l.bufferedBytes === 0)) return ['–', ''];
  if (l.bufferedBytes > 0) return [`buffering ${Math.ceil(l.bufferedBytes / 1024)} KiB`, 'st-unhealthy'];
  return [`${l.shipped} shipped${l.dropped > 0 ? `, ${l.dropped} dropped` : ''}`, ''];
}

function upsertRow(s) {
  let row = state.rows.get(s.id);
  const fresh = !row;
  if (fresh) {
    const cells = {};
    const tr = h('tr', { 'data-id': s.id });
    for (const c of FLEET_COLS) {
      cells[c] = h('td', { class: ['rate', 'errors', 'p99', 'limited'].includes(c) ? 'num' : null });
      tr.append(cells[c]);
    }
    row = { tr, cells, data: null, prev: null };
    state.rows.set(s.id, row);
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

function sortFleet() {
  const tbody = $('#fleet tbody');
  const rows = [...state.rows.values()].sort((a, b) => (rowKey(a.data) < rowKey(b.data) ? -1 : 1));
  tbody.replaceChildren(...rows.map((r) => r.tr));
  $('#fleet-count').textContent = `(${state.rows.size} sidecars)`;
}

function applyFilter(row) {
  const f = $('#fleet-filter').value.trim().toLowerCase();
  const d = row.data;
  row.tr.hidden = f !== '' && ![d.service, d.version, d.pod, d.status].some((v) => v.toLowerCase().includes(f));
}

async function loadFleet(service) {
  const { data } = await api('GET', service ? `/sidecars?service=${encodeURIComponent(service)}` : '/sidecars');
  const seen = new Set();
  let added = false;
  for (const s of data) {
    seen.add(s.id);
    added = upsertRow(s) || added;
  }
  for (const [id, row] of state.rows) {
    if (!seen.has(id) && (!service || row.data.service === service)) {
      row.tr.remove();
      state.rows.delete(id);
    }
  }
  if (added || !service) sortFleet();
}

function patchRows(rows) {
  let added = false;
  for (const s of rows) added = upsertRow(s) || added;
  if (added) sortFleet();
}

// Services to re-read, gathered for a moment so a burst of events costs one request each.
function markDirty(service) {
  state.dirty.add(service);
  if (state.dirtyTimer) return;
  state.dirtyTimer = setTimeout(async () => {
    const services = [...state.dirty];
    state.dirty.clear();
    state.dirtyTimer = null;
    for (const s of services) {
      await loadFleet(s).catch(() => {});
      if (state.view === 'service' && state.currentService === s) refreshInstances(s).catch(() => {});
    }
    if (state.view === 'history') loadHistory().catch(() => {});
    if (state.view === 'services') loadServices().catch(() => {});
  }, 300);
}

// ---- live events ---------------------------------------------------------------------

function setLive(on) {
  const l = $('#live');
  l.textContent = on ? 'live' : 'reconnecting…';
  l.className = on ? 'live on' : 'live';
}

async function listen() {
  if (state.stream) state.stream.abort();
  const ctrl = new AbortController();
  state.stream = ctrl;
  while (!ctrl.signal.aborted) {
    try {
      const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
      const r = await fetch('/api/v1/events', { headers, signal: ctrl.signal });
      if (r.status === 401) { showLogin('The token was refused. Sign in again.'); return; }
      if (!r.ok) throw new Error(`events: ${r.status}`);
      setLive(true);
      // Anything missed while the stream was down is read once.
      loadFleet().catch(() => {});
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          onSse(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function onSse(chunk) {
  let event = 'message';
  let data = '';
  for (const line of chunk.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data += line.slice(5).trim();
  }
  if (event === 'resync') {
    loadFleet().catch(() => {});
    return;
  }
  if (event !== 'change' || !data) return;
  const ev = JSON.parse(data);
  if (ev.type === 'sidecars') patchRows(ev.sidecars);
  else if (ev.type === 'snapshot' || ev.type === 'membership') markDirty(ev.service);
}

// ---- services ------------------------------------------------------------------------

async function loadServices() {
  const { data } = await api('GET', '/services');
  state.services = data;
  const tbody = $('#services tbody');
  tbody.replaceChildren(
    ...data.map((s) =>
      h(
        'tr',
        {},
        h('td', {}, h('a', { href: `#/services/${encodeURIComponent(s.name)}`, text: s.name })),
        h('td', { text: `r${s.revision}` }),
        h('td', { text: `${s.instances.healthy} healthy of ${s.instances.total}` }),
        h('td', {
          text: Object.entries(s.instances.subsets)
            .map(([k, v]) => `${k}: ${v.healthy}/${v.total}`)
            .join(', '),
        }),
        h('td', { text: s.policies.join(', ') || '–' }),
        h('td', { text: String(s.configs) }),
      ),
    ),
  );
}

function subsetFigures(sidecars) {
  const by = new Map();
  for (const s of sidecars) {
    const f = by.get(s.version) || { total: 0, healthy: 0, rate: 0, req: 0, err: 0, p99: null, limited: 0 };
    f.total += 1;
    if (s.status === 'healthy') f.healthy += 1;
    const hl = s.health;
    if (hl) {
      f.rate += hl.requestRate || 0;
      f.req += hl.requestsTotal || 0;
      f.err += hl.errorsTotal || 0;
      f.limited += hl.rateLimitedTotal || 0;
      f.p99 = Math.max(f.p99 ?? 0, hl.p99Ms || 0);
    }
    by.set(s.version, f);
  }
  return by;
}

function instancesTable(sidecars) {
  const by = subsetFigures(sidecars);
  return h(
    'table',
    { class: 'grid subsets', id: 'subsets' },
    h('thead', {}, h('tr', {}, ...['Subset', 'Instances', 'Req/s', 'Errors', 'p99 ms (worst)', 'Rate-limited']
      .map((t) => h('th', { scope: 'col', text: t })))),
    h(
      'tbody',
      {},
      ...[...by.entries()].map(([v, f]) =>
        h(
          'tr',
          { 'data-subset': v },
          h('td', { text: v }),
          h('td', { text: `${f.healthy} healthy of ${f.total}` }),
          h('td', { class: 'num', text: num(f.rate) }),
          h('td', { class: 'num', text: f.req ? pct(f.err / f.req) : '–' }),
          h('td', { class: 'num', text: num(f.p99) }),
          h('td', { class: 'num', text: String(f.limited) }),
        ),
      ),
    ),
  );
}

async function refreshInstances(service) {
  const { data } = await api('GET', `/services/${encodeURIComponent(service)}`);
  const old = $('#subsets');
  if (old) old.replaceWith(instancesTable(data.sidecars));
}

async function showService(name) {
  state.currentService = name;
  $('#service-title').textContent = name;
  const body = $('#service-body');
  body.replaceChildren(h('p', { class: 'muted', text: 'Loading…' }));
  const { data } = await api('GET', `/services/${encodeURIComponent(name)}`);
  const subsets = [...new Set(data.sidecars.map((s) => s.version))].sort();
  body.replaceChildren(
    h('p', { class: 'muted', text: `Snapshot revision r${data.revision}` }),
    h('h3', { text: 'Instances per subset' }),
    instancesTable(data.sidecars),
    rateLimitEditor(name),
    routingEditor(name, subsets),
    loggingEditor(name),
    configEditor(name, data.configs),
  );
}

// ---- editors -------------------------------------------------------------------------

// The shared part of every editor: load with ETag, save with If-Match, dry run,
// server-side field errors next to their inputs, a stale-write message.
function editorShell({ id, title, path, kindLabel }) {
  const el = h('section', { class: 'editor', id, 'aria-labelledby': `${id}-title` }, h('h3', { id: `${id}-title`, text: title }));
  const form = h('div', { class: 'form' });
  const raw = h('textarea', { id: `${id}-raw`, 'aria-label': `${title} as JSON`, hidden: true, spellcheck: 'false' });
  const rawErrors = h('div', { class: 'raw-errors' });
  const result = h('div', { class: 'result', role: 'status', 'aria-live': 'polite' });
  const ed = { el, form, raw, result, etag: null, revision: null, doc: null, rawMode: false };
  const toggle = h('button', { type: 'button', class: 'secondary', text: 'Edit as JSON' });
  toggle.addEventListener('click', () => {
    if (!ed.rawMode) {
      raw.value = JSON.stringify(ed.toDoc(), null, 2);
    } else {
      try {
        ed.fromDoc(JSON.parse(raw.value));
      } catch (e) {
        say(`The JSON does not parse: ${e.message}`, false);
        return;
      }
    }
    ed.rawMode = !ed.rawMode;
    form.hidden = ed.rawMode;
    raw.hidden = !ed.rawMode;
    toggle.textContent = ed.rawMode ? 'Edit as form' : 'Edit as JSON';
  });
  const say = (msg, ok, extra) => {
    result.replaceChildren(msg, ...(extra ? [extra] : []));
    result.className = ok ? 'result ok' : 'result bad';
  };
  ed.say = say;
  const clearErrors = () => {
    for (const e of el.querySelectorAll('.field-error')) e.remove();
    for (const i of el.querySelectorAll('[aria-invalid]')) {
      i.removeAttribute('aria-invalid');
      i.removeAttribute('aria-describedby');
    }
    rawErrors.replaceChildren();
  };
  const showErrors = (errors) => {
    let n = 0;
    for (const err of errors) {
      const target = ed.rawMode ? null : el.querySelector(`[data-field="${CSS.escape(err.field)}"]`);
      // A field the form hides (a sink field of another type) cannot show its message.
      const input = target && !target.closest('[hidden]') ? target : null;
      const msgId = `${id}-err-${n++}`;
      const p = h('p', { class: 'field-error', id: msgId, text: input ? err.message : `${err.field}: ${err.message}` });
      if (input) {
        input.setAttribute('aria-invalid', 'true');
        input.setAttribute('aria-describedby', msgId);
        input.after(p);
      } else {
        rawErrors.append(p);
      }
    }
  };
  ed.load = async () => {
    clearErrors();
    try {
      const { data, etag } = await api('GET', path);
      ed.etag = etag;
      ed.revision = data.revision;
      ed.doc = data.document;
    } catch (e) {
      if (e.status !== 404) throw e;
      ed.etag = null;
      ed.revision = null;
      ed.doc = null;
    }
    ed.fromDoc(ed.doc);
    raw.value = JSON.stringify(ed.toDoc(), null, 2);
    say(ed.revision ? `Current: revision ${ed.revision}` : `No ${kindLabel} policy yet.`, true);
  };
  const currentDoc = () => (ed.rawMode ? JSON.parse(raw.value) : ed.toDoc());
  const save = async (dryRun) => {
    clearErrors();
    let doc;
    try {
      doc = currentDoc();
    } catch (e) {
      say(`The JSON does not parse: ${e.message}`, false);
      return;
    }
    const headers = ed.etag && !dryRun ? { 'If-Match': ed.etag } : {};
    try {
      const { data, etag } = await api('PUT', `${path}${dryRun ? '?dryRun=true' : ''}`, { body: doc, headers });
      if (dryRun) {
        const n = data.sidecars.length;
        say(
          data.changed
            ? `Valid. Saving would send a new snapshot to ${n} sidecar${n === 1 ? '' : 's'}${n ? ': ' + data.sidecars.join(', ') : ''}.`
            : 'Valid, and identical to the stored policy: no sidecar would change.',
          true,
        );
        return;
      }
      ed.etag = etag;
      ed.revision = data.revision;
      ed.doc = data.document;
      say(`Saved as revision ${data.revision}.`, true);
    } catch (e) {
      if (e.status === 422) {
        showErrors(e.body.errors || []);
        say('Not saved: the control plane found problems (shown next to each field).', false);
      } else if (e.status === 412) {
        const reload = h('button', { type: 'button', class: 'secondary', text: 'Reload', onclick: () => ed.load() });
        say(
          `Not saved: someone else changed this ${kindLabel} policy after you opened it (it is now at revision ${e.body.currentRevision ?? 'deleted'}). ` +
            'Your edit is still here; reload to see their version, then apply your change again. ',
          false,
          reload,
        );
      } else if (e.status === 403) {
        say(`Not allowed: ${e.message}`, false);
      } else {
        say(`Not saved: ${e.message}`, false);
      }
    }
  };
  el.append(
    form,
    raw,
    rawErrors,
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'button', text: 'Save', onclick: () => save(false), 'data-action': 'save' }),
      h('button', { type: 'button', class: 'secondary', text: 'Preview (dry run)', onclick: () => save(true), 'data-action': 'dry-run' }),
      toggle,
    ),
    result,
  );
  return ed;
}

function field(label, input) {
  return h('div', {}, h('label', { for: input.id, text: label }), input);
}

let uid = 0;
// A form control bound to a document field: `data-field` is the path the API names in its
// 422 errors (`rules[0].burst`, `sink.url`), so showErrors puts each message next to it.
// `options` are values or [value, label] pairs; the value '' stands for "absent".
function control(path, { tag = 'input', options = [], ...attrs } = {}, value) {
  const el = h(tag, { id: `f-${++uid}`, 'data-field': path, ...attrs });
  for (const o of options) {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    el.append(h('option', { value: v, text: label }));
  }
  if (value !== undefined && value !== null) el.value = String(value);
  return el;
}

// Writes a form value into a document; an empty value removes the key so the server's
// default applies (and an unchanged document stays byte-identical to the stored one).
function put(obj, key, value, conv = (v) => v) {
  const v = String(value).trim();
  if (v === '') delete obj[key];
  else obj[key] = conv(v);
}

// Rows of a repeated document field (rate-limit rules, app logs) with add and remove.
// `build(orig, i)` returns {inputs, row}; each entry keeps the document it came from so
// fields the form does not show survive. Removing a row re-renders from the document so
// every row's `data-field` index matches its position again.
function rowList(ed, noun, build) {
  const list = h('div', {});
  const rows = [];
  const add = (orig = {}) => {
    const i = rows.length;
    const { inputs, row } = build(orig, i);
    const entry = { orig, inputs, row };
    row.append(
      h('button', {
        type: 'button',
        class: 'secondary',
        text: 'Remove',
        'aria-label': `Remove ${noun} ${i + 1}`,
        onclick: () => {
          rows.splice(rows.indexOf(entry), 1);
          ed.fromDoc(ed.toDoc());
        },
      }),
    );
    rows.push(entry);
    list.append(row);
  };
  const reset = (items) => {
    rows.length = 0;
    list.replaceChildren();
    for (const item of items || []) add(item);
  };
  return { list, rows, add, reset };
}

function rateLimitEditor(service) {
  const ed = editorShell({
    id: 'rate-limit',
    title: 'Rate limits',
    path: `/services/${encodeURIComponent(service)}/policies/rate-limit`,
    kindLabel: 'rate-limit',
  });
  const rules = rowList(ed, 'rule', (r, i) => {
    const mk = (name, attrs, value) => control(`rules[${i}].${name}`, attrs, value);
    const inputs = {
      name: mk('name', { type: 'text' }, r.name ?? (i === 0 ? 'all' : `rule-${i + 1}`)),
      pathPrefix: mk('match.pathPrefix', { type: 'text', placeholder: '/' }, r.match?.pathPrefix),
      key: mk('key', { type: 'text', placeholder: 'none' }, r.key),
      requestsPerSecond: mk('requestsPerSecond', { type: 'number', step: 'any' }, r.requestsPerSecond),
      burst: mk('burst', { type: 'number', step: 'any' }, r.burst),
      scope: mk('scope', { tag: 'select', options: ['instance', 'service'] }, r.scope || 'instance'),
    };
    const row = h(
      'div',
      { class: 'rule' },
      field('Name', inputs.name),
      field('Path prefix', inputs.pathPrefix),
      field('Key (none, client-ip, header:NAME)', inputs.key),
      field('Requests per second', inputs.requestsPerSecond),
      field('Burst', inputs.burst),
      field('Scope', inputs.scope),
    );
    return { inputs, row };
  });
  ed.fromDoc = (doc) => {
    rules.reset(doc?.rules);
    if (!rules.rows.length) rules.add();
  };
  ed.toDoc = () => ({
    rules: rules.rows.map(({ orig, inputs }) => {
      const r = { ...orig, name: inputs.name.value };
      put(r, 'requestsPerSecond', inputs.requestsPerSecond.value, Number);
      put(r, 'burst', inputs.burst.value, Number);
      const match = { ...(orig.match || {}) };
      put(match, 'pathPrefix', inputs.pathPrefix.value);
      if (Object.keys(match).length) r.match = match;
      else delete r.match;
      put(r, 'key', inputs.key.value);
      r.scope = inputs.scope.value;
      return r;
    }),
  });
  ed.form.append(rules.list, h('button', { type: 'button', class: 'secondary', text: 'Add rule', onclick: () => rules.add() }));
  ed.load().catch((e) => ed.say(e.message, false));
  return ed.el;
}

function routingEditor(service, knownSubsets) {
  const ed = editorShell({
    id: 'routing',
    title: 'Routing and canary',
    path: `/services/${encodeURIComponent(service)}/policies/routing`,
    kindLabel: 'routing',
  });
  const stable = h('select', { id: 'canary-stable' });
  const canary = h('select', { id: 'canary-subset' });
  const slider = h('input', { id: 'canary-weight', type: 'range', min: '0', max: '100', step: '1', value: '0', 'data-field': 'routes[0].backends[1].weight' });
  const out = h('output', { for: 'canary-weight', id: 'canary-output' });
  const show = () => {
    out.textContent = `${canary.value || 'canary'}: ${slider.value}% · ${stable.value || 'stable'}: ${100 - slider.value}%`;
    slider.setAttribute('aria-valuetext', out.textContent);
  };
  slider.addEventListener('input', show);
  const fill = (subs) => {
    for (const sel of [stable, canary]) {
      const cur = sel.value;
      sel.replaceChildren(...subs.map((s) => h('option', { value: s, text: s })));
      if (subs.includes(cur)) sel.value = cur;
    }
  };
  let doc = null;
  const defaultRoute = (d) => (d?.routes || []).find((r) => r.name === 'default') || (d?.routes || []).at(-1);
  ed.fromDoc = (d) => {
    doc = d;
    const route = defaultRoute(d);
    const subs = new Set(knownSubsets);
    for (const b of route?.backends || []) subs.add(b.subset);
    if (subs.size < 2) ['v1', 'v2'].forEach((s) => subs.add(s));
    fill([...subs].sort());
    const bs = route?.backends || [];
    if (bs.length >= 2) {
      stable.value = bs[0].subset;
      canary.value = bs[1].subset;
      slider.value = String(bs[1].weight);
    } else {
      stable.value = bs[0]?.subset || [...subs].sort()[0];
      canary.value = [...subs].sort().find((s) => s !== stable.value);
      slider.value = '0';
    }
    show();
  };
  ed.toDoc = () => {
    const d = JSON.parse(JSON.stringify(doc || { routes: [] }));
    const w = Number(slider.value);
    const backends = [
      { subset: stable.value, weight: 100 - w },
      { subset: canary.value, weight: w },
    ];
    const route = defaultRoute(d);
    if (route) route.backends = backends;
    else d.routes.push({ name: 'default', match: { pathPrefix: '/' }, backends });
    return d;
  };
  ed.form.append(
    h('p', { class: 'hint', text: 'Splits the default route between two subsets; other routes are kept as they are.' }),
    h('div', { class: 'form-row' }, field('Stable subset', stable), field('Canary subset', canary)),
    h('div', { class: 'slider form-row' }, h('label', { for: 'canary-weight', text: 'Canary weight' }), slider, out),
  );
  ed.load().catch((e) => ed.say(e.message, false));
  return ed.el;
}

// Logging (DESIGN §4): access log, the app's log files, and one sink. The form shows the
// sink fields that matter for the chosen type; the others are left out of the document
// but keep their values in the form, so switching the type back loses nothing.
function loggingEditor(service) {
  const ed = editorShell({
    id: 'logging',
    title: 'Logging',
    path: `/services/${encodeURIComponent(service)}/policies/logging`,
    kindLabel: 'logging',
  });
  const example = { accessLog: { enabled: true, sampleRate: 1.0, format: 'json' }, sink: { type: 'stdout' } };
  let doc = null;
  const enabled = control('accessLog.enabled', { type: 'checkbox' });
  const sampleRate = control('accessLog.sampleRate', { type: 'number', step: 'any', min: '0', max: '1', placeholder: '1' });
  const format = control('accessLog.format', { tag: 'select', options: ['json', 'common'] });
  const redact = control('accessLog.redactHeaders', { type: 'text', placeholder: 'authorization, cookie' });
  const appLogs = rowList(ed, 'app log', (l, i) => {
    const mk = (name, attrs, value) => control(`appLogs[${i}].${name}`, attrs, value);
    const inputs = {
      path: mk('path', { type: 'text', placeholder: '/var/log/app/*.log' }, l.path),
      parser: mk('parser', { tag: 'select', options: ['plain', 'json', 'regex'] }, l.parser || 'plain'),
      pattern: mk('pattern', { type: 'text', placeholder: '(?P<level>\\w+) (?P<msg>.*)' }, l.pattern),
      multilineStart: mk('multilineStart', { type: 'text', placeholder: '^\\d{4}-' }, l.multilineStart),
    };
    const row = h(
      'div',
      { class: 'rule', style: '--cols: 4' },
      field('Path (glob)', inputs.path),
      field('Parser', inputs.parser),
      field('Pattern (regex parser)', inputs.pattern),
      field('Multiline start (regex)', inputs.multilineStart),
    );
    return { inputs, row };
  });
  const sinkType = control('sink.type', { tag: 'select', options: ['stdout', 'file', 'http'] });
  const sinkPath = control('sink.path', { type: 'text', placeholder: '/var/log/outrider/ship.ndjson' });
  const sinkUrl = control('sink.url', { type: 'url', placeholder: 'http://collector:9880/ingest' });
  const sinkFormat = control('sink.format', {
    tag: 'select',
    options: [['', 'default (ndjson)'], 'ndjson', 'elasticsearch-bulk', 'loki'],
  });
  const batchSize = control('sink.batchSize', { type: 'number', step: '1', min: '1', placeholder: '500' });
  const flushInterval = control('sink.flushInterval', { type: 'text', placeholder: '1s' });
  const compression = control('sink.compression', { tag: 'select', options: ['none', 'gzip'] });
  const only = { path: ['file'], url: ['http'], format: ['http'], compression: ['http'] };
  const sinkFields = {
    path: field('File path', sinkPath),
    url: field('URL', sinkUrl),
    format: field('Format', sinkFormat),
    compression: field('Compression', compression),
  };
  const showSinkFields = () => {
    for (const [k, types] of Object.entries(only)) sinkFields[k].hidden = !types.includes(sinkType.value);
  };
  sinkType.addEventListener('change', showSinkFields);

  ed.fromDoc = (d) => {
    doc = d || example;
    const a = doc.accessLog || {};
    enabled.checked = Boolean(a.enabled);
    sampleRate.value = a.sampleRate ?? '';
    format.value = a.format || 'json';
    redact.value = (a.redactHeaders || []).join(', ');
    appLogs.reset(doc.appLogs);
    const s = doc.sink || {};
    sinkType.value = s.type || 'stdout';
    // A type-specific field absent from the document keeps what the form held, so
    // switching the type in the raw view and back does not wipe it.
    if (s.path !== undefined || sinkType.value === 'file') sinkPath.value = s.path ?? '';
    if (s.url !== undefined || sinkType.value === 'http') sinkUrl.value = s.url ?? '';
    if (s.format !== undefined || sinkType.value === 'http') sinkFormat.value = s.format ?? '';
    compression.value = s.compression || 'none';
    batchSize.value = s.batchSize ?? '';
    flushInterval.value = s.flushInterval ?? '';
    showSinkFields();
  };
  ed.toDoc = () => {
    const d = JSON.parse(JSON.stringify(doc || example));
    const a = { ...(d.accessLog || {}), enabled: enabled.checked, format: format.value };
    put(a, 'sampleRate', sampleRate.value, Number);
    const headers = redact.value.split(',').map((x) => x.trim()).filter(Boolean);
    if (headers.length) a.redactHeaders = headers;
    else delete a.redactHeaders;
    d.accessLog = a;
    const logs = appLogs.rows.map(({ orig, inputs }) => {
      // The path is required: an empty one is sent so the server names the field.
      const l = { ...orig, path: inputs.path.value.trim(), parser: inputs.parser.value };
      put(l, 'pattern', inputs.pattern.value);
      put(l, 'multilineStart', inputs.multilineStart.value);
      return l;
    });
    if (logs.length) d.appLogs = logs;
    else delete d.appLogs;
    const s = { ...(d.sink || {}), type: sinkType.value };
    const values = { path: sinkPath.value, url: sinkUrl.value, format: sinkFormat.value, compression: compression.value };
    for (const [k, types] of Object.entries(only)) {
      if (types.includes(s.type)) put(s, k, values[k]);
      else delete s[k];
    }
    if (s.compression === 'none') delete s.compression;
    put(s, 'batchSize', batchSize.value, Number);
    put(s, 'flushInterval', flushInterval.value);
    d.sink = s;
    return d;
  };
  ed.form.append(
    h(
      'fieldset',
      {},
      h('legend', { text: 'Access log' }),
      h(
        'div',
        { class: 'rule', style: '--cols: 4' },
        field('Enabled', enabled),
        field('Sample rate (0 to 1)', sampleRate),
        field('Format', format),
        field('Redacted headers (comma-separated)', redact),
      ),
    ),
    h(
      'fieldset',
      {},
      h('legend', { text: 'App log files' }),
      appLogs.list,
      h('button', { type: 'button', class: 'secondary', text: 'Add app log', onclick: () => appLogs.add() }),
    ),
    h(
      'fieldset',
      {},
      h('legend', { text: 'Sink' }),
      h(
        'div',
        { class: 'rule', style: '--cols: 7' },
        field('Type', sinkType),
        sinkFields.path,
        sinkFields.url,
        sinkFields.format,
        field('Batch size', batchSize),
        field('Flush interval', flushInterval),
        sinkFields.compression,
      ),
    ),
  );
  ed.load().catch((e) => ed.say(e.message, false));
  return ed.el;
}

function configEditor(service, configs) {
  const el = h('section', { class: 'editor', id: 'configs', 'aria-labelledby': 'configs-title' }, h('h3', { id: 'configs-title', text: 'Config documents' }));
  const list = h('ul', {}, ...configs.map((c) =>
    h('li', {}, h('button', { type: 'button', class: 'secondary', text: `${c.name}`, onclick: () => open(c.name) }),
      ` ${c.contentType}, ${c.size} bytes, revision ${c.revision}`)));
  const name = h('input', { id: 'config-name', type: 'text', 'data-field': 'name' });
  const ctype = h('select', { id: 'config-type' }, ...['application/json', 'application/yaml', 'text/plain'].map((t) => h('option', { value: t, text: t })));
  const text = h('textarea', { id: 'config-content', 'aria-label': 'Document content', spellcheck: 'false' });
  const result = h('div', { class: 'result', role: 'status', 'aria-live': 'polite' });
  let etag = null;
  const path = () => `/services/${encodeURIComponent(service)}/config/${encodeURIComponent(name.value.trim())}`;
  const say = (m, ok) => { result.textContent = m; result.className = ok ? 'result ok' : 'result bad'; };
  async function open(n) {
    name.value = n;
    const r = await fetch(`/api/v1${path()}`, { headers: state.token ? { Authorization: `Bearer ${state.token}` } : {} });
    if (!r.ok) { say(`Could not read ${n}: ${r.status}`, false); return; }
    etag = r.headers.get('ETag');
    ctype.value = (r.headers.get('content-type') || 'text/plain').split(';')[0];
    text.value = await r.text();
    say(`Editing ${n} (revision ${etag})`, true);
  }
  const save = async (dryRun) => {
    try {
      const headers = etag && !dryRun ? { 'If-Match': etag } : {};
      const { data, etag: e } = await api('PUT', `${path().replace(/\/$/, '')}${dryRun ? '?dryRun=true' : ''}`, { body: text.value, headers, contentType: ctype.value });
      if (dryRun) { say(`Valid. ${data.changed ? `Would change ${data.sidecars.length} sidecars.` : 'No change.'}`, true); return; }
      etag = e;
      say(`Saved as revision ${data.revision}.`, true);
    } catch (e) {
      if (e.status === 412) say(`Not saved: someone else changed ${name.value} after you opened it (now revision ${e.body.currentRevision ?? 'deleted'}). Your text is still here; open the document again to see theirs.`, false);
      else if (e.status === 422) say((e.body.errors || []).map((x) => `${x.field}: ${x.message}`).join('; '), false);
      else say(`Not saved: ${e.message}`, false);
    }
  };
  el.append(
    configs.length ? list : h('p', { class: 'muted', text: 'No config documents yet.' }),
    h('div', { class: 'form-row' }, field('Name', name), field('Content type', ctype)),
    text,
    h('div', { class: 'actions' },
      h('button', { type: 'button', text: 'Save document', onclick: () => save(false) }),
      h('button', { type: 'button', class: 'secondary', text: 'Preview (dry run)', onclick: () => save(true) }),
      h('button', { type: 'button', class: 'secondary', text: 'New', onclick: () => { etag = null; name.value = ''; text.value = ''; say('', true); } })),
    result,
  );
  return el;
}

// ---- history -------------------------------------------------------------------------

function propagationText(p) {
  if (!p || (p.applied === 0 && p.pending === 0)) return 'no sidecar connected';
  let t = `${p.applied} applied`;
  if (p.pending) t += `, ${p.pending} pending`;
  if (p.lastAckSeconds !== null && p.lastAckSeconds !== undefined) t += `; last after ${p.lastAckSeconds.toFixed(3)}s`;
  return t;
}

async function loadHistory() {
  const { data } = await api('GET', '/revisions?limit=200');
  const tbody = $('#history tbody');
  tbody.replaceChildren(
    ...data.map((r) => {
      const what = `${r.operation} ${r.kind}${r.name ? ' ' + r.name : ''} of ${r.service}${r.reverts ? ` (reverts r${r.reverts})` : ''}`;
      return h(
        'tr',
        { 'data-revision': r.revision },
        h('td', { text: `r${r.revision}` }),
        h('td', { text: new Date(r.time).toLocaleString() }),
        h('td', { text: r.actor }),
        h('td', { text: what }),
        h('td', { class: 'propagation', text: propagationText(r.propagation) }),
        h(
          'td',
          {},
          h('button', { type: 'button', class: 'secondary', text: 'Diff', 'aria-label': `Diff of revision ${r.revision}`, onclick: () => showDiff(r.revision) }),
          ' ',
          h('button', { type: 'button', class: 'secondary', text: 'Revert', 'aria-label': `Revert revision ${r.revision}`, onclick: () => revert(r) }),
        ),
      );
    }),
  );
}

async function revert(r) {
  const ok = window.confirm(
    `Revert revision ${r.revision} (${r.operation} ${r.kind} of ${r.service})?\n\nThis writes a new revision that restores the state before it.`,
  );
  if (!ok) return;
  try {
    const { data } = await api('POST', `/revisions/${r.revision}/revert`);
    banner(`Reverted revision ${r.revision}: now revision ${data.revision}.`, 'info');
    await loadHistory();
  } catch (e) {
    banner(`Revert failed: ${e.message}`);
  }
}

// A line diff (longest common subsequence) of the two documents, pretty-printed.
function lineDiff(a, b) {
  const n = a.length, m = b.length;
  const dp = Array.from({ length: n + 1 }, () => new Int32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) dp[i][j] = a[i] === b[j] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
  const left = [], right = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { left.push([a[i++], '']); right.push([b[j++], '']); }
    else if (j < m && (i >= n || dp[i][j + 1] >= dp[i + 1][j])) right.push([b[j++], 'add']);
    else left.push([a[i++], 'del']);
  }
  return [left, right];
}

async function showDiff(n) {
  const { data } = await api('GET', `/revisions/${n}`);
  const pretty = (d) => (d === null || d === undefined ? [] : JSON.stringify(d, null, 2).split('\n'));
  const [left, right] = lineDiff(pretty(data.before), pretty(data.after));
  const col = (title, lines) =>
    h('div', {}, h('h4', { text: title }), h('pre', {}, ...lines.map(([t, cls]) => h('div', { class: cls || null, text: t || ' ' }))));
  const box = $('#diff');
  box.replaceChildren(
    h('h3', { text: `Revision ${n}: ${data.operation} ${data.kind} of ${data.service} by ${data.actor}` }),
    h('p', { class: 'muted', text: `Propagation: ${propagationText(data.propagation)}` }),
    h('div', { class: 'diff' }, col(data.before ? 'Before' : 'Before (absent)', left), col(data.after ? 'After' : 'After (deleted)', right)),
  );
  box.hidden = false;
  box.scrollIntoView({ block: 'nearest' });
}

// ---- routing -------------------------------------------------------------------------

async function route() {
  if (!$('#login').hidden) return;
  banner('');
  const hash = location.hash || '#/fleet';
  const parts = hash.slice(2).split('/').map(decodeURIComponent);
  const view = parts[0] === 'services' && parts[1] ? 'service' : ['fleet', 'services', 'history'].includes(parts[0]) ? parts[0] : 'fleet';
  state.view = view;
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== `view-${view}`;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.view === (view === 'service' ? 'services' : view)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    if (view === 'fleet') await loadFleet();
    else if (view === 'services') await loadServices();
    else if (view === 'service') await showService(parts[1]);
    else if (view === 'history') { $('#diff').hidden = true; await loadHistory(); }
  } catch (e) {
    if (e.status !== 401) banner(e.message);
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = $('#token-input').value.trim();
    if (!(await signIn(t))) $('#login-error').textContent ||= 'That token was refused.';
  });
  $('#logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    showLogin('Signed out.');
  });
  $('#fleet-filter').addEventListener('input', () => { for (const r of state.rows.values()) applyFilter(r); });
  window.addEventListener('hashchange', route);
  // "Last seen" ages without a request.
  setInterval(() => {
    if (state.view !== 'fleet') return;
    for (const r of state.rows.values()) {
      const t = ago(r.data.lastSeen);
      if (r.cells.lastSeen.textContent !== t) r.cells.lastSeen.textContent = t;
    }
  }, 1000);
  signIn(state.token).then((ok) => { if (!ok) showLogin(); });
});
