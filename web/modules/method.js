// The licence and method that every API document carries, shown under the chart and the table.
import { formatPercent, t } from './i18n.js';

/** `{name, url}` (or a plain string) as a link or text node. */
export function licenceNode(licence) {
  if (!licence) return null;
  const name = typeof licence === 'object' ? licence.name || licence.url : String(licence);
  const url = typeof licence === 'object' ? licence.url : null;
  if (!url || !/^https?:\/\//.test(url)) return document.createTextNode(name);
  const a = document.createElement('a');
  a.href = url;
  a.rel = 'license noopener';
  a.textContent = name;
  return a;
}

function describe(value) {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const dl = document.createElement('dl');
    for (const [k, v] of Object.entries(value)) {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.append(describe(v));
      dl.append(dt, dd);
    }
    return dl;
  }
  return document.createTextNode(Array.isArray(value) ? value.join(', ') : String(value));
}

/** Fills `el` with a one-line summary, the licence, and the API's method in a disclosure. */
export function methodNote(el, doc) {
  const method = doc && typeof doc.method === 'object' && doc.method ? doc.method : null;
  const threshold = method && typeof method.coverage_threshold === 'number' ? method.coverage_threshold
    : (typeof doc.threshold === 'number' ? doc.threshold : null);
  const p = document.createElement('p');
  p.append(t('method.summary'));
  if (threshold !== null) p.append(' ', t('method.threshold', { threshold: formatPercent(threshold, 0) }));
  const licence = licenceNode(doc && doc.licence);
  if (licence) {
    const [before, after] = t('footer.licence', { licence: '\u0000' }).split('\u0000');
    p.append(' ', before, licence, after);
  }
  const children = [p];
  if (method) {
    const details = document.createElement('details');
    const summary = document.createElement('summary');
    summary.textContent = t('method.details');
    details.append(summary, describe(method));
    children.push(details);
  }
  el.replaceChildren(...children);
  el.hidden = false;
}
