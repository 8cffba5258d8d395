// How figures read on screen: ages, numbers, percentages and propagation summaries,
// shared by the fleet, the service page and the history.

export const ago = (iso) => {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};

export const num = (v, d = 1) => (typeof v === 'number' && isFinite(v) ? v.toFixed(d) : '–');

export const pct = (v) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(1)}%`);

export function propagationText(p) {
  if (!p || (p.applied === 0 && p.pending === 0)) return 'no sidecar connected';
  let t = `${p.applied} applied`;
  if (p.pending) t += `, ${p.pending} pending`;
  if (p.lastAckSeconds !== null && p.lastAckSeconds !== undefined) t += `; last after ${p.lastAckSeconds.toFixed(3)}s`;
  return t;
}
