// The routing editor as a canary slider: it splits the default route between a stable
// and a canary subset and keeps every other route of the document as it is.

import { h } from '../dom.js';
import { field } from './form.js';
import { editorShell } from './shell.js';

export function routingEditor(service, knownSubsets) {
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
