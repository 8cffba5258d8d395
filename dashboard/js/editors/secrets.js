// The secrets panel: the service's secrets as metadata (name, size, revision, time),
// a write-only form to set one and a delete per secret. The value field is a password
// input, emptied once sent; no value is ever read back (the API has none to give).

import { api } from '../api.js';
import { h } from '../dom.js';
import { field } from './form.js';

export function secretsEditor(service) {
  const base = `/services/${encodeURIComponent(service)}/secrets`;
  const rows = h('tbody', { id: 'secrets-rows' });
  const name = h('input', { id: 'secret-name', type: 'text', autocomplete: 'off', 'data-field': 'name' });
  const value = h('input', { id: 'secret-value', type: 'password', autocomplete: 'new-password' });
  const result = h('div', { class: 'result', id: 'secrets-result', role: 'status', 'aria-live': 'polite' });
  const say = (msg, ok) => {
    result.textContent = msg;
    result.className = ok ? 'result ok' : 'result bad';
  };
  const failed = (what, e) =>
    say(e.status === 403 ? `Not allowed: ${e.message} (secrets need an admin token)` : `${what}: ${e.message}`, false);

  const remove = async (n) => {
    try {
      const { data } = await api('DELETE', `${base}/${encodeURIComponent(n)}`);
      say(`Deleted ${n} (revision ${data.revision}).`, true);
      await reload();
    } catch (e) {
      failed(`Not deleted`, e);
    }
  };
  const row = (s) =>
    h(
      'tr',
      { 'data-secret': s.name },
      h('td', { text: s.name }),
      h('td', { class: 'num', text: `${s.size} bytes` }),
      h('td', { class: 'num', text: `r${s.revision}` }),
      h('td', { text: s.updatedAt }),
      h('td', {}, h('button', { type: 'button', class: 'secondary', text: 'Delete', onclick: () => remove(s.name) })),
    );
  const reload = async () => {
    const { data } = await api('GET', base);
    const empty = h('tr', {}, h('td', { colspan: '5', class: 'muted', text: 'No secrets yet.' }));
    rows.replaceChildren(...(data.length ? data.map(row) : [empty]));
  };
  const save = async () => {
    const n = name.value.trim();
    try {
      // Sent as bytes, never JSON: the value is stored exactly as typed.
      const { data } = await api('PUT', `${base}/${encodeURIComponent(n)}`, {
        body: value.value,
        contentType: 'application/octet-stream',
      });
      value.value = '';
      say(`Set ${n} (${data.size} bytes, revision ${data.revision}).`, true);
      await reload();
    } catch (e) {
      failed('Not saved', e);
    }
  };

  const heads = ['Name', 'Size', 'Revision', 'Updated', ''];
  const el = h(
    'section',
    { class: 'editor', id: 'secrets', 'aria-labelledby': 'secrets-title' },
    h('h3', { id: 'secrets-title', text: 'Secrets' }),
    h('p', { class: 'muted', text: 'Values are write-only: set one again to change it.' }),
    h(
      'table',
      { class: 'grid', id: 'secrets-table' },
      h('thead', {}, h('tr', {}, ...heads.map((t) => h('th', { scope: 'col', text: t })))),
      rows,
    ),
    h(
      'div',
      { class: 'form' },
      h('div', { class: 'form-row' }, field('Name', name), field('Value', value)),
      h('div', { class: 'actions' }, h('button', { type: 'button', id: 'secret-save', text: 'Set secret', onclick: save })),
    ),
    result,
  );
  reload().catch((e) => failed('Could not list the secrets', e));
  return el;
}
