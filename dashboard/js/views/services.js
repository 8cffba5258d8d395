// The services view: one row per service with its revision, instances per subset,
// policies and config document count, each linking to the service's page.

import { api } from '../api.js';
import { $, h } from '../dom.js';

export async function load() {
  const { data } = await api('GET', '/services');
  $('#services tbody').replaceChildren(
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
