// The annual table of every site: year selector, sorting, filter and CSV export.
import { describeError, fetchJSON, showMessage } from './api.js';
import { methodNote } from './method.js';
import {
  currentLang, formatNumber, formatPercent, t,
} from './i18n.js';

const $ = (id) => document.getElementById(id);

export const COLUMNS = [
  { key: 'name', label: 'annual.col.site', type: 'text' },
  { key: 'road', label: 'annual.col.road', type: 'text' },
  { key: 'tmja', label: 'annual.col.tmja', type: 'number', format: (v) => formatNumber(v) },
  { key: 'tmjo', label: 'annual.col.tmjo', type: 'number', format: (v) => formatNumber(v) },
  { key: 'heavy_share', label: 'annual.col.heavy', type: 'number', format: (v) => formatPercent(v) },
  { key: 'days_valid', label: 'annual.col.valid', type: 'number', format: (v) => formatNumber(v) },
  { key: 'days_excluded', label: 'annual.col.excluded', type: 'number', format: (v) => formatNumber(v) },
  { key: 'mean_coverage', label: 'annual.col.coverage', type: 'number', format: (v) => formatPercent(v) },
];

// The filter rule, the same as the server's for `q`: NFD, accents U+0300-U+036F removed, lower case.
function fold(text) {
  return String(text ?? '').normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase();
}

/** Compares two rows on `column`; empty values always last, whatever the direction. */
export function compareRows(a, b, column, direction) {
  const va = a[column.key];
  const vb = b[column.key];
  const emptyA = va === null || va === undefined || va === '';
  const emptyB = vb === null || vb === undefined || vb === '';
  if (emptyA || emptyB) return emptyA === emptyB ? 0 : (emptyA ? 1 : -1);
  const order = column.type === 'number'
    ? va - vb
    : String(va).localeCompare(String(vb), currentLang(), { numeric: true, sensitivity: 'base' });
  return direction === 'ascending' ? order : -order;
}

export class AnnualTable {
  constructor({ onOpenSite, onYearChange }) {
    this.onOpenSite = onOpenSite;
    this.onYearChange = onYearChange;
    this.doc = null;
    this.error = null;
    this.year = null;
    this.sort = { key: 'name', direction: 'ascending' };
    this.token = 0;
    $('annual-year').addEventListener('change', () => this.load(Number($('annual-year').value)));
    $('annual-filter').addEventListener('input', () => {
      this.updateLinks();
      this.renderBody();
    });
  }

  setYears(years, selected) {
    const select = $('annual-year');
    select.replaceChildren(...years.map((y) => {
      const o = document.createElement('option');
      o.value = String(y);
      o.textContent = String(y);
      o.selected = y === selected;
      return o;
    }));
  }

  async load(year) {
    this.year = year;
    $('annual-year').value = String(year);
    this.updateLinks();
    this.onYearChange(year);
    const token = ++this.token;
    $('annual-status').textContent = t('annual.loading');
    $('annual').setAttribute('aria-busy', 'true');
    try {
      const doc = await fetchJSON(`/api/v1/annual?${new URLSearchParams({ year: String(year) })}`);
      if (token !== this.token) return;
      this.doc = doc;
      this.error = null;
    } catch (err) {
      if (token !== this.token) return;
      this.doc = null;
      this.error = err;
    }
    $('annual').removeAttribute('aria-busy');
    this.render();
  }

  /** The downloads hold the rows the table shows: the filter goes with them as `q` (the server applies the same rule). */
  updateLinks() {
    const year = String(this.year);
    const filter = $('annual-filter').value.trim();
    const href = (params) => `/api/v1/annual?${new URLSearchParams({ year, ...params, ...(filter ? { q: filter } : {}) })}`;
    const csv = $('annual-csv');
    csv.href = href({ format: 'csv' });
    csv.setAttribute('download', `roadfeed-annual-${year}.csv`);
    const fr = $('annual-csv-fr');
    fr.href = href({ format: 'csv', dialect: 'fr' });
    fr.setAttribute('download', `roadfeed-annual-${year}_fr.csv`);
    const parquet = $('annual-parquet');
    parquet.href = href({ format: 'parquet' });
    parquet.setAttribute('download', `roadfeed-annual-${year}.parquet`);
  }

