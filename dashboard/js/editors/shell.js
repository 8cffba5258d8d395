// The part every editor shares: read with its ETag, save with If-Match, a dry-run
// preview, the control plane's field errors next to their inputs, a stale-write refusal.
//
// An editor plugs in by filling `ed.form` and setting `ed.fromDoc`/`ed.toDoc` (a JSON
// document, with an "Edit as JSON" view), or `ed.request` and `ed.load` for a document
// that is sent as it is (config documents).

import { api } from '../api.js';
import { h } from '../dom.js';

// id: the section's id; path: the document's API path (or a function giving it);
// kindLabel and noun name the document in messages ("rate-limit" "policy").
export function editorShell({ id, title, path, kindLabel, noun = 'policy', json = true, saveLabel = 'Save' }) {
  const el = h('section', { class: 'editor', id, 'aria-labelledby': `${id}-title` }, h('h3', { id: `${id}-title`, text: title }));
  const form = h('div', { class: 'form' });
  const raw = json ? h('textarea', { id: `${id}-raw`, 'aria-label': `${title} as JSON`, hidden: true, spellcheck: 'false' }) : null;
  const rawErrors = h('div', { class: 'raw-errors' });
  const result = h('div', { class: 'result', role: 'status', 'aria-live': 'polite' });
  const pathNow = typeof path === 'function' ? path : () => path;
  const ed = {
    el,
    form,
    raw,
    result,
    etag: null,
    revision: null,
    doc: null,
    rawMode: false,
    // What a stale-write message calls the document.
    subject: () => `this ${kindLabel} ${noun}`,
    // The body of a write: the form's document, or the raw JSON being edited.
    request: () => ({ body: ed.rawMode ? JSON.parse(raw.value) : ed.toDoc() }),
  };

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
  ed.clearErrors = clearErrors;

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
      const { data, etag } = await api('GET', pathNow());
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
    say(ed.revision ? `Current: revision ${ed.revision}` : `No ${kindLabel} ${noun} yet.`, true);
  };

  const save = async (dryRun) => {
    clearErrors();
    let req;
    try {
      req = ed.request();
    } catch (e) {
      say(`The JSON does not parse: ${e.message}`, false);
      return;
    }
    const headers = ed.etag && !dryRun ? { 'If-Match': ed.etag } : {};
    try {
      const { data, etag } = await api('PUT', `${pathNow()}${dryRun ? '?dryRun=true' : ''}`, { ...req, headers });
      if (dryRun) {
        const n = data.sidecars.length;
        say(
          data.changed
            ? `Valid. Saving would send a new snapshot to ${n} sidecar${n === 1 ? '' : 's'}${n ? ': ' + data.sidecars.join(', ') : ''}.`
            : `Valid, and identical to the stored ${noun}: no sidecar would change.`,
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
        // The edit stays in the form: a reload is the user's choice, not ours.
        const reload = h('button', { type: 'button', class: 'secondary', text: 'Reload', onclick: () => ed.load() });
        say(
          `Not saved: someone else changed ${ed.subject()} after you opened it (it is now at revision ${e.body.currentRevision ?? 'deleted'}). ` +
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

  const actions = h(
    'div',
    { class: 'actions' },
    h('button', { type: 'button', text: saveLabel, onclick: () => save(false), 'data-action': 'save' }),
    h('button', { type: 'button', class: 'secondary', text: 'Preview (dry run)', onclick: () => save(true), 'data-action': 'dry-run' }),
  );
  ed.actions = actions;
  if (json) actions.append(jsonToggle(ed, say));
  el.append(form, ...(raw ? [raw] : []), rawErrors, actions, result);
  return ed;
}

// Switches between the form and the document as JSON; the JSON goes back into the form
// only when it parses, so a typo never loses the form's state.
function jsonToggle(ed, say) {
  const toggle = h('button', { type: 'button', class: 'secondary', text: 'Edit as JSON' });
  toggle.addEventListener('click', () => {
    if (!ed.rawMode) {
      ed.raw.value = JSON.stringify(ed.toDoc(), null, 2);
    } else {
      try {
        ed.fromDoc(JSON.parse(ed.raw.value));
      } catch (e) {
        say(`The JSON does not parse: ${e.message}`, false);
        return;
      }
    }
    ed.rawMode = !ed.rawMode;
    ed.form.hidden = ed.rawMode;
    ed.raw.hidden = !ed.rawMode;
    toggle.textContent = ed.rawMode ? 'Edit as form' : 'Edit as JSON';
  });
  return toggle;
}
