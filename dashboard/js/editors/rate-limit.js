// The rate-limit editor: one form row per rule (name, path prefix, key, rate, burst,
// scope); fields the form does not show are kept from the stored rule.

import { h } from '../dom.js';
import { control, field, put, rowList } from './form.js';
import { editorShell } from './shell.js';

export function rateLimitEditor(service) {
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
