// The config documents editor: the service's documents as a list to open, and one
// document's name, content type and text, sent as they are (JSON, YAML or plain text).

import { api } from '../api.js';
import { h } from '../dom.js';
import { field } from './form.js';
import { editorShell } from './shell.js';

const TYPES = ['application/json', 'application/yaml', 'text/plain'];

export function configEditor(service, configs) {
  const name = h('input', { id: 'config-name', type: 'text', 'data-field': 'name' });
  const ctype = h('select', { id: 'config-type' }, ...TYPES.map((t) => h('option', { value: t, text: t })));
  const text = h('textarea', { id: 'config-content', 'aria-label': 'Document content', spellcheck: 'false' });
  // With no name yet the path ends in '/', which the API refuses naming the field.
  const path = () => `/services/${encodeURIComponent(service)}/config/${encodeURIComponent(name.value.trim())}`.replace(/\/$/, '');
  const ed = editorShell({
    id: 'configs',
    title: 'Config documents',
    path,
    kindLabel: 'config',
    noun: 'document',
    json: false,
    saveLabel: 'Save document',
  });
  ed.subject = () => name.value.trim();
  ed.request = () => ({ body: text.value, contentType: ctype.value });
  ed.load = async () => {
    ed.clearErrors();
    const n = name.value.trim();
    try {
      const { data, etag, contentType } = await api('GET', path(), { as: 'text' });
      ed.etag = etag;
      ctype.value = (contentType || 'text/plain').split(';')[0];
      text.value = data;
      ed.say(`Editing ${n} (revision ${etag})`, true);
    } catch (e) {
      ed.say(`Could not read ${n}: ${e.status ?? e.message}`, false);
    }
  };
  const open = (n) => {
    name.value = n;
    return ed.load();
  };
  const list = h(
    'ul',
    {},
    ...configs.map((c) =>
      h('li', {}, h('button', { type: 'button', class: 'secondary', text: `${c.name}`, onclick: () => open(c.name) }), ` ${c.contentType}, ${c.size} bytes, revision ${c.revision}`),
    ),
  );
  const reset = () => {
    ed.etag = null;
    name.value = '';
    text.value = '';
    ed.clearErrors();
    ed.say('', true);
  };
  ed.actions.append(h('button', { type: 'button', class: 'secondary', text: 'New', onclick: reset }));
  ed.form.append(
    configs.length ? list : h('p', { class: 'muted', text: 'No config documents yet.' }),
    h('div', { class: 'form-row' }, field('Name', name), field('Content type', ctype)),
    text,
  );
  return ed.el;
}
