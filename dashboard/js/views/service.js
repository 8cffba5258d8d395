// One service's page: its instances per subset and an editor for each policy kind, for
// its config documents and for its secrets (metadata, write-only values). The editors
// load their own documents.

import { api } from '../api.js';
import { $, h } from '../dom.js';
import { num, pct } from '../format.js';
import { authorizationEditor } from '../editors/authorization.js';
import { configEditor } from '../editors/configs.js';
import { loggingEditor } from '../editors/logging.js';
import { rateLimitEditor } from '../editors/rate-limit.js';
import { routingEditor } from '../editors/routing.js';
import { secretsEditor } from '../editors/secrets.js';

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
  const heads = ['Subset', 'Instances', 'Req/s', 'Errors', 'p99 ms (worst)', 'Rate-limited'];
  return h(
    'table',
    { class: 'grid subsets', id: 'subsets' },
    h('thead', {}, h('tr', {}, ...heads.map((t) => h('th', { scope: 'col', text: t })))),
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

// Who the service's instances are to their callers, and how far it is from strict
// mTLS: its mode and the plaintext requests its instances still receive.
function identityPanel(data) {
  const plaintext = data.plaintextRequests || 0;
  const advice =
    data.mtls === 'strict'
      ? 'strict: plaintext callers are refused'
      : plaintext === 0
        ? 'permissive, and every request so far came over mTLS'
        : `permissive: ${plaintext} plaintext request${plaintext === 1 ? '' : 's'} received (would be refused in strict)`;
  const heads = ['Pod', 'Subset', 'Identity', 'Certificate expires'];
  return h(
    'section',
    { id: 'identity' },
    h('h3', { text: 'Identity and mTLS' }),
    h('p', { id: 'mtls-mode', 'data-mode': data.mtls, text: `mTLS ${advice}` }),
    h(
      'table',
      { class: 'grid identities' },
      h('thead', {}, h('tr', {}, ...heads.map((t) => h('th', { scope: 'col', text: t })))),
      h(
        'tbody',
        {},
        ...data.sidecars.map((s) =>
          h(
            'tr',
            { 'data-pod': s.pod },
            h('td', { text: s.pod }),
            h('td', { text: s.version }),
            h('td', { text: s.identity || 'none yet (plaintext)' }),
            h('td', { text: s.certificateExpiry || '–' }),
          ),
        ),
      ),
    ),
  );
}

// After a snapshot or membership event: only the instances table, the editors keep
// what the user is typing.
export async function refreshInstances(service) {
  const { data } = await api('GET', `/services/${encodeURIComponent(service)}`);
  const old = $('#subsets');
  if (old) old.replaceWith(instancesTable(data.sidecars));
}

export async function show(name) {
  $('#service-title').textContent = name;
  const body = $('#service-body');
  body.replaceChildren(h('p', { class: 'muted', text: 'Loading…' }));
  const { data } = await api('GET', `/services/${encodeURIComponent(name)}`);
  const subsets = [...new Set(data.sidecars.map((s) => s.version))].sort();
  body.replaceChildren(
    h('p', { class: 'muted', text: `Snapshot revision r${data.revision}` }),
    h('h3', { text: 'Instances per subset' }),
    instancesTable(data.sidecars),
    identityPanel(data),
    rateLimitEditor(name),
    routingEditor(name, subsets),
    loggingEditor(name),
    authorizationEditor(name),
    configEditor(name, data.configs),
    secretsEditor(name),
  );
}
