// roadfeed web page: map of counting sites and events, a site's counts, the annual table.
// Everything comes from this server: /static/herault.geojson, /feeds/*.geojson, /api/v1/*.
import 'leaflet/dist/leaflet.css';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { describeError, fetchAllSites, fetchJSON, showMessage } from './modules/api.js';
import {
  currentLang, formatNumber, formatTime, LANGUAGES, localDay, onLangChange, setLang, setTimeZone, t,
} from './modules/i18n.js';
import { licenceNode } from './modules/method.js';
import { renderLegend, TrafficMap } from './modules/map.js';
import { CountsPanel, STEPS } from './modules/counts.js';
import { AnnualTable } from './modules/annual.js';

const REFRESH_SECONDS = 60;
const $ = (id) => document.getElementById(id);

function readConfig() {
  const node = document.getElementById('roadfeed-config');
  try {
    return node ? JSON.parse(node.textContent) : {};
  } catch (err) {
    return {};
  }
}

/** A site as /api/v1/sites describes it, made from a /feeds/sites.geojson feature when the API has not answered. */
function siteFromFeature(feature) {
  const p = feature.properties;
  const channels = p.channels || [];
  const uniq = (values) => [...new Set(values.filter((v) => v !== null && v !== undefined))];
  return {
    id: p.id,
    external_id: p.external_id,
    source: p.source,
    name: p.name,
    road: p.road,
    pr: p.pr,
    abscissa: p.abscissa,
    insee: p.insee,
    lon: feature.geometry ? feature.geometry.coordinates[0] : null,
    lat: feature.geometry ? feature.geometry.coordinates[1] : null,
    directions: uniq(channels.map((c) => c.direction)),
    vehicle_classes: uniq(channels.map((c) => c.vehicle_class)),
    first_data: null,
    last_data: null,
  };
}

/** "RD613 — Montbazin", without repeating a road the name already starts with. */
function siteLabel(site) {
  const name = site.name || site.external_id;
  return site.road && !name.startsWith(site.road) ? `${site.road} — ${name}` : name;
}

class Page {
  constructor(config) {
    this.config = config;
    this.threshold = typeof config.coverage_threshold === 'number' ? config.coverage_threshold : 0.95;
    this.sites = new Map(); // id -> /api/v1/sites entry
    this.siteFeatures = [];
    this.eventFeatures = [];
    this.conditionFeatures = [];
    this.state = { site: null, query: null, year: null };
    this.sitesError = null;
    this.eventsError = null;
    this.conditionsError = null;
    this.outlineError = null;
    this.updatedAt = null;

    this.map = new TrafficMap($('map'), {
      tileUrl: config.tile_url,
      tileAttribution: config.tile_attribution,
      onSelectSite: (id, focus) => this.selectSite(id, {}, focus),
    });
    this.counts = new CountsPanel({
      threshold: this.threshold,
      onQueryChange: (siteId, query) => {
        this.state.site = siteId;
        this.state.query = query;
        this.writeUrl();
      },
    });
    this.annual = new AnnualTable({
      onOpenSite: (id, focus) => this.selectSite(id, {}, focus),
      onYearChange: (year) => {
        this.state.year = year;
        this.writeUrl();
      },
    });
    $('site-select').addEventListener('change', () => {
      const id = Number($('site-select').value);
      if (id) this.selectSite(id, {}, false);
    });
    $('lang-toggle').addEventListener('click', () => {
      setLang(currentLang() === 'fr' ? 'en' : 'fr');
      this.writeUrl();
    });
    onLangChange(() => this.relabel());
  }

