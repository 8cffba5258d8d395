// Outrider dashboard: boot, sign-in and the hash router. A client of the REST API
// (/api/v1), nothing more; native modules, no build step, embedded by the control plane.
//
// Live updates: `sidecars` events carry the changed rows, patched in place where shown;
// `snapshot`/`membership` events re-read only the affected service, debounced;
// `resync` (the stream fell behind) re-reads the fleet once.

import { api, onUnauthorized } from './api.js';
import { $, banner } from './dom.js';
import * as live from './live.js';
import { saveToken, store } from './state.js';
import * as fleet from './views/fleet.js';
import * as history from './views/history.js';
import * as service from './views/service.js';
import * as services from './views/services.js';

const VIEWS = ['fleet', 'services', 'history'];

function showLogin(msg) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = msg || '';
  $('#token-input').focus();
  live.stop();
}

async function signIn(token) {
  store.set({ token: token || null });
  try {
    await api('GET', '/services');
  } catch (e) {
    if (e.status !== 401) $('#login-error').textContent = `The control plane did not answer: ${e.message}`;
    return false;
  }
  if (token) saveToken(token);
  $('#login').hidden = true;
  $('#logout').hidden = !token;
  $('#who').textContent = token ? 'signed in' : 'open API (no tokens configured)';
  live.listen({ onOpen: readFleet, onResync: readFleet, onChange });
  route();
  return true;
}

const readFleet = () => fleet.load({ keep: true }).catch(() => {});

function onChange(ev) {
  if (ev.type === 'sidecars') fleet.patch(ev.sidecars);
  else if (ev.type === 'snapshot' || ev.type === 'membership') markDirty(ev.service);
}

// Services to re-read, gathered for a moment so a burst of events costs one request each.
const dirty = new Set();
let dirtyTimer = null;
function markDirty(name) {
  dirty.add(name);
  if (dirtyTimer) return;
  dirtyTimer = setTimeout(async () => {
    const names = [...dirty];
    dirty.clear();
    dirtyTimer = null;
    for (const s of names) {
      await fleet.refreshService(s).catch(() => {});
      const { view, service: open } = store.get();
      if (view === 'service' && open === s) service.refreshInstances(s).catch(() => {});
    }
    const { view } = store.get();
    if (view === 'history') history.load().catch(() => {});
    if (view === 'services') services.load().catch(() => {});
  }, 300);
}

async function route() {
  if (!$('#login').hidden) return;
  banner('');
  const hash = location.hash || '#/fleet';
  const parts = hash.slice(2).split('/').map(decodeURIComponent);
  const view = parts[0] === 'services' && parts[1] ? 'service' : VIEWS.includes(parts[0]) ? parts[0] : 'fleet';
  store.set({ view, service: view === 'service' ? parts[1] : store.get().service });
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== `view-${view}`;
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.view === (view === 'service' ? 'services' : view)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    if (view === 'fleet') await fleet.load();
    else if (view === 'services') await services.load();
    else if (view === 'service') await service.show(parts[1]);
    else if (view === 'history') await history.show();
  } catch (e) {
    if (e.status !== 401) banner(e.message);
  }
}

// The live indicator follows the store; it reads "offline" until the first connection.
store.subscribe((s, prev) => {
  if (s.live === prev.live || s.live === null) return;
  const l = $('#live');
  l.textContent = s.live ? 'live' : 'reconnecting…';
  l.className = s.live ? 'live on' : 'live';
});

function boot() {
  onUnauthorized(showLogin);
  fleet.init();
  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = $('#token-input').value.trim();
    if (!(await signIn(t))) $('#login-error').textContent ||= 'That token was refused.';
  });
  $('#logout').addEventListener('click', () => {
    saveToken(null);
    showLogin('Signed out.');
  });
  window.addEventListener('hashchange', route);
  signIn(store.get().token).then((ok) => {
    if (!ok) showLogin();
  });
}

// A module runs once the document is parsed, so the elements are there already.
boot();
