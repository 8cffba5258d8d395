// The dashboard's shared state in one small store: the session token, the current
// view and service, and whether the event stream is live. Views keep their own rows.
//
// `set` merges a patch and tells subscribers what changed, so the page header follows
// the store instead of every module writing to it.

const TOKEN_KEY = 'outrider.token';

export function createStore(initial) {
  let current = { ...initial };
  const subscribers = new Set();
  return {
    get: () => current,
    set(patch) {
      const prev = current;
      current = { ...current, ...patch };
      for (const fn of subscribers) fn(current, prev);
    },
    subscribe(fn) {
      subscribers.add(fn);
      return () => subscribers.delete(fn);
    },
  };
}

export const store = createStore({
  token: sessionStorage.getItem(TOKEN_KEY),
  view: null, // 'fleet' | 'services' | 'service' | 'history'
  service: null, // the service whose page is open
  live: null, // null before the first connection, then true or false
});

// The token lives in this tab's session storage only, as the sign-in form says.
export function saveToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  store.set({ token: token || null });
}
