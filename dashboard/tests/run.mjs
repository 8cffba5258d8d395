// Browser tests of the dashboard: headless Debian Chromium driven by playwright-core,
// against a real control plane, real sidecars and echo apps (binaries from
// target/debug, or OUTRIDER_BIN_DIR), all on free ports. Never downloads a browser.
//
//   cd dashboard/tests && npm ci && node run.mjs
//
// The browser-free unit tests (*.test.mjs: the event-stream parser, the history diff)
// run first, in their own `node --test` process, so CI runs them with the rest.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { createServer as createHttpServer } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const BIN = process.env.OUTRIDER_BIN_DIR || join(root, 'target/debug');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Functional deadlines, generous for a busy two-core CI machine; nothing here measures speed.
const SOON = 15_000;
const BOOT = 'boot-admin-secret';

const procs = [];
const work = mkdtempSync(join(tmpdir(), 'outrider-dash-'));
let browser;
let base;
let grpc;
let editor;
let viewer;
let cpData;
const sidecars = [];

// A port below the kernel's ephemeral range (32768+), where no outgoing connection of
// the processes under test can take it between this check and the server's bind.
const handedOut = new Set();
function tryListen(port) {
  return new Promise((res) => {
    const s = createServer();
    s.once('error', () => res(false));
    s.listen(port, '127.0.0.1', () => s.close(() => res(true)));
  });
}
async function freePort() {
  for (;;) {
    const port = 10000 + Math.floor(Math.random() * 22000);
    if (!handedOut.has(port) && (await tryListen(port))) {
      handedOut.add(port);
      return port;
    }
  }
}

function start(name, bin, args, env = {}) {
  const log = openSync(join(work, `${name}.log`), 'w');
  const p = spawn(join(BIN, bin), args, { env: { ...process.env, OUTRIDER_LOG: 'info', ...env }, stdio: ['ignore', log, log] });
  p.logName = name;
  procs.push(p);
  return p;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeout = SOON) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

async function apiGet(path, token = BOOT) {
  const r = await fetch(`${base}/api/v1${path}`, { headers: { Authorization: `Bearer ${token}` } });
  return { status: r.status, body: r.headers.get('content-type')?.includes('json') ? await r.json() : await r.text() };
}

async function configDump(sc) {
  const r = await fetch(`http://127.0.0.1:${sc.admin}/config_dump`);
  return r.json();
}

function tokenCreate(name, role) {
  return execFileSync(join(BIN, 'outrider-control-plane'), ['token', 'create', '--name', name, '--role', role, '--data-dir', cpData], {
    env: { ...process.env, OUTRIDER_DATABASE_URL: '' },
  })
    .toString()
    .trim();
}

async function startSidecar(pod, version) {
  const app = await freePort();
  const inbound = await freePort();
  const admin = await freePort();
  start(`${pod}-app`, 'outrider-echo', ['--listen', `127.0.0.1:${app}`, '--name', pod]);
  const dir = join(work, pod);
  mkdirSync(dir, { recursive: true });
  start(`${pod}-sidecar`, 'outrider-sidecar', [], {
    OUTRIDER_CONTROL_PLANE: grpc,
    OUTRIDER_SERVICE: 'web',
    OUTRIDER_VERSION: version,
    OUTRIDER_POD_NAME: pod,
    OUTRIDER_APP_PORT: String(app),
    OUTRIDER_INBOUND_ADDR: `127.0.0.1:${inbound}`,
    OUTRIDER_OUTBOUND_ADDR: `127.0.0.1:${await freePort()}`,
    OUTRIDER_ADMIN_ADDR: `127.0.0.1:${admin}`,
    // Several sidecars on one host: no health port (its 0.0.0.0:15020 would clash).
    OUTRIDER_HEALTH_ADDR: 'off',
    OUTRIDER_STATE_DIR: join(dir, 'state'),
    OUTRIDER_CONFIG_DIR: join(dir, 'config'),
  });
  const sc = { pod, inbound, admin };
  sidecars.push(sc);
  return sc;
}

async function signedIn(token) {
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await page.goto(base);
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#view-fleet').waitFor();
  return page;
}

async function openService(page, name) {
  await page.evaluate((n) => { location.hash = `#/services/${n}`; }, name);
  await page.locator('#rate-limit .result', { hasText: /revision|No rate-limit/ }).waitFor();
  await page.locator('#routing .result', { hasText: /revision|No routing/ }).waitFor();
}

