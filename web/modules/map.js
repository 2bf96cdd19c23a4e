// The map: the département's outline as the base layer (tiles only when configured),
// counting sites coloured by freshness and quality, events coloured by type, and
// the winter state of each road section (C1 to C4, /api/v1/road-conditions).
import L from 'leaflet';
import {
  currentLang, formatAge, formatDateTime, formatDay, formatNumber, localDay, t,
} from './i18n.js';

export const STALE_AFTER_SECONDS = 3 * 3600;

export const SITE_STATES = ['fresh', 'estimated', 'stale', 'none'];

export const EVENT_TYPES = [
  'roadworks', 'accident', 'closure', 'lane_management', 'congestion', 'obstruction',
  'weather', 'environment', 'speed_management', 'rerouting', 'public_event', 'other',
];

// The same colours as style.css (.event-marker.type-…, .swatch…), for SVG strokes.
export const EVENT_COLOURS = {
  roadworks: '#c2410c',
  accident: '#dc2626',
  closure: '#111827',
  lane_management: '#1d4ed8',
  congestion: '#9333ea',
  obstruction: '#92400e',
  weather: '#0e7490',
  environment: '#0f766e',
  speed_management: '#4338ca',
  rerouting: '#be185d',
  public_event: '#4d7c0f',
  other: '#4b5563',
};

// Road section states on the French winter scale, and their colours (as style.css .swatch.level-…).
export const CONDITION_LEVELS = ['C1', 'C2', 'C3', 'C4'];

export const CONDITION_COLOURS = {
  C1: '#16a34a',
  C2: '#eab308',
  C3: '#ea580c',
  C4: '#7f1d1d',
};

/** C1 to C4 from a feature of /api/v1/road-conditions (an unknown level reads as C1). */
export function conditionLevel(props) {
  return props && CONDITION_LEVELS.includes(props.level) ? props.level : 'C1';
}

export const SITE_COLOURS = {
  fresh: '#15803d',
  estimated: '#d97706',
  stale: '#64748b',
  none: '#ffffff',
};

