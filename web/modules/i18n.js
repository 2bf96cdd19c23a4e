// Texts and formats in the page's language (French by default, English on demand).
import fr from '../i18n/fr.json';
import en from '../i18n/en.json';

export const TEXTS = { fr, en };
export const LANGUAGES = Object.keys(TEXTS);

let lang = 'fr';
let timeZone = 'Europe/Paris';
const listeners = [];

export function currentLang() {
  return lang;
}

export function setTimeZone(zone) {
  timeZone = zone || timeZone;
}

export function zone() {
  return timeZone;
}

/** The text for `key` with `{name}` placeholders filled from `vars`. */
export function t(key, vars = {}) {
  const text = TEXTS[lang][key] ?? TEXTS.fr[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

/** Fills every `data-i18n` element's text and `data-i18n-attr="attr:key,..."` attributes. */
export function translateDocument(root = document) {
  root.querySelectorAll('[data-i18n]').forEach((el) => {
    el.textContent = t(el.dataset.i18n);
  });
  root.querySelectorAll('[data-i18n-attr]').forEach((el) => {
    for (const pair of el.dataset.i18nAttr.split(',')) {
      const [attr, key] = pair.split(':');
      el.setAttribute(attr.trim(), t(key.trim()));
    }
  });
}

export function setLang(next) {
  lang = LANGUAGES.includes(next) ? next : 'fr';
  document.documentElement.lang = lang;
  document.title = t('title');
  translateDocument();
  listeners.forEach((fn) => fn(lang));
}

/** Calls `fn(lang)` after every change of language. */
export function onLangChange(fn) {
  listeners.push(fn);
}

const locale = () => (lang === 'en' ? 'en-GB' : 'fr-FR');

export function formatNumber(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return t('none');
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits, minimumFractionDigits: digits }).format(value);
}

export function formatPercent(share, digits = 1) {
  if (share === null || share === undefined || Number.isNaN(share)) return t('none');
  return new Intl.NumberFormat(locale(), {
    style: 'percent', maximumFractionDigits: digits, minimumFractionDigits: digits,
  }).format(share);
}

/** A date-time (ISO string or Date) in the département's time zone. */
export function formatDateTime(value) {
  if (!value) return t('none');
  const d = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeStyle: 'short', timeZone }).format(d);
}

export function formatTime(d) {
  return new Intl.DateTimeFormat(locale(), { timeStyle: 'short', timeZone }).format(d);
}

/**
 * The local calendar day (YYYY-MM-DD in the département's time zone) of an instant,
 * moved by `shiftMs` first: `localDay(last_data, -1)` is the last day with data, since
 * `last_data` is the end of the last interval.
 */
export function localDay(value, shiftMs = 0) {
  if (!value) return null;
  const d = new Date(new Date(value).getTime() + shiftMs);
  if (Number.isNaN(d.getTime())) return String(value).slice(0, 10);
  return new Intl.DateTimeFormat('en-CA', { year: 'numeric', month: '2-digit', day: '2-digit', timeZone }).format(d);
}

/** A calendar date given as YYYY-MM-DD (no time zone shift). */
export function formatDay(isoDay) {
  if (!isoDay) return t('none');
  const d = new Date(`${String(isoDay).slice(0, 10)}T00:00:00Z`);
  if (Number.isNaN(d.getTime())) return String(isoDay);
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeZone: 'UTC' }).format(d);
}

/** A period of a series as shown to people, according to the step. */
export function formatPeriod(period, step) {
  if (step === 'hour') return formatDateTime(period);
  const d = new Date(`${String(period).slice(0, 10)}T00:00:00Z`);
  if (Number.isNaN(d.getTime())) return String(period);
  const options = { timeZone: 'UTC' };
  if (step === 'year') options.year = 'numeric';
  else if (step === 'month') Object.assign(options, { year: 'numeric', month: 'long' });
  else Object.assign(options, { weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' });
  return new Intl.DateTimeFormat(locale(), options).format(d);
}

/** "12 min", "3 h", "2 j" from seconds. */
export function formatAge(seconds) {
  if (seconds === null || seconds === undefined) return t('none');
  const minutes = Math.max(0, Math.round(seconds / 60));
  if (minutes < 120) return t('age.minutes', { n: minutes });
  const hours = Math.round(minutes / 60);
  if (hours < 48) return t('age.hours', { n: hours });
  return t('age.days', { n: Math.round(hours / 24) });
}