// A request for the fleet's first page (no service, no cursor): a re-read of the fleet.
function fleetRead(url) {
  const u = new URL(url);
  return u.pathname === '/api/v1/sidecars' && !u.searchParams.has('service') && !u.searchParams.has('after');
}

const rps = (page) => page.locator('#rate-limit [data-field="rules[0].requestsPerSecond"]');

before(async () => {
  const [g, h] = [await freePort(), await freePort()];
  base = `http://127.0.0.1:${h}`;
  grpc = `http://127.0.0.1:${g}`;
  cpData = join(work, 'cp');
  start('control-plane', 'outrider-control-plane', ['--grpc-addr', `127.0.0.1:${g}`, '--http-addr', `127.0.0.1:${h}`, '--data-dir', cpData], {
    OUTRIDER_API_TOKEN: BOOT,
    OUTRIDER_DATABASE_URL: '',
  });
  await waitFor('the control plane', async () => (await fetch(`${base}/readyz`)).ok);
  editor = tokenCreate('alice', 'editor');
  viewer = tokenCreate('vera', 'viewer');
  await startSidecar('web-v1-a', 'v1');
  await startSidecar('web-v1-b', 'v1');
  await startSidecar('web-v2-a', 'v2');
  await waitFor('three healthy sidecars', async () => {
    const { body } = await apiGet('/sidecars');
    return body.filter((s) => s.status === 'healthy').length === 3;
  });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    // playwright passes a fresh temporary --user-data-dir itself (it refuses ours).
  });
});

after(async () => {
  await browser?.close();
  for (const p of procs.reverse()) p.kill('SIGTERM');
  await sleep(300);
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  if (process.exitCode) {
    for (const p of procs.filter((p) => p.logName === 'control-plane')) {
      console.error(readFileSync(join(work, `${p.logName}.log`), 'utf8').split('\n').slice(-40).join('\n'));
    }
  }
  rmSync(work, { recursive: true, force: true });
});

test('the unit tests of the dashboard modules pass under node --test', () => {
  const files = readdirSync(here).filter((f) => f.endsWith('.test.mjs')).map((f) => join(here, f));
  assert.ok(files.length > 0, 'no unit test files found');
  try {
    // Without the parent's test context, so the child reports to us, not to a runner above.
    const { NODE_TEST_CONTEXT, ...env } = process.env;
    execFileSync(process.execPath, ['--test', ...files], { stdio: 'pipe', env });
  } catch (e) {
    assert.fail(`node --test failed:\n${e.stdout}${e.stderr}`);
  }
});

test('without a token the dashboard asks for one, and refuses a wrong one', async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(base);
  await page.getByLabel('API token').waitFor();
  await page.getByLabel('API token').fill('ortk_not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#login-error', { hasText: 'refused' }).waitFor();
  assert.equal(await page.locator('#view-fleet').isHidden(), true);
  await ctx.close();
});

test('the fleet view lists every sidecar with status and sync state, and is saved as docs/fleet.png', async () => {
  // Traffic until the picture is taken, so the figures are not all zero in it: a health
  // report's rate covers only the last report interval, and traffic that ended before a
  // slow sign-in finished would show as 0.0 by then.
  let traffic = true;
  const sending = (async () => {
    while (traffic) {
      for (const sc of sidecars) await fetch(`http://127.0.0.1:${sc.inbound}/`).catch(() => {});
      await sleep(50);
    }
  })();
  try {
    await fleetPicture();
  } finally {
    traffic = false;
    await sending;
  }
});

async function fleetPicture() {
  const page = await signedIn(editor);
  const rows = page.locator('#fleet tbody tr');
  await waitFor('three rows', async () => (await rows.count()) === 3);
  for (const pod of ['web-v1-a', 'web-v1-b', 'web-v2-a']) {
    const row = page.locator('#fleet tbody tr', { hasText: pod });
    await row.locator('td', { hasText: 'healthy' }).waitFor();
    await row.locator('td', { hasText: 'in sync' }).waitFor();
  }
  await waitFor('request rates from health reports', async () =>
    (await page.locator('#fleet tbody td.num').allTextContents()).some((t) => t !== '–' && Number(t) > 0));
  mkdirSync(join(root, 'docs'), { recursive: true });
  await page.setViewportSize({ width: 1400, height: 320 });
  await page.screenshot({ path: process.env.FLEET_SCREENSHOT || join(root, 'docs/fleet.png') });
  await page.context().close();
}

