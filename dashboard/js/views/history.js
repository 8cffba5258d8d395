// The history view: every revision with its actor and propagation, a side-by-side
// diff of one revision's documents, and revert (a new revision restoring the old state).

import { api } from '../api.js';
import { $, banner, h } from '../dom.js';
import { propagationText } from '../format.js';
import { lineDiff } from '../diff.js';

export async function load() {
  const { data } = await api('GET', '/revisions?limit=200');
  $('#history tbody').replaceChildren(
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

// Entering the view starts without a diff open.
export async function show() {
  $('#diff').hidden = true;
  await load();
}

async function revert(r) {
  const ok = window.confirm(
    `Revert revision ${r.revision} (${r.operation} ${r.kind} of ${r.service})?\n\nThis writes a new revision that restores the state before it.`,
  );
  if (!ok) return;
  try {
    const { data } = await api('POST', `/revisions/${r.revision}/revert`);
    banner(`Reverted revision ${r.revision}: now revision ${data.revision}.`, 'info');
    await load();
  } catch (e) {
    banner(`Revert failed: ${e.message}`);
  }
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
