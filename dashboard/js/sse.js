// A `text/event-stream` parser as the HTML standard defines it, fed with decoded text
// in chunks of any size; no DOM, so `node --test` runs it as the browser does.
//
// Lines end with CRLF, LF or CR (a CRLF may be split across chunks). A blank line
// dispatches the event: `data:` lines joined with "\n", the `event:` type (default
// "message") and the last `id:` seen, which carries over to later events. Comments
// (`:`) and unknown fields are ignored; an event left unfinished at the end is dropped.

export class SseParser {
  #onEvent;
  #buf = '';
  #started = false;
  #skipLf = false; // the last chunk ended in CR: an LF opening the next one ends nothing
  #data = [];
  #event = '';
  #lastId = '';
  retry = null; // reconnection time (ms) the server asked for, if it did

  constructor(onEvent) {
    this.#onEvent = onEvent;
  }

  push(chunk) {
    let text = chunk;
    if (this.#skipLf && text.length) {
      if (text.charCodeAt(0) === 10) text = text.slice(1);
      this.#skipLf = false;
    }
    if (!this.#started && text.length) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    // Only the new text is scanned, so a long line spread over many chunks costs O(n).
    const from = this.#buf.length;
    const buf = this.#buf + text;
    let start = 0;
    for (let i = from; i < buf.length; i++) {
      const c = buf.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.#line(buf.slice(start, i));
      if (c === 13) {
        if (i + 1 === buf.length) this.#skipLf = true;
        else if (buf.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.#buf = buf.slice(start);
  }

  // The stream closed: a half-received line or event is not an event.
  end() {
    this.#buf = '';
    this.#data = [];
    this.#event = '';
    this.#skipLf = false;
  }

  #line(line) {
    if (line === '') {
      this.#dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ':' starts a comment (keep-alives)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    switch (field) {
      case 'data':
        this.#data.push(value);
        break;
      case 'event':
        this.#event = value;
        break;
      case 'id':
        if (!value.includes('\u0000')) this.#lastId = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break;
    }
  }

  #dispatch() {
    const data = this.#data;
    const type = this.#event || 'message';
    this.#data = [];
    this.#event = '';
    // An event without data lines is not dispatched (its id still counts).
    if (data.length === 0) return;
    this.#onEvent({ type, data: data.join('\n'), lastEventId: this.#lastId });
  }
}