test('a rate limit edited in the form is applied by the sidecars and the fleet shows them in sync live', async () => {
  const page = await signedIn(editor);
  let fullFleetReads = 0;
  page.on('request', (r) => { if (fleetRead(r.url())) fullFleetReads++; });
  await openService(page, 'web');
  await rps(page).fill('7');
  await page.locator('#rate-limit [data-action="dry-run"]').click();
  await page.locator('#rate-limit .result', { hasText: 'would send a new snapshot to 3 sidecars' }).waitFor();
  await page.locator('#rate-limit [data-action="save"]').click();
  const saved = await page.locator('#rate-limit .result', { hasText: 'Saved as revision' }).textContent();
  const revision = Number(saved.match(/revision (\d+)/)[1]);
  for (const sc of sidecars) {
    await waitFor(`${sc.pod} applying revision ${revision}`, async () => {
      const d = await configDump(sc);
      return d.revision >= revision && d.rateLimit?.rules?.[0]?.requestsPerSecond === 7;
    });
  }
  const readsBefore = fullFleetReads;
  await page.evaluate(() => { location.hash = '#/fleet'; });
  // The hash change reads the fleet once; after that only events update it.
  await waitFor('every row in sync at the new revision', async () =>
    (await page.locator('#fleet tbody td', { hasText: `in sync (r${revision})` }).count()) === 3);
  assert.ok(fullFleetReads - readsBefore <= 1, `the fleet was re-read ${fullFleetReads - readsBefore} times`);
  await page.context().close();
});

test('an invalid value is refused with the error next to its field, and nothing is stored', async () => {
  const page = await signedIn(editor);
  await openService(page, 'web');
  const before = (await apiGet('/revisions')).body[0].revision;
  await rps(page).fill('-5');
  await page.locator('#rate-limit [data-action="save"]').click();
  const err = page.locator('#rate-limit [data-field="rules[0].requestsPerSecond"] + .field-error');
  await err.waitFor();
  assert.match(await err.textContent(), /one request an hour/);
  assert.equal(await rps(page).getAttribute('aria-invalid'), 'true');
  assert.equal((await apiGet('/revisions')).body[0].revision, before);
  await page.context().close();
});

test('two sessions editing the same policy: the second save is refused as stale and its edit kept', async () => {
  const a = await signedIn(editor);
  const b = await signedIn(editor);
  await openService(a, 'web');
  await openService(b, 'web');
  await rps(a).fill('8');
  await a.locator('#rate-limit [data-action="save"]').click();
  await a.locator('#rate-limit .result', { hasText: 'Saved as revision' }).waitFor();
  await rps(b).fill('9');
  await b.locator('#rate-limit [data-action="save"]').click();
  await b.locator('#rate-limit .result', { hasText: 'someone else changed this rate-limit policy' }).waitFor();
  assert.equal(await rps(b).inputValue(), '9', 'the refused edit is still in the form');
  const stored = (await apiGet('/services/web/policies/rate-limit')).body;
  assert.equal(stored.document.rules[0].requestsPerSecond, 8, 'the first save stands');
  await a.context().close();
  await b.context().close();
});

test('the canary slider splits the default route and a revert from history undoes it', async () => {
  const page = await signedIn(editor);
  await openService(page, 'web');
  await page.locator('#canary-stable').selectOption('v1');
  await page.locator('#canary-subset').selectOption('v2');
  await page.locator('#canary-weight').fill('25');
  await page.locator('#canary-output', { hasText: 'v2: 25%' }).waitFor();
  await page.locator('#routing [data-action="save"]').click();
  const saved = await page.locator('#routing .result', { hasText: 'Saved as revision' }).textContent();
  const revision = Number(saved.match(/revision (\d+)/)[1]);
  const routing = (await apiGet('/services/web/policies/routing')).body.document;
  assert.deepEqual(routing.routes.at(-1).backends, [{ subset: 'v1', weight: 75 }, { subset: 'v2', weight: 25 }]);

  await page.evaluate(() => { location.hash = '#/history'; });
  const row = page.locator(`#history tr[data-revision="${revision}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /alice/);
  await row.getByRole('button', { name: `Diff of revision ${revision}` }).click();
  await page.locator('#diff .add', { hasText: '"weight": 25' }).first().waitFor();
  page.once('dialog', (d) => d.accept());
  await row.getByRole('button', { name: `Revert revision ${revision}` }).click();
  await page.locator('#banner', { hasText: `Reverted revision ${revision}` }).waitFor();
  assert.equal((await apiGet('/services/web/policies/routing')).status, 404, 'the routing policy did not exist before');
  // Propagation figures appear in the history once the sidecars ACK.
  await waitFor('propagation in the history', async () => {
    await page.evaluate(() => { location.hash = '#/fleet'; location.hash = '#/history'; });
    return /3 applied/.test(await page.locator(`#history tr[data-revision="${revision}"] .propagation`).textContent());
  });
  await page.context().close();
});

