// A site's counts: the period/step/direction/class form, the chart (counts as bars,
// coverage as a line, low-coverage periods shaded), a summary, the data as a table
// and download links for exactly what the chart shows.
import uPlot from 'uplot';
import {
  ApiError, countsQuery, countsUrl, describeError, fetchJSON, showMessage,
} from './api.js';
import {
  currentLang, formatDay, formatNumber, formatPercent, formatPeriod, localDay, t, zone,
} from './i18n.js';
import { methodNote } from './method.js';

export const STEPS = ['hour', 'day', 'month', 'year'];
const MAX_TABLE_ROWS = 2000;
const HALF_STEP = { hour: 1800, day: 43200, month: 15 * 86400, year: 182 * 86400 };
const COLOURS = {
  count: '#1d4ed8', countFill: 'rgba(29, 78, 216, 0.80)',
  low: '#b45309', lowFill: 'rgba(217, 119, 6, 0.85)',
  lowBand: 'rgba(220, 38, 38, 0.10)',
  coverage: '#334155',
};

const $ = (id) => document.getElementById(id);

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function addDays(day, n) {
  const d = new Date(`${day}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return isoDay(d);
}

/** Seconds since the epoch for a period: an instant (hour step) or a calendar date (UTC midnight). */
export function periodSeconds(period, step) {
  if (step === 'hour') return Date.parse(period) / 1000;
  const [y, m, d] = String(period).slice(0, 10).split('-').map(Number);
  return Date.UTC(y, (m || 1) - 1, d || 1) / 1000;
}

function option(value, label, selected) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = label;
  if (selected) o.selected = true;
  return o;
}

/** Axis labels that suit the spacing uPlot chose: hours with the day under the first of each day. */
function tickFormatter(step) {
  const locale = currentLang() === 'en' ? 'en-GB' : 'fr-FR';
  const timeZone = step === 'hour' ? zone() : 'UTC';
  const day = new Intl.DateTimeFormat(locale, { day: 'numeric', month: 'short', timeZone });
  const hour = new Intl.DateTimeFormat(locale, { hour: '2-digit', minute: '2-digit', timeZone });
  const month = new Intl.DateTimeFormat(locale, { month: 'short', year: 'numeric', timeZone });
  const year = new Intl.DateTimeFormat(locale, { year: 'numeric', timeZone });
  return (u, splits, axisIdx, space, incr) => {
    let previousDay = null;
    return splits.map((v) => {
      if (v === null || v === undefined) return '';
      const d = new Date(v * 1000);
      if (step === 'year' || incr >= 360 * 86400) return year.format(d);
      if (step === 'month' || incr >= 28 * 86400) return month.format(d);
      if (incr >= 86400) return day.format(d);
      const dayText = day.format(d);
      const label = dayText !== previousDay ? `${hour.format(d)}\n${dayText}` : hour.format(d);
      previousDay = dayText;
      return label;
    });
  };
}

/** Runs of consecutive low-coverage periods, as [first index, last index]. */
export function lowRuns(points, isLow) {
  const runs = [];
  points.forEach((p, i) => {
    if (!isLow(p)) return;
    const last = runs[runs.length - 1];
    if (last && last[1] === i - 1) last[1] = i;
    else runs.push([i, i]);
  });
  return runs;
}

/** A direction as the source names it ("vers Béziers (E)"), else its code. */
export function directionLabel(site, code) {
  const name = (site.direction_names || {})[code];
  return name ? `${name} (${code})` : code;
}

export class CountsPanel {
  constructor({ threshold, onQueryChange }) {
    this.threshold = threshold;
    this.onQueryChange = onQueryChange;
    this.site = null;
    this.doc = null;
    this.heavy = null;
    this.plot = null;
    this.token = 0;
    this.debounce = null;
    this.form = $('counts-form');
    this.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.load();
    });
    for (const id of ['f-step', 'f-direction', 'f-class']) {
      $(id).addEventListener('change', () => this.loadSoon());
    }
    $('f-month').addEventListener('change', () => {
      const month = $('f-month').value; // YYYY-MM
      if (!/^\d{4}-\d{2}$/.test(month)) return;
      const [y, m] = month.split('-').map(Number);
      $('f-from').value = `${month}-01`;
      $('f-to').value = isoDay(new Date(Date.UTC(y, m, 0)));
      if ($('f-step').value === 'month' || $('f-step').value === 'year') $('f-step').value = 'day';
      this.loadSoon();
    });
    for (const id of ['f-from', 'f-to']) $(id).addEventListener('input', () => { $('f-month').value = ''; });
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe($('chart-figure'));
  }

  loadSoon() {
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.load(), 350);
  }

  /** Shows `site` (an /api/v1/sites entry) with `query` (partial), then loads its counts. */
  open(site, query = {}, { focus = false } = {}) {
    this.site = site;
    const name = site.name || site.external_id;
    const label = site.road && !name.includes(site.road) ? `${name} — ${site.road}` : name;
    $('counts-site').textContent = label;
    $('counts-site').hidden = false;
    $('counts-hint').hidden = true;
    this.form.hidden = false;
    this.fillChoices(query);
    // By default the last 31 days of data (fewer when the site is younger).
    const last = site.last_data ? localDay(site.last_data, -1000) : localDay(new Date());
    const first = site.first_data ? localDay(site.first_data) : null;
    $('f-to').value = query.to || last;
    const monthBefore = addDays($('f-to').value, -30);
    $('f-from').value = query.from || (first && first > monthBefore && first <= $('f-to').value ? first : monthBefore);
    $('f-month').value = '';
    $('f-step').value = STEPS.includes(query.step) ? query.step : 'day';
    if (focus) {
      $('counts').focus({ preventScroll: true });
      $('counts').scrollIntoView({ block: 'start' });
    }
    return this.load();
  }

  fillChoices(query = {}) {
    const site = this.site;
    if (!site) return;
    const direction = query.direction ?? $('f-direction').value;
    $('f-direction').replaceChildren(option('', t('counts.direction.all'), !direction),
      ...(site.directions || []).map((d) => option(d, directionLabel(site, d), d === direction)));
    const classes = site.vehicle_classes || [];
    const vehicleClass = query.vehicleClass ?? $('f-class').value;
    const choices = [option('', t('counts.class.all'), !vehicleClass)];
    for (const c of ['light', 'heavy']) {
      if (classes.includes(c)) choices.push(option(c, t(`counts.class.${c}`), c === vehicleClass));
    }
    $('f-class').replaceChildren(...choices);
  }

  query() {
    return {
      from: $('f-from').value,
      to: $('f-to').value,
      step: $('f-step').value,
      direction: $('f-direction').value,
      vehicleClass: $('f-class').value,
    };
  }

  async load() {
    clearTimeout(this.debounce);
    if (!this.site) return;
    const token = ++this.token;
    const query = this.query();
    const params = countsQuery(query);
    this.onQueryChange(this.site.id, query);
    $('counts-status').textContent = t('counts.loading');
    $('counts').setAttribute('aria-busy', 'true');
    const wantsHeavy = !query.vehicleClass && (this.site.vehicle_classes || []).includes('heavy');
    const heavyParams = countsQuery({ ...query, vehicleClass: 'heavy' });
    try {
      const doc = await fetchJSON(countsUrl(this.site.id, params, 'json'));
      // The share of heavy vehicles, when the chart shows all vehicles: a second, optional request.
      const heavy = wantsHeavy ? await fetchJSON(countsUrl(this.site.id, heavyParams, 'json')).catch(() => null) : null;
      if (token !== this.token) return;
      this.doc = doc;
      this.heavy = heavy;
      this.params = params;
      this.error = null;
    } catch (err) {
      if (token !== this.token) return;
      this.doc = null;
      this.heavy = null;
      this.error = err instanceof ApiError ? err : new ApiError(-1, null, String(err));
      const body = this.error.body;
      if (body && body.parameter === 'to' && body.value === params.get('to')) {
        // The API's `to` is the day after the one shown: name the day the person chose.
        this.error.body = { ...body, value: query.to };
      }
    } finally {
      if (token === this.token) {
        $('counts-status').textContent = '';
        $('counts').removeAttribute('aria-busy');
      }
    }
    this.render();
  }

  render() {
    const message = $('counts-message');
    const hideAll = () => {
      for (const id of ['counts-summary', 'chart-figure', 'downloads', 'counts-details', 'counts-method']) $(id).hidden = true;
      if (this.plot) { this.plot.destroy(); this.plot = null; }
    };
    if (this.error) {
      hideAll();
      showMessage(message, describeError(this.error));
      return;
    }
    const doc = this.doc;
    if (!doc) return;
    const points = doc.points || [];
    if (points.length === 0 || points.every((p) => !p.coverage)) {
      hideAll();
      const site = this.site;
      const text = site && site.first_data
        ? t('counts.empty', { first: formatDay(localDay(site.first_data)), last: formatDay(localDay(site.last_data, -1000)) })
        : t('counts.empty.none');
      showMessage(message, [text], 'info');
      return;
    }
    showMessage(message, null);
    this.renderSummary(points, doc.step);
    this.renderChart(points, doc.step);
    this.renderDownloads();
    this.renderTable(points, doc.step);
    methodNote($('counts-method'), doc);
  }

  isLow(p) {
    return (p.coverage ?? 0) < this.threshold;
  }

  renderSummary(points, step) {
    const total = points.reduce((s, p) => s + (p.count || 0), 0);
    const covered = points.filter((p) => !this.isLow(p) && p.count !== null && p.count !== undefined);
    const mean = covered.length ? covered.reduce((s, p) => s + p.count, 0) / covered.length : null;
    const coverage = points.reduce((s, p) => s + (p.coverage || 0), 0) / points.length;
    const low = points.filter((p) => this.isLow(p));
    let speedSum = 0;
    let speedWeight = 0;
    for (const p of points) {
      if (p.speed !== null && p.speed !== undefined && p.count) { speedSum += p.speed * p.count; speedWeight += p.count; }
    }
    const thresholdText = formatPercent(this.threshold, 0);
    const items = [
      [t('counts.total'), formatNumber(total)],
      [t('counts.mean', { step: t(`counts.step.${step}`) }),
        `${formatNumber(mean)} (${t('counts.mean.note', { threshold: thresholdText })})`],
    ];
    if (this.heavy && this.heavy.points) {
      const heavy = this.heavy.points.reduce((s, p) => s + (p.count || 0), 0);
      items.push([t('counts.heavy'), `${formatNumber(heavy)} (${formatPercent(total ? heavy / total : null)})`]);
    }
    items.push([t('counts.coverage'), formatPercent(coverage)]);
    const runs = lowRuns(points, (p) => this.isLow(p));
    const runText = runs.slice(0, 4).map(([a, b]) => (a === b ? formatPeriod(points[a].period, step)
      : `${formatPeriod(points[a].period, step)} → ${formatPeriod(points[b].period, step)}`)).join(' · ');
    items.push([`${t('counts.low')} (< ${thresholdText})`,
      low.length ? `${formatNumber(low.length)}${t('colon')}${runText}${runs.length > 4 ? ' …' : ''}` : t('counts.low.none')]);
    if (speedWeight) items.push([t('counts.speed'), `${formatNumber(speedSum / speedWeight, 1)} km/h`]);
    const dl = $('counts-summary');
    dl.replaceChildren(...items.map(([k, v]) => {
      const div = document.createElement('div');
      const dt = document.createElement('dt');
      const dd = document.createElement('dd');
      dt.textContent = k;
      dd.textContent = v;
      div.append(dt, dd);
      return div;
    }));
    dl.dataset.lowCount = String(low.length);
    dl.hidden = false;
  }

  renderChart(points, step) {
    const figure = $('chart-figure');
    figure.hidden = false;
    const xs = points.map((p) => periodSeconds(p.period, step));
    const ok = points.map((p) => (this.isLow(p) ? null : p.count));
    const low = points.map((p) => (this.isLow(p) ? p.count : null));
    const coverage = points.map((p) => (p.coverage === null || p.coverage === undefined ? null : p.coverage * 100));
    const lowIdx = points.map((p, i) => (this.isLow(p) ? i : -1)).filter((i) => i >= 0);
    const half = HALF_STEP[step] || 43200;
    const chart = $('chart');
    const width = Math.max(280, chart.clientWidth || figure.clientWidth || 600);
    const bars = uPlot.paths.bars({ size: [0.8, 80], align: 0 });
    const thresholdText = formatPercent(this.threshold, 0);
    const tz = step === 'hour' ? zone() : 'UTC';
    const opts = {
      width,
      height: 320,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz),
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
      scales: {
        x: { time: true, range: (u, min, max) => [min - half, max + half] },
        y: { range: (u, min, max) => [0, Math.max(10, max * 1.08)] },
        pct: { range: [0, 105] },
      },
      axes: [
        { values: tickFormatter(step), stroke: '#1f2937', grid: { stroke: '#e5e7eb' }, size: 52, space: 60 },
        {
          scale: 'y', label: t('counts.axis.count'), stroke: '#1f2937', grid: { stroke: '#e5e7eb' }, size: 70,
          values: (u, splits) => splits.map((v) => formatNumber(v)),
        },
        {
          scale: 'pct', side: 1, label: t('counts.axis.coverage'), stroke: COLOURS.coverage, grid: { show: false }, size: 50,
          values: (u, splits) => splits.map((v) => (v <= 100 ? `${v}` : '')),
        },
      ],
      series: [
        { label: t('col.period'), value: (u, v) => (v === null || v === undefined ? '' : formatPeriod(step === 'hour' ? new Date(v * 1000).toISOString() : new Date(v * 1000).toISOString().slice(0, 10), step)) },
        {
          label: t('counts.series.count'), scale: 'y', stroke: COLOURS.count, fill: COLOURS.countFill, width: 1,
          paths: bars, points: { show: false }, value: (u, v) => (v === null || v === undefined ? '—' : formatNumber(v)),
        },
        {
          label: t('counts.series.low', { threshold: thresholdText }), scale: 'y', stroke: COLOURS.low, fill: COLOURS.lowFill,
          width: 1, paths: bars, points: { show: false }, value: (u, v) => (v === null || v === undefined ? '—' : formatNumber(v)),
        },
        {
          label: t('counts.series.coverage'), scale: 'pct', stroke: COLOURS.coverage, width: 1.5, dash: [5, 4],
          points: { show: points.length < 60, size: 4 }, value: (u, v) => (v === null || v === undefined ? '—' : `${formatNumber(v, 1)} %`),
        },
      ],
      hooks: {
        drawClear: [(u) => {
          // Shade periods whose coverage is under the threshold, gaps included.
          const { ctx } = u;
          const { top, height } = u.bbox;
          ctx.save();
          ctx.fillStyle = COLOURS.lowBand;
          for (const i of lowIdx) {
            const x0 = u.valToPos(xs[i] - half, 'x', true);
            const x1 = u.valToPos(xs[i] + half, 'x', true);
            ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
          }
          ctx.restore();
        }],
      },
    };
    if (this.plot) this.plot.destroy();
    chart.replaceChildren();
    this.plot = new uPlot(opts, [xs, ok, low, coverage], chart);
    chart.setAttribute('aria-label', t('counts.chart.label', { step: t(`counts.step.${step}`) }));
    chart.dataset.points = String(points.length);
    chart.dataset.low = String(lowIdx.length);
    $('chart-caption').textContent = chart.getAttribute('aria-label');
  }

  resize() {
    if (!this.plot) return;
    const width = Math.max(280, $('chart').clientWidth);
    if (Math.abs(width - this.plot.width) > 2) this.plot.setSize({ width, height: 320 });
  }

  renderDownloads() {
    const site = this.site;
    const q = this.params;
    const base = `site-${site.external_id || site.id}_${q.get('from')}_${q.get('to')}_${q.get('step')}`
      + `${q.get('direction') ? `_${q.get('direction')}` : ''}${q.get('vehicle_class') ? `_${q.get('vehicle_class')}` : ''}`;
    const safe = base.replace(/[^A-Za-z0-9._-]+/g, '-');
    for (const format of ['csv', 'parquet']) {
      const a = $(`download-${format}`);
      a.href = countsUrl(site.id, q, format);
      a.setAttribute('download', `${safe}.${format}`);
      a.setAttribute('type', format === 'csv' ? 'text/csv' : 'application/vnd.apache.parquet');
    }
    // The same rows for a French spreadsheet: semicolons, decimal commas, French headers.
    const fr = $('download-csv-fr');
    fr.href = `${countsUrl(site.id, q, 'csv')}&dialect=fr`;
    fr.setAttribute('download', `${safe}_fr.csv`);
    fr.setAttribute('type', 'text/csv');
    $('downloads').hidden = false;
  }

  renderTable(points, step) {
    const table = $('counts-table');
    const head = document.createElement('thead');
    const tr = document.createElement('tr');
    for (const key of ['col.period', 'col.count', 'col.coverage', 'col.estimated', 'col.speed', 'col.invalid']) {
      const th = document.createElement('th');
      th.scope = 'col';
      th.textContent = t(key);
      tr.append(th);
    }
    head.append(tr);
    const body = document.createElement('tbody');
    for (const p of points.slice(0, MAX_TABLE_ROWS)) {
      const row = document.createElement('tr');
      row.dataset.period = String(p.period);
      if (this.isLow(p)) row.className = 'low-coverage';
      const th = document.createElement('th');
      th.scope = 'row';
      th.textContent = formatPeriod(p.period, step);
      row.append(th);
      for (const value of [formatNumber(p.count), formatPercent(p.coverage), formatPercent(p.estimated_share),
        p.speed === null || p.speed === undefined ? t('none') : formatNumber(p.speed, 1)]) {
        const td = document.createElement('td');
        td.className = 'num';
        td.textContent = value;
        row.append(td);
      }
      // Intervals validation rejected, with their reasons in words.
      const rejected = document.createElement('td');
      rejected.className = 'num';
      const reasons = (p.invalid_reasons || '').split(',').filter(Boolean);
      rejected.textContent = p.invalid ? `${formatNumber(p.invalid)} (${reasons.map((r) => t(`reason.${r}`)).join(', ')})` : '0';
      row.append(rejected);
      body.append(row);
    }
    table.replaceChildren(head, body);
    const note = $('counts-table-note');
    note.hidden = points.length <= MAX_TABLE_ROWS;
    note.textContent = note.hidden ? '' : t('counts.table.truncated', {
      shown: formatNumber(MAX_TABLE_ROWS), total: formatNumber(points.length),
    });
    $('counts-details').hidden = false;
  }

  /** Re-draws every text in the new language (no new request). */
  relabel() {
    if (!this.site) return;
    const query = this.query();
    this.fillChoices(query);
    this.render();
  }
}
