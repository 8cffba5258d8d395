// Form building blocks the editors share: a labelled field, a control bound to a
// document path, writing a form value into a document, and add/remove row lists.

import { h } from '../dom.js';

export function field(label, input) {
  return h('div', {}, h('label', { for: input.id, text: label }), input);
}

let uid = 0;
// A form control bound to a document field: `data-field` is the path the API names in its
// 422 errors (`rules[0].burst`, `sink.url`), so the shell puts each message next to it.
// `options` are values or [value, label] pairs; the value '' stands for "absent".
export function control(path, { tag = 'input', options = [], ...attrs } = {}, value) {
  const el = h(tag, { id: `f-${++uid}`, 'data-field': path, ...attrs });
  for (const o of options) {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    el.append(h('option', { value: v, text: label }));
  }
  if (value !== undefined && value !== null) el.value = String(value);
  return el;
}

// Writes a form value into a document; an empty value removes the key so the server's
// default applies (and an unchanged document stays byte-identical to the stored one).
export function put(obj, key, value, conv = (v) => v) {
  const v = String(value).trim();
  if (v === '') delete obj[key];
  else obj[key] = conv(v);
}

// Rows of a repeated document field (rate-limit rules, app logs) with add and remove.
// `build(orig, i)` returns {inputs, row}; each entry keeps the document it came from so
// fields the form does not show survive. Removing a row re-renders from the document so
// every row's `data-field` index matches its position again.
export function rowList(ed, noun, build) {
  const list = h('div', {});
  const rows = [];
  const add = (orig = {}) => {
    const i = rows.length;
    const { inputs, row } = build(orig, i);
    const entry = { orig, inputs, row };
    row.append(
      h('button', {
        type: 'button',
        class: 'secondary',
        text: 'Remove',
        'aria-label': `Remove ${noun} ${i + 1}`,
        onclick: () => {
          rows.splice(rows.indexOf(entry), 1);
          ed.fromDoc(ed.toDoc());
        },
      }),
    );
    rows.push(entry);
    list.append(row);
  };
  const reset = (items) => {
    rows.length = 0;
    list.replaceChildren();
    for (const item of items || []) add(item);
  };
  return { list, rows, add, reset };
}