/** fresh, estimated, stale or none, from a feature of /feeds/sites.geojson. */
export function siteState(props) {
  if (!props) return 'none';
  const age = props.freshness_seconds;
  if (props.quality === 'missing' || age === null || age === undefined) return 'none';
  if (age > STALE_AFTER_SECONDS) return 'stale';
  return props.quality === 'estimated' ? 'estimated' : 'fresh';
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function row(label, value) {
  if (value === null || value === undefined || value === '') return null;
  return el('div', { class: 'popup-row' }, el('dt', {}, label), el('dd', {}, value));
}

/** The description in the page's language, else French, else any. */
export function description(descriptions) {
  if (!descriptions) return null;
  const lang = currentLang();
  return descriptions[lang] || descriptions.fr || Object.values(descriptions)[0] || null;
}

function eventLabel(p) {
  const parts = [t(`event.type.${p.type}`), p.road, t(`event.status.${p.status}`)];
  return parts.filter(Boolean).join(' · ');
}

function eventPopup(p) {
  const start = p.actual_start || p.planned_start;
  const end = p.actual_end || p.planned_end;
  const endText = end ? `${formatDateTime(end)}${p.actual_end ? '' : ` (${t('event.planned')})`}` : null;
  const startText = start ? `${formatDateTime(start)}${p.actual_start ? '' : ` (${t('event.planned')})`}` : null;
  const text = description(p.descriptions);
  return el('div', { class: 'popup event-popup', lang: currentLang() },
    el('h3', { class: `popup-title type-${p.type}` }, t(`event.type.${p.type}`)),
    el('dl', {},
      row(t('event.road'), p.road),
      row(t('event.status'), t(`event.status.${p.status}`)),
      p.severity && p.severity !== 'unknown' ? row(t('event.severity'), t(`event.severity.${p.severity}`)) : null,
      row(t('event.direction'), p.direction),
      row(t('event.lanes'), p.lanes_affected),
      row(t('event.start'), startText),
      row(t('event.end'), endText),
      row(t('event.detour'), p.detour),
      row(t('event.updated'), p.updated ? formatDateTime(p.updated) : null)),
    el('p', { class: 'popup-description' }, text || t('event.nodescription')));
}

function conditionLabel(p) {
  return `${p.road || ''} — ${conditionLevel(p)}, ${t(`condition.${conditionLevel(p)}`)}`;
}

function conditionPopup(p) {
  const level = conditionLevel(p);
  return el('div', { class: 'popup condition-popup', lang: currentLang() },
    el('h3', { class: `popup-title level-${level}` }, `${level} — ${t(`condition.${level}`)}`),
    el('dl', {},
      row(t('event.road'), p.road),
      row(t('event.updated'), p.updated ? formatDateTime(p.updated) : null)));
}

function sitePopup(p, site, onShow) {
  const state = siteState(p);
  const button = el('button', { type: 'button', class: 'button popup-show' }, t('map.site.show'));
  button.addEventListener('click', () => onShow(p.id, true));
  const period = site && site.first_data
    ? t('site.period', { first: formatDay(localDay(site.first_data)), last: formatDay(localDay(site.last_data, -1000)) })
    : t('site.nodata');
  return el('div', { class: 'popup site-popup', lang: currentLang() },
    el('h3', { class: 'popup-title' }, p.name || p.external_id),
    el('dl', {},
      row(t('event.road'), p.road),
      row(t('site.commune'), site && site.commune ? site.commune : null),
      p.pr !== null && p.pr !== undefined ? row('PR', t('site.pr', { pr: p.pr, abscissa: p.abscissa ?? 0 })) : null,
      row(t('event.status'), `${t(`state.${state}`)}${p.freshness_seconds !== null && p.freshness_seconds !== undefined
        ? ` — ${t('site.freshness', { age: formatAge(p.freshness_seconds) })}` : ''}`)),
    el('p', { class: 'popup-period' }, period),
    button);
}

/** Makes an SVG path or marker icon reachable and usable by keyboard. */
function keyboardReachable(layer, label, onActivate) {
  const node = layer.getElement ? layer.getElement() : null;
  if (!node) return;
  node.setAttribute('tabindex', '0');
  node.setAttribute('role', 'button');
  node.setAttribute('aria-label', label);
  node.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' || ev.key === ' ') {
      ev.preventDefault();
      onActivate();
    }
  });
}

export class TrafficMap {
  constructor(container, { tileUrl, tileAttribution, onSelectSite }) {
    this.onSelectSite = onSelectSite;
    this.map = L.map(container, { zoomSnap: 0.25, preferCanvas: false, keyboard: true });
    this.map.attributionControl.setPrefix(false);
    if (tileUrl) {
      L.tileLayer(tileUrl, { attribution: tileAttribution || '', maxZoom: 18 }).addTo(this.map);
    }
    this.map.setView([43.6, 3.4], 9);
    this.outline = null;
    this.conditionsLayer = L.layerGroup().addTo(this.map);
    this.sitesLayer = L.layerGroup().addTo(this.map);
    this.eventsLayer = L.layerGroup().addTo(this.map);
    this.conditionFeatures = [];
    this.siteFeatures = [];
    this.eventFeatures = [];
    this.sitesById = new Map();
    this.markers = new Map();
    this.selected = null;
    this.popupOpen = false;
    this.map.on('popupopen', () => { this.popupOpen = true; });
    this.map.on('popupclose', () => { this.popupOpen = false; });
  }

  setOutline(geojson) {
    if (this.outline) this.outline.remove();
    this.outline = L.geoJSON(geojson, {
      interactive: false,
      attribution: 'IGN / INSEE, Licence Ouverte',
      style: {
        className: 'outline', color: '#334155', weight: 2, fillColor: '#f1f5f9', fillOpacity: 1,
      },
    }).addTo(this.map);
    this.outline.bringToBack();
    this.map.fitBounds(this.outline.getBounds(), { padding: [12, 12] });
  }