test('a logging policy edited in the form: an http sink without a URL is refused next to the URL field, then applied', async () => {
  // A collector that accepts every batch, so the sidecars ship instead of buffering.
  const collector = createHttpServer((req, res) => { req.resume(); req.on('end', () => res.end()); });
  await new Promise((res) => collector.listen(0, '127.0.0.1', res));
  const url = `http://127.0.0.1:${collector.address().port}/ingest`;
  const page = await signedIn(editor);
  await openService(page, 'web');
  const ed = page.locator('#logging');
  await ed.locator('.result', { hasText: /revision|No logging/ }).waitFor();
  const before = (await apiGet('/revisions')).body[0].revision;
  const urlField = ed.locator('[data-field="sink.url"]');
  assert.equal(await urlField.isVisible(), false, 'a stdout sink has no URL field');
  await ed.locator('[data-field="sink.type"]').selectOption('http');
  await ed.locator('[data-field="accessLog.redactHeaders"]').fill('authorization, cookie');
  await ed.getByRole('button', { name: 'Add app log' }).click();
  await ed.locator('[data-field="appLogs[0].path"]').fill('/var/log/app/*.log');
  await ed.locator('[data-field="appLogs[0].parser"]').selectOption('json');
  await ed.locator('[data-action="save"]').click();
  const err = ed.locator('[data-field="sink.url"] + .field-error');
  await err.waitFor();
  assert.match(await err.textContent(), /URL is required/);
  assert.equal(await urlField.getAttribute('aria-invalid'), 'true');
  assert.equal((await apiGet('/revisions')).body[0].revision, before, 'nothing was stored');

  // The raw view shows the form's edits, and an edit there comes back to the form.
  await ed.getByRole('button', { name: 'Edit as JSON' }).click();
  const raw = JSON.parse(await ed.locator('#logging-raw').inputValue());
  assert.deepEqual(raw.accessLog.redactHeaders, ['authorization', 'cookie']);
  assert.deepEqual(raw.appLogs, [{ path: '/var/log/app/*.log', parser: 'json' }]);
  assert.equal(raw.sink.type, 'http');
  raw.sink.url = url;
  await ed.locator('#logging-raw').fill(JSON.stringify(raw, null, 2));
  await ed.getByRole('button', { name: 'Edit as form' }).click();
  assert.equal(await urlField.inputValue(), url);
  await ed.locator('[data-field="sink.batchSize"]').fill('50');

  await ed.locator('[data-action="dry-run"]').click();
  await ed.locator('.result', { hasText: 'would send a new snapshot to 3 sidecars' }).waitFor();
  assert.equal(await ed.locator('.field-error').count(), 0, 'the errors went with the fix');
  await ed.locator('[data-action="save"]').click();
  const saved = await ed.locator('.result', { hasText: 'Saved as revision' }).textContent();
  const revision = Number(saved.match(/revision (\d+)/)[1]);
  for (const sc of sidecars) {
    await waitFor(`${sc.pod} applying the logging policy of revision ${revision}`, async () => {
      const d = await configDump(sc);
      return d.revision >= revision && d.logging?.sink?.url === url && d.logging.sink.batchSize === 50 &&
        d.logging.appLogs?.[0]?.parser === 'json';
    });
  }
  await page.context().close();
  // The later tests expect no log shipping: remove the policy before the collector goes.
  const del = await fetch(`${base}/api/v1/services/web/policies/logging`, { method: 'DELETE', headers: { Authorization: `Bearer ${BOOT}` } });
  assert.equal(del.status, 200);
  collector.closeAllConnections();
  collector.close();
});

