// The routing editor as a canary slider: it splits the default route between a stable
// and a canary subset and keeps every other route of the document as it is.
//
// While an automated rollout drives the service the control plane refuses manual
// weight edits (409), so the slider is disabled and says who drives it instead of
// letting an operator fight the controller; it is handed back when the rollout ends.

import { api } from '../api.js';
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
  const driver = h('p', { id: 'canary-driver', class: 'banner info', role: 'status', hidden: true });
  ed.form.append(
    h('p', { class: 'hint', text: 'Splits the default route between two subsets; other routes are kept as they are.' }),
    driver,
    h('div', { class: 'form-row' }, field('Stable subset', stable), field('Canary subset', canary)),
    h('div', { class: 'slider form-row' }, h('label', { for: 'canary-weight', text: 'Canary weight' }), slider, out),
  );
  const controls = () => [stable, canary, slider, ...ed.actions.querySelectorAll('button')];
  let driven = false;
  let seenStep = null;
  const showDriver = (r) => {
    const active = Boolean(r && r.active);
    driver.hidden = !active;
    if (active !== driven) for (const c of controls()) c.disabled = active;
    if (active) {
      const left = r.timeLeftMs == null ? '' : `, ${Math.ceil(r.timeLeftMs / 1000)}s left`;
      driver.textContent =
        `Driven by an automated rollout of ${r.subset}: step ${r.step + 1} of ${r.steps.length} (${r.weight}%), ` +
        `${r.state}${left}, started by ${r.actor || 'unknown'}. Manual weight edits are refused until it ends or is aborted.`;
    }
    // The rollout writes the weights as it steps: show each step's, and what it left.
    const step = active ? `${r.step}/${r.weight}` : null;
    if (step !== seenStep && (active || driven)) ed.load().catch((e) => ed.say(e.message, false));
    seenStep = step;
    driven = active;
  };
  const rolloutPath = `/services/${encodeURIComponent(service)}/canary`;
  let shown = false;
  const watch = async () => {
    try {
      const { data } = await api('GET', rolloutPath);
      showDriver(data);
    } catch (e) {
      if (e.status === 404) showDriver(null);
    }
    // The editor is dropped when the view changes; its watch stops with it.
    shown ||= ed.el.isConnected;
    if (ed.el.isConnected || !shown) setTimeout(watch, driven ? 1000 : 3000);
  };
  ed.load()
    .then(watch)
    .catch((e) => ed.say(e.message, false));
  return ed.el;
}