  setSites(features, sitesById) {
    this.siteFeatures = features || [];
    if (sitesById) this.sitesById = sitesById;
    this.sitesLayer.clearLayers();
    this.markers.clear();
    for (const feature of this.siteFeatures) {
      if (!feature.geometry || feature.geometry.type !== 'Point') continue;
      const p = feature.properties;
      const [lon, lat] = feature.geometry.coordinates;
      const state = siteState(p);
      const marker = L.circleMarker([lat, lon], {
        radius: 7,
        color: state === 'none' ? '#475569' : '#ffffff',
        weight: 2,
        fillColor: SITE_COLOURS[state],
        fillOpacity: 1,
        className: `site-marker state-${state}${this.selected === p.id ? ' selected' : ''}`,
      });
      marker.bindTooltip(`${p.name || p.external_id}${p.road ? ` (${p.road})` : ''}`, { direction: 'top', offset: [0, -6] });
      marker.bindPopup(() => sitePopup(p, this.sitesById.get(p.id), this.onSelectSite), { maxWidth: 280 });
      marker.on('click', () => this.onSelectSite(p.id, false));
      marker.addTo(this.sitesLayer);
      const label = `${p.name || p.external_id}${p.road ? `, ${p.road}` : ''}: ${t(`state.${state}`)}`;
      keyboardReachable(marker, label, () => {
        marker.openPopup();
        this.onSelectSite(p.id, true);
      });
      const node = marker.getElement();
      if (node) node.dataset.siteId = String(p.id);
      this.markers.set(p.id, marker);
    }
    this.sitesLayer.eachLayer((layer) => layer.bringToFront());
  }

  setEvents(features) {
    this.eventFeatures = features || [];
    this.eventsLayer.clearLayers();
    for (const feature of this.eventFeatures) {
      if (!feature.geometry) continue;
      const p = feature.properties;
      const type = EVENT_TYPES.includes(p.type) ? p.type : 'other';
      const classes = `event-shape type-${type} status-${p.status}`;
      let layer;
      if (feature.geometry.type === 'Point') {
        const [lon, lat] = feature.geometry.coordinates;
        layer = L.marker([lat, lon], {
          icon: L.divIcon({ className: `event-marker ${classes}`, iconSize: [16, 16], html: '' }),
          keyboard: true,
          title: eventLabel(p),
          zIndexOffset: p.status === 'active' ? 500 : 0,
        });
      } else if (feature.geometry.type === 'LineString') {
        const latlngs = feature.geometry.coordinates.map(([lon, lat]) => [lat, lon]);
        layer = L.polyline(latlngs, {
          color: EVENT_COLOURS[type],
          weight: 6,
          opacity: p.status === 'ended' ? 0.45 : 0.95,
          dashArray: p.status === 'planned' ? '10 7' : (p.status === 'ended' ? '3 7' : null),
          lineCap: 'round',
          className: `event-line ${classes}`,
        });
      } else {
        continue;
      }
      layer.bindPopup(() => eventPopup(p), { maxWidth: 320 });
      layer.addTo(this.eventsLayer);
      const node = layer.getElement();
      if (node) node.dataset.eventId = feature.id || p.id;
      if (feature.geometry.type === 'LineString') {
        keyboardReachable(layer, eventLabel(p), () => layer.openPopup());
      } else if (node) {
        node.setAttribute('role', 'button');
        node.setAttribute('aria-label', eventLabel(p));
      }
    }
    this.sitesLayer.eachLayer((layer) => layer.bringToFront && layer.bringToFront());
  }

