// DOM helpers every view uses: a query shorthand, an element builder and the page's
// one banner line. Plain functions, no state.

export const $ = (sel, el = document) => el.querySelector(sel);

// h('td', { class: 'num', text: '3', onclick: fn }, ...children): `on*` attributes become
// listeners, `text` the text content, and null/undefined/false leave an attribute out.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function banner(msg, kind = 'error') {
  const b = $('#banner');
  if (!msg) {
    b.hidden = true;
    return;
  }
  b.textContent = msg;
  b.className = kind === 'info' ? 'banner info' : 'banner';
  b.hidden = false;
}
