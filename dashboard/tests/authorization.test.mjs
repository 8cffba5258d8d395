// Unit tests of the authorization editor's would-be-denials figure, without a browser:
//   node --test dashboard/tests/authorization.test.mjs   (run.mjs runs them too)
import { test } from 'node:test';
import assert from 'node:assert/strict';

// The editor's module reaches the session store when it loads; an empty one will do.
globalThis.sessionStorage ??= { getItem: () => null, setItem() {}, removeItem() {} };
const { wouldDeny } = await import('../js/editors/authorization.js');

test('would-be denials are summed per rule over sidecars, dry-run counts only, largest first', () => {
  const sidecars = [
    { health: { authzDenied: [{ rule: 'defaultAction', dryRun: true, count: 3 }, { rule: 'no-admin', dryRun: false, count: 9 }] } },
    { health: { authzDenied: [{ rule: 'defaultAction', dryRun: true, count: 2 }, { rule: 'no-admin', dryRun: true, count: 7 }] } },
    { health: null },
    {},
  ];
  assert.deepEqual(wouldDeny(sidecars), [['no-admin', 7], ['defaultAction', 5]]);
  assert.deepEqual(wouldDeny(undefined), []);
});