  render() {
    this.renderHead();
    if (this.error) {
      showMessage($('annual-message'), describeError(this.error));
      $('annual-caption').textContent = '';
      $('annual-status').textContent = '';
      $('annual-table').querySelector('tbody').replaceChildren();
      return;
    }
    showMessage($('annual-message'), null);
    if (!this.doc) return;
    $('annual-caption').textContent = t('annual.caption', {
      year: this.doc.year ?? this.year,
      threshold: formatPercent(this.doc.threshold ?? (this.doc.method || {}).coverage_threshold ?? 0.95, 0),
    });
    methodNote($('annual-method'), this.doc);
    this.renderBody();
  }

  renderHead() {
    const tr = $('annual-table').querySelector('thead tr');
    tr.replaceChildren(...COLUMNS.map((column) => {
      const th = document.createElement('th');
      th.scope = 'col';
      th.dataset.key = column.key;
      if (column.type === 'number') th.className = 'num';
      const sorted = this.sort.key === column.key;
      th.setAttribute('aria-sort', sorted ? this.sort.direction : 'none');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'sort-button';
      button.title = t('annual.sort', { column: t(column.label) });
      const label = document.createElement('span');
      label.textContent = t(column.label);
      const arrow = document.createElement('span');
      arrow.className = 'sort-arrow';
      arrow.setAttribute('aria-hidden', 'true');
      arrow.textContent = sorted ? (this.sort.direction === 'ascending' ? '▲' : '▼') : '↕';
      button.append(label, arrow);
      button.addEventListener('click', () => this.sortBy(column.key));
      th.append(button);
      return th;
    }));
  }

  sortBy(key) {
    const column = COLUMNS.find((c) => c.key === key);
    if (this.sort.key === key) {
      this.sort.direction = this.sort.direction === 'ascending' ? 'descending' : 'ascending';
    } else {
      this.sort = { key, direction: column.type === 'number' ? 'descending' : 'ascending' };
    }
    this.renderHead();
    this.renderBody();
    const button = $('annual-table').querySelector(`th[data-key="${key}"] button`);
    if (button) button.focus();
  }

  renderBody() {
    const tbody = $('annual-table').querySelector('tbody');
    if (!this.doc) {
      tbody.replaceChildren();
      return;
    }
    const rows = this.doc.rows || [];
    const filter = fold($('annual-filter').value.trim());
    const shown = rows.filter((r) => !filter || fold(`${r.name ?? ''} ${r.road ?? ''} ${r.external_id}`).includes(filter));
    const column = COLUMNS.find((c) => c.key === this.sort.key);
    shown.sort((a, b) => compareRows(a, b, column, this.sort.direction) || (a.site_id - b.site_id));
    tbody.replaceChildren(...shown.map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.siteId = String(r.site_id);
      for (const c of COLUMNS) {
        const cell = document.createElement(c.key === 'name' ? 'th' : 'td');
        if (c.key === 'name') {
          cell.scope = 'row';
          const button = document.createElement('button');
          button.type = 'button';
          button.className = 'link-button';
          button.textContent = r.name || r.external_id;
          button.setAttribute('aria-label', t('annual.open', { name: r.name || r.external_id }));
          button.addEventListener('click', () => this.onOpenSite(r.site_id, true));
          cell.append(button);
        } else {
          cell.textContent = c.format ? c.format(r[c.key]) : (r[c.key] ?? t('none'));
          if (c.type === 'number') cell.className = 'num';
        }
        cell.dataset.key = c.key;
        if (r[c.key] !== null && r[c.key] !== undefined) cell.dataset.value = String(r[c.key]);
        tr.append(cell);
      }
      return tr;
    }));
    const status = $('annual-status');
    if (rows.length === 0) status.textContent = t('annual.empty', { year: this.doc.year ?? this.year });
    else if (shown.length === 0) status.textContent = t('annual.nomatch');
    else status.textContent = t('annual.count', { shown: formatNumber(shown.length), total: formatNumber(rows.length) });
  }

  relabel() {
    this.render();
  }
}
