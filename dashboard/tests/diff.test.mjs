// Unit tests of the history's line diff (js/diff.js), without a browser:
//   node --test dashboard/tests/diff.test.mjs   (run.mjs runs them too)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lineDiff } from '../js/diff.js';

test('lines both documents share are aligned, the rest marked deleted or added', () => {
  const [left, right] = lineDiff(['{', '  "weight": 0', '}'], ['{', '  "weight": 25', '}']);
  assert.deepEqual(left, [['{', ''], ['  "weight": 0', 'del'], ['}', '']]);
  assert.deepEqual(right, [['{', ''], ['  "weight": 25', 'add'], ['}', '']]);
});

test('a created document is all additions and a deleted one all deletions', () => {
  assert.deepEqual(lineDiff([], ['a', 'b']), [[], [['a', 'add'], ['b', 'add']]]);
  assert.deepEqual(lineDiff(['a'], []), [[['a', 'del']], []]);
});

test('identical documents have no change', () => {
  const [left, right] = lineDiff(['a', 'b'], ['a', 'b']);
  assert.ok([...left, ...right].every(([, cls]) => cls === ''));
});