  /** The road network coloured by each section's state, under the events. */
  setConditions(features) {
    this.conditionFeatures = features || [];
    this.conditionsLayer.clearLayers();
    for (const feature of this.conditionFeatures) {
      if (!feature.geometry || feature.geometry.type !== 'LineString') continue;
      const p = feature.properties;
      const level = conditionLevel(p);
      const layer = L.polyline(feature.geometry.coordinates.map(([lon, lat]) => [lat, lon]), {
        color: CONDITION_COLOURS[level],
        weight: 10,
        opacity: 0.85,
        lineCap: 'butt',
        className: `condition-line level-${level}`,
      });
      layer.bindPopup(() => conditionPopup(p), { maxWidth: 280 });
      layer.addTo(this.conditionsLayer);
      const node = layer.getElement();
      if (node) node.dataset.sectionId = String(feature.id);
      keyboardReachable(layer, conditionLabel(p), () => layer.openPopup());
    }
    this.conditionsLayer.eachLayer((layer) => layer.bringToBack());
    if (this.outline) this.outline.bringToBack();
  }

  select(siteId) {
    this.selected = siteId;
    for (const [id, marker] of this.markers) {
      const node = marker.getElement();
      if (node) node.classList.toggle('selected', id === siteId);
      if (id === siteId) marker.setRadius(10);
      else marker.setRadius(7);
    }
  }

  /** Rebuilds popups, tooltips and labels in the new language. */
  relabel() {
    this.map.closePopup();
    this.setSites(this.siteFeatures);
    this.setEvents(this.eventFeatures);
    this.setConditions(this.conditionFeatures);
    this.select(this.selected);
  }

  invalidateSize() {
    this.map.invalidateSize();
  }
}

/** The legend under the map: site states, event types and road section states, with counts. */
export function renderLegend(container, siteFeatures, eventFeatures, conditionFeatures) {
  const siteCounts = {};
  for (const f of siteFeatures) siteCounts[siteState(f.properties)] = (siteCounts[siteState(f.properties)] || 0) + 1;
  const eventCounts = {};
  for (const f of eventFeatures) {
    const type = EVENT_TYPES.includes(f.properties.type) ? f.properties.type : 'other';
    eventCounts[type] = (eventCounts[type] || 0) + 1;
  }
  const sites = el('ul', { class: 'legend-list' }, ...SITE_STATES.map((s) => el('li', {},
    el('span', { class: `swatch swatch-site state-${s}`, 'aria-hidden': 'true' }),
    `${t(`state.${s}`)} (${formatNumber(siteCounts[s] || 0)})`)));
  const present = EVENT_TYPES.filter((type) => eventCounts[type]);
  const events = el('ul', { class: 'legend-list' }, ...(present.length ? present : []).map((type) => el('li', {},
    el('span', { class: `swatch swatch-event type-${type}`, 'aria-hidden': 'true' }),
    `${t(`event.type.${type}`)} (${formatNumber(eventCounts[type])})`)));
  const conditionCounts = {};
  for (const f of conditionFeatures) {
    if (!f.geometry) continue;
    const level = conditionLevel(f.properties);
    conditionCounts[level] = (conditionCounts[level] || 0) + 1;
  }
  const conditions = el('ul', { class: 'legend-list' }, ...CONDITION_LEVELS.map((level) => el('li', {},
    el('span', { class: `swatch swatch-condition level-${level}`, 'aria-hidden': 'true' }),
    `${level} ${t(`condition.${level}`)} (${formatNumber(conditionCounts[level] || 0)})`)));
  container.replaceChildren(
    el('div', { class: 'legend-group' }, el('h3', {}, t('legend.sites')), sites),
    el('div', { class: 'legend-group' }, el('h3', {}, t('legend.events')),
      present.length ? events : el('p', { class: 'hint' }, formatNumber(0)),
      el('p', { class: 'hint legend-note' }, t('legend.status'))),
    el('div', { class: 'legend-group legend-conditions' }, el('h3', {}, t('legend.conditions')), conditions),
  );
}