  async start() {
    const params = new URLSearchParams(window.location.search);
    const wanted = {
      site: Number(params.get('site')) || null,
      query: {
        from: params.get('from') || undefined,
        to: params.get('to') || undefined,
        step: STEPS.includes(params.get('step')) ? params.get('step') : undefined,
        direction: params.get('direction') || undefined,
        vehicleClass: params.get('vehicle_class') || undefined,
      },
      year: Number(params.get('year')) || null,
    };
    $('map-status').textContent = t('map.loading');
    const [outline, sites, sitesGeo, eventsGeo, conditionsGeo] = await Promise.allSettled([
      fetchJSON('/static/herault.geojson'),
      fetchAllSites(),
      fetchJSON('/feeds/sites.geojson'),
      fetchJSON('/feeds/events.geojson'),
      fetchJSON('/api/v1/road-conditions'),
    ]);
    if (outline.status === 'fulfilled') this.map.setOutline(outline.value);
    else this.outlineError = outline.reason;
    if (sites.status === 'fulfilled') {
      for (const s of sites.value.sites) this.sites.set(s.id, s);
      this.meta = sites.value.meta;
    } else {
      this.sitesError = sites.reason;
    }
    this.applyFeeds(sitesGeo, eventsGeo, conditionsGeo);
    this.fillSiteSelect();
    this.fillLicence();

    const years = this.years();
    const year = wanted.year && years.includes(wanted.year) ? wanted.year : years[years.length - 1];
    this.annual.setYears([...years].reverse(), year);
    const annualLoad = this.annual.load(year);
    if (wanted.site) await this.selectSite(wanted.site, wanted.query, false);
    await annualLoad;
    setInterval(() => this.refresh(), REFRESH_SECONDS * 1000);
    document.body.dataset.ready = 'true';
  }

  applyFeeds(sitesGeo, eventsGeo, conditionsGeo) {
    const before = JSON.stringify([this.siteFeatures, this.eventFeatures, this.conditionFeatures]);
    if (sitesGeo.status === 'fulfilled') {
      this.siteFeatures = sitesGeo.value.features || [];
      this.sitesFeedError = null;
      if (!this.sites.size || this.sitesError) {
        for (const f of this.siteFeatures) if (!this.sites.has(f.properties.id)) this.sites.set(f.properties.id, siteFromFeature(f));
      }
    } else {
      this.sitesFeedError = sitesGeo.reason;
    }
    if (eventsGeo.status === 'fulfilled') {
      this.eventFeatures = eventsGeo.value.features || [];
      this.eventsError = null;
    } else {
      this.eventsError = eventsGeo.reason;
    }
    if (conditionsGeo.status === 'fulfilled') {
      this.conditionFeatures = conditionsGeo.value.features || [];
      this.conditionsError = null;
    } else {
      this.conditionsError = conditionsGeo.reason;
    }
    if (JSON.stringify([this.siteFeatures, this.eventFeatures, this.conditionFeatures]) !== before) {
      this.map.setSites(this.siteFeatures, this.sites);
      this.map.setEvents(this.eventFeatures);
      this.map.setConditions(this.conditionFeatures);
      this.map.select(this.state.site);
    }
    this.updatedAt = new Date();
    this.renderMapStatus();
  }

  async refresh() {
    // Not while someone reads a popup or moves through the map with the keyboard: redrawing would close it.
    if (document.hidden || this.map.popupOpen || $('map').contains(document.activeElement)) return;
    const [sitesGeo, eventsGeo, conditionsGeo] = await Promise.allSettled([
      fetchJSON('/feeds/sites.geojson'), fetchJSON('/feeds/events.geojson'), fetchJSON('/api/v1/road-conditions'),
    ]);
    this.applyFeeds(sitesGeo, eventsGeo, conditionsGeo);
  }

  renderMapStatus() {
    const shownEvents = this.eventFeatures.filter((f) => f.geometry).length;
    const shownSites = this.siteFeatures.filter((f) => f.geometry).length;
    $('map-status').textContent = `${t('map.summary', { sites: formatNumber(shownSites), events: formatNumber(shownEvents) })} `
      + `${this.updatedAt ? t('map.updated', { time: formatTime(this.updatedAt) }) : ''}`;
    const lines = [];
    for (const [err, key] of [[this.outlineError, 'error.outline'], [this.sitesError, 'error.sites'],
      [this.sitesFeedError, 'error.sites'], [this.eventsError, 'error.events'],
      [this.conditionsError, 'error.conditions']]) {
      if (err) lines.push(`${t(key)} ${describeError(err).join(' ')}`);
    }
    showMessage($('map-message'), [...new Set(lines)]);
    renderLegend($('legend'), this.siteFeatures, this.eventFeatures, this.conditionFeatures);
  }

