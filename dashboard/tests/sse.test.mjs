// Unit tests of the dashboard's text/event-stream parser (js/sse.js), without a browser:
//   node --test dashboard/tests/sse.test.mjs   (run.mjs runs them too)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser } from '../js/sse.js';

// Feeds the chunks in order and returns every dispatched event.
function parse(...chunks) {
  const events = [];
  const p = new SseParser((e) => events.push(e));
  for (const c of chunks) p.push(c);
  return { events, parser: p };
}

const change = (data, lastEventId = '') => ({ type: 'change', data, lastEventId });

test('a one-line event is dispatched with its type and data', () => {
  const { events } = parse('event: change\ndata: {"a":1}\n\n');
  assert.deepEqual(events, [change('{"a":1}')]);
});

test('an event without an event field is a message', () => {
  assert.deepEqual(parse('data: x\n\n').events, [{ type: 'message', data: 'x', lastEventId: '' }]);
});

test('multi-line data fields are joined with a newline', () => {
  const { events } = parse('event: change\ndata: {\ndata:   "a": 1\ndata: }\n\n');
  assert.deepEqual(events, [change('{\n  "a": 1\n}')]);
  assert.deepEqual(JSON.parse(events[0].data), { a: 1 });
});

test('only one space after the colon is dropped, and a field without a colon has an empty value', () => {
  const { events } = parse('data:  two spaces\ndata\ndata:none\n\n');
  assert.deepEqual(events.map((e) => e.data), [' two spaces\n\nnone']);
});

test('CR, LF and CRLF all end lines, mixed in one stream', () => {
  const { events } = parse('event: change\rdata: a\r\rdata: b\r\n\r\nevent: change\ndata: c\n\n');
  assert.deepEqual(events, [change('a'), { type: 'message', data: 'b', lastEventId: '' }, change('c')]);
});

test('an event split across chunks at every position parses the same', () => {
  const stream = ': hello\r\nevent: change\r\nid: 7\r\ndata: {"x":\r\ndata: 2}\r\n\r\nevent: resync\ndata: {}\n\n';
  const whole = parse(stream).events;
  assert.equal(whole.length, 2);
  for (let i = 0; i <= stream.length; i++) {
    for (let j = i; j <= stream.length; j++) {
      const { events } = parse(stream.slice(0, i), stream.slice(i, j), stream.slice(j));
      assert.deepEqual(events, whole, `split at ${i} and ${j}`);
    }
  }
});

test('a CRLF split between two chunks ends one line, not two', () => {
  // A second line end would be a blank line and dispatch "a" before "b" arrives.
  const { events } = parse('data: a\r', '\ndata: b\r', '\n\r', '\n');
  assert.deepEqual(events.map((e) => e.data), ['a\nb']);
});

test('comments are ignored, also between the lines of an event', () => {
  const { events } = parse(':keep-alive\n\n', 'event: change\n: in between\ndata: x\n\n');
  assert.deepEqual(events, [change('x')]);
});

test('the last event id carries over to later events until a new id', () => {
  const { events } = parse('id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\n');
  assert.deepEqual(events.map((e) => [e.data, e.lastEventId]), [['a', '1'], ['b', '1'], ['c', '2'], ['d', '']]);
});

test('an id containing NUL is ignored', () => {
  const { events } = parse('id: 1\ndata: a\n\nid: x\u0000y\ndata: b\n\n');
  assert.deepEqual(events.map((e) => e.lastEventId), ['1', '1']);
});

test('an event with no data is not dispatched, and its type does not leak into the next', () => {
  const { events } = parse('event: change\n\ndata: x\n\n');
  assert.deepEqual(events, [{ type: 'message', data: 'x', lastEventId: '' }]);
});

test('an empty data field is an event with empty data', () => {
  assert.deepEqual(parse('event: change\ndata\n\n').events, [change('')]);
});

test('unknown fields are ignored, and retry takes digits only', () => {
  const { events, parser } = parse('foo: bar\nretry: 1500\ndata: x\n\n');
  assert.deepEqual(events.map((e) => e.data), ['x']);
  assert.equal(parser.retry, 1500);
  parser.push('retry: 2s\n\n');
  assert.equal(parser.retry, 1500);
});

test('a byte-order mark opening the stream is skipped', () => {
  assert.deepEqual(parse('\uFEFFdata: x\n\n').events.map((e) => e.data), ['x']);
  // Only at the very start: later it is part of a field name.
  assert.deepEqual(parse('data: a\n\n\uFEFFdata: b\n\n').events.map((e) => e.data), ['a']);
});

test('an event cut off by the end of the stream is dropped, and the next stream starts clean', () => {
  const { events, parser } = parse('event: change\ndata: half');
  parser.end();
  parser.push('data: whole\n\n');
  assert.deepEqual(events, [{ type: 'message', data: 'whole', lastEventId: '' }]);
});

test('a long line arriving one character at a time is one field', () => {
  const big = 'x'.repeat(20_000);
  const p = new SseParser((e) => got.push(e));
  const got = [];
  for (const ch of `data: ${big}\n\n`) p.push(ch);
  assert.equal(got.length, 1);
  assert.equal(got[0].data, big);
});