test("the service page shows each instance's identity and certificate expiry, and the mTLS mode", async () => {
  const page = await signedIn(BOOT);
  await openService(page, 'web');
  const rows = page.locator('#identity tbody tr');
  await waitFor('three instances', async () => (await rows.count()) === 3);
  const api = (await apiGet('/services/web')).body;
  for (const sc of api.sidecars) {
    const row = page.locator(`#identity tr[data-pod="${sc.pod}"]`);
    assert.equal(await row.locator('td').nth(2).textContent(), sc.identity || 'none yet (plaintext)');
    assert.match(sc.identity || '', /^spiffe:\/\/outrider\.local\/ns\/default\/svc\/web$/);
  }
  assert.equal(await page.locator('#mtls-mode').getAttribute('data-mode'), api.mtls);
  assert.match(await page.locator('#mtls-mode').textContent(), /permissive/);
  await page.context().close();
});

test('a secret set in the form reaches the sidecars as a file and the page shows only its metadata', async () => {
  const value = 'dash-secret-value-51c7';
  const page = await signedIn(BOOT);
  await openService(page, 'web');
  await page.locator('#secrets-table').waitFor();
  assert.equal(await page.locator('#secret-value').getAttribute('type'), 'password');
  await page.locator('#secret-name').fill('db-password');
  await page.locator('#secret-value').fill(value);
  await page.locator('#secret-save').click();
  await page.locator('#secrets-result', { hasText: 'Set db-password (22 bytes' }).waitFor();
  await page.locator('#secrets-rows tr[data-secret="db-password"]', { hasText: '22 bytes' }).waitFor();
  assert.equal(await page.locator('#secret-value').inputValue(), '');
  assert.ok(!(await page.content()).includes(value), 'the page holds the value');
  for (const sc of sidecars) {
    const file = join(work, sc.pod, 'state', 'secrets', 'db-password');
    await waitFor(`${sc.pod} writing the secret`, async () => existsSync(file) && readFileSync(file, 'utf8') === value);
  }
  await page.locator('#secrets-rows tr[data-secret="db-password"] button', { hasText: 'Delete' }).click();
  await page.locator('#secrets-result', { hasText: 'Deleted db-password' }).waitFor();
  await page.context().close();

  // An editor may read the metadata but not set a secret.
  const editing = await signedIn(editor);
  await openService(editing, 'web');
  await editing.locator('#secret-name').fill('other');
  await editing.locator('#secret-value').fill(value);
  await editing.locator('#secret-save').click();
  await editing.locator('#secrets-result', { hasText: 'Not allowed' }).waitFor();
  await editing.context().close();
});

test('a viewer sees everything and can change nothing', async () => {
  const page = await signedIn(viewer);
  await waitFor('the fleet', async () => (await page.locator('#fleet tbody tr').count()) >= 3);
  await openService(page, 'web');
  const before = (await apiGet('/revisions')).body[0].revision;
  await rps(page).fill('1');
  await page.locator('#rate-limit [data-action="save"]').click();
  await page.locator('#rate-limit .result', { hasText: 'Not allowed' }).waitFor();
  assert.equal((await apiGet('/revisions')).body[0].revision, before);
  await page.context().close();
});

// The simulated fleet of the paging test; at least 401, so that two pages of 200 hold
// only its v1 half (LARGE_FLEET overrides it, for a machine too slow to register 2000).
const LARGE_FLEET = Number(process.env.LARGE_FLEET || 2000);

