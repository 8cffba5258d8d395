// The authorization editor: mTLS mode, default action, dry run, and one form row per
// rule (name, callers, path prefix, methods, action); fields the form does not show
// (a rule's header match) are kept from the stored rule. A dry-run policy says so
// above the form, with the would-be denials per rule summed over the service's
// sidecars (from their health reports).

import { api } from '../api.js';
import { h } from '../dom.js';
import { control, field, put, rowList } from './form.js';
import { editorShell } from './shell.js';

// "a, b" → ['a', 'b']; empty → absent.
const list = (v) =>
  String(v)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

// Would-be denials per rule over `sidecars` (their health reports), largest first.
export function wouldDeny(sidecars) {
  const by = new Map();
  for (const s of sidecars || []) {
    for (const d of s.health?.authzDenied || []) {
      if (d.dryRun) by.set(d.rule, (by.get(d.rule) || 0) + d.count);
    }
  }
  return [...by.entries()].sort((a, b) => b[1] - a[1]);
}

export function authorizationEditor(service) {
  const ed = editorShell({
    id: 'authorization',
    title: 'Authorization',
    path: `/services/${encodeURIComponent(service)}/policies/authorization`,
    kindLabel: 'authorization',
  });
  const state = h('p', { class: 'muted', id: 'authorization-state', role: 'note' });
  const denials = h('table', { class: 'grid', id: 'authorization-would-deny', hidden: true });
  // Counts since each sidecar started, as its last health report said them.
  const showDenials = async () => {
    if (top.dryRun.value !== 'true') {
      denials.hidden = true;
      return;
    }
    const { data } = await api('GET', `/services/${encodeURIComponent(service)}`);
    const rows = wouldDeny(data.sidecars);
    denials.replaceChildren(
      h('caption', { text: 'Would have been denied (since each sidecar started)' }),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Rule' }), h('th', { scope: 'col', text: 'Requests' }))),
      h(
        'tbody',
        {},
        ...(rows.length
          ? rows.map(([rule, n]) => h('tr', {}, h('td', { text: rule }), h('td', { class: 'num', text: String(n) })))
          : [h('tr', {}, h('td', { text: 'none reported yet', colspan: '2' }))]),
      ),
    );
    denials.hidden = false;
  };
  const top = {
    mtls: control('mtls', { tag: 'select', options: ['permissive', 'strict'] }, 'permissive'),
    defaultAction: control('defaultAction', { tag: 'select', options: ['allow', 'deny'] }, 'allow'),
    dryRun: control('dryRun', { tag: 'select', options: [['false', 'off: enforce'], ['true', 'on: only count would-be denials']] }, 'false'),
  };
  const rules = rowList(ed, 'rule', (r, i) => {
    const mk = (name, attrs, value) => control(`rules[${i}].${name}`, attrs, value);
    const inputs = {
      name: mk('name', { type: 'text' }, r.name ?? `rule-${i + 1}`),
      // The API names a bad entry `rules[i].from[j]`; the shell shows those by the list.
      from: mk('from', { type: 'text', placeholder: 'anyone (plaintext included)' }, (r.from || []).join(', ')),
      pathPrefix: mk('match.pathPrefix', { type: 'text', placeholder: '/' }, r.match?.pathPrefix),
      methods: mk('match.methods', { type: 'text', placeholder: 'any' }, (r.match?.methods || []).join(', ')),
      action: mk('action', { tag: 'select', options: ['allow', 'deny'] }, r.action || 'allow'),
    };
    const row = h(
      'div',
      { class: 'rule' },
      field('Name', inputs.name),
      field('From (service, ns/service, spiffe://…, *)', inputs.from),
      field('Path prefix', inputs.pathPrefix),
      field('Methods (GET, HEAD, …)', inputs.methods),
      field('Action', inputs.action),
    );
    return { inputs, row };
  });
  const showState = () => {
    const dry = top.dryRun.value === 'true';
    state.textContent = dry
      ? 'Dry run: nothing is denied. Requests these rules would deny are logged and counted on each sidecar (outrider_authz_denied_total{dry_run="true"} on /metrics).'
      : top.defaultAction.value === 'deny'
        ? 'Enforced: requests no rule allows get 403.'
        : 'Enforced: requests no rule denies are allowed.';
    state.className = dry ? 'muted dry-run' : 'muted';
    showDenials().catch(() => {
      denials.hidden = true;
    });
  };
  for (const c of Object.values(top)) c.addEventListener('change', showState);
  ed.fromDoc = (doc) => {
    top.mtls.value = doc?.mtls || 'permissive';
    top.defaultAction.value = doc?.defaultAction || 'allow';
    top.dryRun.value = doc?.dryRun ? 'true' : 'false';
    rules.reset(doc?.rules);
    showState();
  };
  ed.toDoc = () => ({
    mtls: top.mtls.value,
    defaultAction: top.defaultAction.value,
    rules: rules.rows.map(({ orig, inputs }) => {
      const r = { ...orig, name: inputs.name.value, action: inputs.action.value };
      const from = list(inputs.from.value);
      if (from.length) r.from = from;
      else delete r.from;
      const match = { ...(orig.match || {}) };
      put(match, 'pathPrefix', inputs.pathPrefix.value);
      const methods = list(inputs.methods.value);
      if (methods.length) match.methods = methods;
      else delete match.methods;
      if (Object.keys(match).length) r.match = match;
      else delete r.match;
      return r;
    }),
    dryRun: top.dryRun.value === 'true',
  });
  ed.form.append(
    state,
    denials,
    field('mTLS', top.mtls),
    field('Default action', top.defaultAction),
    field('Dry run', top.dryRun),
    rules.list,
    h('button', { type: 'button', class: 'secondary', text: 'Add rule', onclick: () => rules.add() }),
  );
  ed.load().catch((e) => ed.say(e.message, false));
  return ed.el;
}