  fillSiteSelect() {
    const select = $('site-select');
    const sorted = [...this.sites.values()].sort((a, b) => siteLabel(a).localeCompare(siteLabel(b), currentLang(), { numeric: true }));
    const placeholder = document.createElement('option');
    placeholder.value = '';
    placeholder.textContent = t('map.site.placeholder');
    select.replaceChildren(placeholder, ...sorted.map((s) => {
      const o = document.createElement('option');
      o.value = String(s.id);
      o.textContent = siteLabel(s);
      return o;
    }));
    select.value = this.state.site ? String(this.state.site) : '';
  }

  fillLicence() {
    const licence = (this.meta && this.meta.licence)
      || (this.config.licence ? { name: this.config.licence, url: this.config.licence_url } : null);
    const footer = $('footer-licence');
    footer.replaceChildren();
    if (this.config.publisher) footer.append(`${this.config.publisher}. `);
    const node = licenceNode(licence);
    if (node) {
      const [before, after] = t('footer.licence', { licence: '\u0000' }).split('\u0000');
      footer.append(before, node, after, ' · ');
    }
  }

  /** Years offered by the annual table: from the first to the last data of any site. */
  years() {
    const firsts = [];
    const lasts = [];
    for (const s of this.sites.values()) {
      if (s.first_data) firsts.push(Number(localDay(s.first_data).slice(0, 4)));
      if (s.last_data) lasts.push(Number(localDay(s.last_data, -1000).slice(0, 4)));
    }
    const now = new Date().getFullYear();
    const first = firsts.length ? Math.min(...firsts) : now;
    const last = lasts.length ? Math.max(...lasts) : now;
    const years = [];
    for (let y = first; y <= last; y += 1) years.push(y);
    return years;
  }

  async selectSite(id, query = {}, focus = false) {
    const site = this.sites.get(id);
    if (!site) {
      showMessage($('counts-message'), [t('error.parameter', { parameter: 'site', value: id, expected: t('map.site.select') })]);
      return;
    }
    this.state.site = id;
    $('site-select').value = String(id);
    this.map.select(id);
    await this.counts.open(site, query, { focus });
  }

  writeUrl() {
    const params = new URLSearchParams();
    if (currentLang() !== 'fr') params.set('lang', currentLang());
    if (this.state.site && this.state.query) {
      const q = this.state.query;
      params.set('site', String(this.state.site));
      if (q.from) params.set('from', q.from);
      if (q.to) params.set('to', q.to);
      if (q.step) params.set('step', q.step);
      if (q.direction) params.set('direction', q.direction);
      if (q.vehicleClass) params.set('vehicle_class', q.vehicleClass);
    }
    if (this.state.year) params.set('year', String(this.state.year));
    const search = params.toString();
    window.history.replaceState(null, '', `${window.location.pathname}${search ? `?${search}` : ''}`);
  }

  relabel() {
    this.map.relabel();
    this.renderMapStatus();
    this.fillSiteSelect();
    this.fillLicence();
    this.counts.relabel();
    this.annual.relabel();
    $('lang-toggle').setAttribute('lang', currentLang() === 'fr' ? 'en' : 'fr');
  }
}

function boot() {
  const config = readConfig();
  setTimeZone(config.timezone);
  const asked = new URLSearchParams(window.location.search).get('lang');
  setLang(LANGUAGES.includes(asked) ? asked : (config.lang || 'fr'));
  $('lang-toggle').setAttribute('lang', currentLang() === 'fr' ? 'en' : 'fr');
  const page = new Page(config);
  window.roadfeedPage = page; // for the browser tests and curious people
  page.start().catch((err) => {
    showMessage($('map-message'), describeError(err));
    document.body.dataset.ready = 'error';
  });
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