test('with a large fleet the fleet view shows a page, pages on, filters on the server and patches only shown rows', async () => {
  const n = LARGE_FLEET;
  const lastPod = `many-${String(n - 1).padStart(4, '0')}`;
  const sim = start('fleet-sim', 'outrider-fleet-sim', ['--control-plane', grpc, '--service', 'many', '--count', String(n)]);
  await waitFor(`${n} simulated sidecars`, async () => {
    const { body } = await apiGet('/sidecars?service=many&status=healthy&limit=10000');
    return body.length === n;
  }, 90_000);
  const page = await signedIn(viewer);
  const reads = [];
  page.on('request', (r) => { if (r.url().includes('/api/v1/sidecars')) reads.push(new URL(r.url()).searchParams); });
  const rows = page.locator('#fleet tbody tr');
  const row = (id) => page.locator(`#fleet tbody tr[data-id="${id}"]`);
  // Listing order is service, version, pod: the v1 half of `many` comes first.
  await waitFor('the first page of 200 rows', async () => (await rows.count()) === 200);
  await row('sim/many-0398').waitFor();
  assert.match(await page.locator('#fleet-count').textContent(), /first 200 sidecars/);
  await page.getByRole('button', { name: 'Show more' }).click();
  await waitFor('the second page', async () => (await rows.count()) === 400);
  await row('sim/many-0400').waitFor();
  assert.ok(reads.some((p) => p.get('after') && p.get('limit') === '200'), 'the second page was asked for after the first');

  // Events patch shown rows and add none: the sidecars beyond the second page stay out.
  const readsBefore = reads.length;
  const cell = row('sim/many-0002').locator('td').nth(8);
  const first = await cell.textContent();
  await waitFor('a shown row to change through events', async () => (await cell.textContent()) !== first, 15_000);
  assert.equal(await rows.count(), 400);
  // A membership change may re-read its service's shown rows; nothing re-reads the fleet.
  assert.ok(reads.slice(readsBefore).every((p) => p.has('service')), 'live updates re-read the fleet');

  // Filters are answered by the server, not by hiding rows.
  await page.locator('#fleet-service').selectOption('web');
  await waitFor('web only', async () => (await rows.count()) === 3);
  assert.equal(reads.at(-1).get('service'), 'web');
  await page.locator('#fleet-service').selectOption('');
  await page.locator('#fleet-filter').fill(lastPod.toUpperCase());
  await waitFor('one row by text', async () => (await rows.count()) === 1);
  await row(`sim/${lastPod}`).waitFor();
  assert.equal(reads.at(-1).get('q'), lastPod.toUpperCase());
  await page.locator('#fleet-filter').fill('');
  await page.locator('#fleet-service').selectOption('web');
  await page.locator('#fleet-status').selectOption('healthy');
  await waitFor('the healthy web sidecars', async () => (await rows.count()) === 3 &&
    reads.at(-1).get('status') === 'healthy' && !reads.at(-1).has('q'));
  sim.kill('SIGTERM');
  await waitFor('the simulated sidecars disconnected', async () =>
    (await apiGet('/sidecars?service=many&status=disconnected&limit=10000')).body.length === n, 30_000);
  await page.locator('#fleet-service').selectOption('');
  await page.locator('#fleet-status').selectOption('disconnected');
  await waitFor('a page of the stopped ones', async () => (await rows.count()) === 200);
  assert.equal(reads.at(-1).get('status'), 'disconnected');
  assert.deepEqual([...new Set(await page.locator('#fleet tbody td.st-disconnected').allTextContents())], ['disconnected']);
  assert.equal(await page.locator('#fleet tbody td.st-disconnected').count(), 200);
  await page.context().close();
});

test('during an automated rollout the canary slider is disabled and says who drives the service', async () => {
  const start = await fetch(`${base}/api/v1/services/web/canary`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${editor}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ subset: 'v2', stable: 'v1', steps: [10, 100], interval: '1h' }),
  });
  assert.equal(start.status, 201, await start.text());
  const page = await signedIn(editor);
  await openService(page, 'web');
  const driver = page.locator('#canary-driver');
  await driver.filter({ hasText: 'step 1 of 2 (10%)' }).waitFor();
  const text = await driver.textContent();
  assert.match(text, /automated rollout of v2/);
  assert.match(text, /started by alice/);
  assert.ok(await page.locator('#canary-weight').isDisabled(), 'the slider is disabled');
  assert.ok(await page.locator('#routing [data-action="save"]').isDisabled(), 'so is saving');
  await waitFor("the rollout's weight in the slider", async () => (await page.locator('#canary-weight').inputValue()) === '10');

  // Aborting hands the weights back: the slider is enabled again, the note gone.
  const abort = await fetch(`${base}/api/v1/services/web/canary`, { method: 'DELETE', headers: { Authorization: `Bearer ${editor}` } });
  assert.equal(abort.status, 200);
  await waitFor('the slider enabled again', async () => !(await page.locator('#canary-weight').isDisabled()));
  assert.ok(await driver.isHidden());
  await page.context().close();
});
