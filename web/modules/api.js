// Talking to the roadfeed HTTP API: JSON documents, and errors people can read.
import { currentLang, t } from './i18n.js';

// In French, what each parameter accepts and what each error code means: the API's
// `expected` and `detail` are English and are not shown.
const FRENCH_EXPECTED = {
  from: 'une date AAAA-MM-JJ (ou date et heure), avant « to », la période ne dépassant pas 93 jours par heure, 3 ans par jour ou 30 ans par mois ou par an',
  to: 'une date AAAA-MM-JJ (ou date et heure) après « from », la période ne dépassant pas 93 jours par heure, 3 ans par jour ou 30 ans par mois ou par an',
  step: 'hour, day, month ou year',
  direction: 'une des directions de ce site',
  vehicle_class: 'une des classes de véhicules de ce site (all, light ou heavy)',
  year: 'une année de 1900 à 2199',
  threshold: 'un nombre de 0 à 1',
  q: 'un texte sans caractère NUL',
  format: 'json, csv ou parquet',
  dialect: 'standard ou fr',
  id: 'l\'identifiant d\'un site existant',
};
const FRENCH_ERRORS = {
  not_found: 'Introuvable.',
  query_timeout: 'La requête a pris trop de temps : réduisez la période puis réessayez.',
  busy: 'Le serveur est occupé : réessayez dans un instant.',
  database_unavailable: 'Les données sont momentanément indisponibles : réessayez dans un instant.',
  rate_limited: 'Trop de requêtes : patientez un instant puis réessayez.',
};

function frenchError(err, body) {
  const lines = [];
  if (body.parameter) {
    const expected = FRENCH_EXPECTED[body.parameter] ?? 'une autre valeur';
    lines.push(t('error.parameter', { parameter: body.parameter, value: body.value ?? '', expected }));
  } else {
    lines.push(t('error.http', { status: err.status }));
    if (FRENCH_ERRORS[body.error]) lines.push(FRENCH_ERRORS[body.error]);
  }
  return lines;
}

/** An answer that is not the document asked for: an HTTP error or no answer at all. */
export class ApiError extends Error {
  constructor(status, body, url) {
    super(`HTTP ${status} for ${url}`);
    this.status = status; // 0: no answer
    this.body = body; // the API's {"error","parameter","value","expected","detail"} when it sent one
    this.url = url;
  }
}

export async function fetchJSON(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: 'application/json, application/geo+json' } });
  } catch (err) {
    throw new ApiError(0, null, url);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok || body === null) throw new ApiError(response.status, body, url);
  return body;
}

/** The sentences that explain an error, in the current language. */
export function describeError(err) {
  if (!(err instanceof ApiError)) return [t('error.http', { status: '?' }), String(err && err.message ? err.message : err)];
  if (err.status === 0) return [t('error.network')];
  const body = err.body && typeof err.body === 'object' ? err.body : {};
  if (currentLang() === 'fr') return frenchError(err, body);
  const lines = [];
  if (body.parameter) {
    const expected = Array.isArray(body.expected) ? body.expected.join(', ') : body.expected ?? '';
    lines.push(t('error.parameter', { parameter: body.parameter, value: body.value ?? '', expected }));
  } else {
    lines.push(t('error.http', { status: err.status }));
  }
  if (body.detail) lines.push(t('error.detail', { detail: body.detail }));
  else if (body.error && !body.parameter) lines.push(t('error.detail', { detail: body.error }));
  return lines;
}

/** Shows `err` (or plain lines) in an element with role="alert"; `null` hides it. */
export function showMessage(el, lines, kind = 'error') {
  if (!lines || lines.length === 0) {
    el.hidden = true;
    el.replaceChildren();
    return;
  }
  el.className = `message ${kind}`;
  el.replaceChildren(...lines.map((line) => {
    const p = document.createElement('p');
    p.textContent = line;
    return p;
  }));
  el.hidden = false;
}

/** Every site of `/api/v1/sites`, following `next_cursor`. */
export async function fetchAllSites() {
  const sites = [];
  let cursor = null;
  let meta = null;
  for (let page = 0; page < 1000; page += 1) {
    const params = new URLSearchParams({ limit: '500' });
    if (cursor) params.set('cursor', cursor);
    const doc = await fetchJSON(`/api/v1/sites?${params}`);
    meta = meta || { licence: doc.licence, method: doc.method };
    sites.push(...(doc.sites || []));
    cursor = doc.next_cursor;
    if (!cursor) break;
  }
  return { sites, meta };
}

function nextDay(day) {
  const d = new Date(`${day}T00:00:00Z`);
  if (Number.isNaN(d.getTime())) return day;
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}

/**
 * The API query of a site's counts, without `format`. The page shows an inclusive
 * period ("from 1 to 31 July"); the API's `to` is exclusive, so it gets the next day.
 */
export function countsQuery({ from, to, step, direction, vehicleClass }) {
  const params = new URLSearchParams({ from, to: to ? nextDay(to) : to, step });
  if (direction) params.set('direction', direction);
  if (vehicleClass && vehicleClass !== 'all') params.set('vehicle_class', vehicleClass);
  return params;
}

export function countsUrl(siteId, query, format) {
  const params = new URLSearchParams(query);
  if (format) params.set('format', format);
  return `/api/v1/sites/${encodeURIComponent(siteId)}/counts?${params}`;
}
