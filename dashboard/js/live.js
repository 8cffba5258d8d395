// The live event stream: `GET /api/v1/events` read with fetch (so the token travels in
// a header, never in a URL), parsed by SseParser, reconnected after a pause when it drops.
//
// The caller says what an event means (`onChange`, `onResync`) and what to re-read
// once connected (`onOpen`: anything missed while the stream was down).

import { authHeaders, refused } from './api.js';
import { SseParser } from './sse.js';
import { store } from './state.js';

const RECONNECT_MS = 2000;
let stream = null;

export function stop() {
  if (stream) stream.abort();
  stream = null;
}

export async function listen({ onOpen, onChange, onResync }) {
  stop();
  const ctrl = new AbortController();
  stream = ctrl;
  let retry = RECONNECT_MS;
  const parser = new SseParser((ev) => {
    if (ev.type === 'resync') onResync();
    else if (ev.type === 'change' && ev.data) {
      let change;
      try {
        change = JSON.parse(ev.data);
      } catch {
        return; // not ours to guess at; the next resync or event repairs the view
      }
      onChange(change);
    }
  });
  while (!ctrl.signal.aborted) {
    try {
      const r = await fetch('/api/v1/events', { headers: authHeaders(), signal: ctrl.signal });
      if (r.status === 401) {
        refused();
        return;
      }
      if (!r.ok) throw new Error(`events: ${r.status}`);
      store.set({ live: true });
      onOpen();
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    parser.end();
    retry = parser.retry ?? retry;
    store.set({ live: false });
    await new Promise((res) => setTimeout(res, retry));
  }
}
