// The agents' page: log in, enter an event by road and PR or by drawing its line on the
// map (with the preview of what each consumer receives), publish, end, see versions;
// set road conditions, typed by road and PR or chosen on the map; mark a counter faulty; upload a counting campaign. Everything
// goes through /api/v1/.
'use strict';

const $ = (id) => document.getElementById(id);
let csrf = null;
const published = new Map(); // id -> last event

async function call(method, url, body, contentType = 'application/json') {
  const headers = { Accept: 'application/json' };
  if (csrf) headers['X-CSRF-Token'] = csrf;
  const init = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    if (contentType) headers['Content-Type'] = contentType; // none for FormData: the browser sets the boundary
    init.body = contentType === 'application/json' ? JSON.stringify(body) : body;
  }
  const response = await fetch(url, init);
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) {
    const detail = data && (data.detail || data.error) ? (data.detail || data.error) : `HTTP ${response.status}`;
    throw new Error(data && data.parameter ? `${data.parameter} : ${detail}` : detail);
  }
  return data;
}

function say(id, text, kind = 'info') {
  const el = $(id);
  el.textContent = text;
  el.className = `message ${kind}`;
  el.hidden = !text;
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function localInstant(value) {
  return value ? new Date(value).toISOString() : null;
}

function eventBody() {
  const number = (id) => ($(id).value === '' ? null : Number($(id).value));
  const body = {
    kind: $('ev-kind').value, road: $('ev-road').value.trim() || null, direction: $('ev-direction').value,
    severity: $('ev-severity').value, lanes: $('ev-lanes').value.trim() || null,
    description: {}, detour: $('ev-detour').value.trim() || null,
    start: localInstant($('ev-start').value), end: localInstant($('ev-end').value),
    schedule: $('ev-nights').checked
      ? [{ days: ['monday', 'tuesday', 'wednesday', 'thursday', 'friday'], start: '21:00', end: '06:00' }] : [],
  };
  if ($('ev-fr').value.trim()) body.description.fr = $('ev-fr').value.trim();
  if ($('ev-en').value.trim()) body.description.en = $('ev-en').value.trim();
  const line = drawnLine();
  if (line) { // a drawn line places the event: the PR fields are not sent with it
    body.geometry = line;
    return body;
  }
  if (number('ev-pr-from') !== null) body.from = { pr: number('ev-pr-from'), abscissa: number('ev-abs-from') || 0 };
  if (number('ev-pr-to') !== null) body.to = { pr: number('ev-pr-to'), abscissa: number('ev-abs-to') || 0 };
  return body;
}

/** The map's projection for points in lon/lat: their box fills the 400 × 200 viewBox
 * (10 units of margin), one scale for both axes, longitudes shrunk by the cosine of the
 * box's middle latitude so shapes keep their proportions. `toLonLat` is its inverse. */
function projection(points) {
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const k = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
  const scale = Math.min(380 / Math.max((x1 - x0) * k, 1e-6), 180 / Math.max(y1 - y0, 1e-6));
  return {
    toSvg: (p) => [10 + (p[0] - x0) * k * scale, 190 - (p[1] - y0) * scale],
    toLonLat: (x, y) => [x0 + (x - 10) / (k * scale), y0 + (190 - y) / scale],
  };
}

/** Lines in lon/lat drawn into an SVG, scaled to the box of what is drawn (or with the
 * projection given). */
function draw(svg, shapes, project = null) {
  svg.replaceChildren();
  const points = shapes.flatMap((s) => s.coordinates);
  if (points.length === 0) return;
  const { toSvg } = project || projection(points);
  for (const shape of shapes) {
    const path = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    path.setAttribute('points', shape.coordinates.map((p) => toSvg(p).join(',')).join(' '));
    path.setAttribute('fill', 'none');
    path.setAttribute('stroke', shape.colour);
    path.setAttribute('stroke-width', shape.width || '5');
    path.dataset.level = shape.level || '';
    if (shape.className) path.setAttribute('class', shape.className);
    if (shape.road) { // named when hovered
      path.dataset.road = shape.road;
      const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
      title.textContent = shape.road;
      path.appendChild(title);
    }
    svg.appendChild(path);
  }
}

function geometryLines(geometry) {
  if (!geometry) return [];
  return geometry.type === 'Point' ? [geometry.coordinates, geometry.coordinates] : geometry.coordinates;
}

// Drawing the event's line on the map of the referential's roads: each click on the map
// (or each lon/lat typed in, for the keyboard) adds a point. With two points or more the
// event is sent with this line as its `geometry` instead of the PR range.
const drawing = { roads: [], project: null, points: [] };

async function loadRoads() { // a network the map cannot load leaves the rest of the page working
  try {
    const network = await call('GET', '/api/v1/roads/network'); // every road's line, in one request
    drawing.roads = network.features.map((f) => ({ road: f.properties.road, coordinates: f.geometry.coordinates }));
  } catch (err) { drawing.roads = []; }
  const all = drawing.roads.flatMap((r) => r.coordinates);
  drawing.project = all.length ? projection(all) : null;
  showDrawing();
  showNetwork();
  $('draw-map').dataset.ready = 'true';
}

/** The referential's roads in grey under what a map shows on them (both maps share them). */
function roadShapes() {
  return drawing.roads.map((r) => ({ coordinates: r.coordinates, colour: '#7f8c8d', width: '3', className: 'road', road: r.road }));
}

/** Where a click falls on an SVG map, in viewBox units. */
function clickedAt(svg, event) {
  const at = svg.createSVGPoint();
  at.x = event.clientX;
  at.y = event.clientY;
  const inBox = at.matrixTransform(svg.getScreenCTM().inverse()); // screen pixels -> viewBox units
  return [inBox.x, inBox.y];
}

function dot(svg, [x, y], colour, className) {
  const circle = document.createElementNS('http://www.w3.org/2000/svg', 'circle');
  circle.setAttribute('cx', x);
  circle.setAttribute('cy', y);
  circle.setAttribute('r', '4');
  circle.setAttribute('fill', colour);
  circle.setAttribute('class', className);
  svg.appendChild(circle);
}

function drawnLine() {
  return drawing.points.length >= 2 ? { type: 'LineString', coordinates: drawing.points.map((p) => [...p]) } : null;
}

function showDrawing() {
  const svg = $('draw-map');
  if (!drawing.project) {
    svg.replaceChildren();
    say('draw-status', 'Aucune route dans le référentiel : tracé impossible.', 'error');
    return;
  }
  draw(svg, [
    ...roadShapes(),
    ...(drawing.points.length ? [{ coordinates: drawing.points, colour: '#d35400', width: '4', className: 'drawn' }] : []),
  ], drawing.project);
  for (const p of drawing.points) dot(svg, drawing.project.toSvg(p), '#d35400', 'vertex');
  const n = drawing.points.length;
  say('draw-status', n === 0 ? 'Aucun point tracé : l\'événement est placé par la route et les PR.'
    : n === 1 ? '1 point tracé : ajoutez-en au moins un autre pour tracer une ligne.'
      : `Ligne tracée de ${n} points : elle remplace les PR saisis.`);
  $('dr-undo').disabled = n === 0;
  $('dr-clear').disabled = n === 0;
}

function addPoint(lon, lat) {
  const round = (v) => Math.round(v * 1e7) / 1e7; // about 1 cm
  drawing.points.push([round(lon), round(lat)]);
  showDrawing();
}

function clickMap(event) {
  if (!drawing.project) return;
  addPoint(...drawing.project.toLonLat(...clickedAt($('draw-map'), event)));
}

function typePoint() {
  const lon = Number($('dr-lon').value);
  const lat = Number($('dr-lat').value);
  if ($('dr-lon').value === '' || $('dr-lat').value === '' || !(Math.abs(lon) <= 180 && Math.abs(lat) <= 90)) {
    say('draw-status', 'Saisissez une longitude (−180 à 180) et une latitude (−90 à 90) en degrés décimaux.', 'error');
    return;
  }
  addPoint(lon, lat);
  $('dr-lon').value = '';
  $('dr-lat').value = '';
  $('dr-lon').focus();
}

async function preview() {
  try {
    const result = await call('POST', '/api/v1/events/preview', eventBody());
    say('event-message', '');
    draw($('preview-map'), [{ coordinates: geometryLines(result.event.geometry), colour: '#d35400' }]);
    const body = $('consumers').tBodies[0];
    body.replaceChildren();
    const names = { datex2_v3: 'DATEX II v3', datex2_v2: 'DATEX II v2.3', wzdx: 'WZDx 4.2', waze: 'Waze CIFS', geojson: 'GeoJSON' };
    for (const [key, consumer] of Object.entries(result.consumers)) {
      const row = body.insertRow();
      row.dataset.consumer = key;
      cell(row, names[key] || key);
      cell(row, consumer.accepted ? 'oui' : 'non', consumer.accepted ? 'ok' : 'refused');
      cell(row, consumer.reason || '');
    }
    $('consumers').hidden = false;
  } catch (err) {
    say('event-message', err.message, 'error');
  }
}

function showPublished(event) {
  published.set(event.id, event);
  const body = $('published').tBodies[0];
  body.replaceChildren();
  for (const e of published.values()) {
    const row = body.insertRow();
    row.dataset.id = e.id;
    cell(row, e.id);
    cell(row, String(e.version));
    cell(row, e.status === 'ended' ? 'terminé' : e.status === 'planned' ? 'prévu' : 'en cours');
    const actions = cell(row, '');
    const end = document.createElement('button');
    end.type = 'button';
    end.textContent = 'Terminer';
    end.className = 'end';
    end.disabled = e.status === 'ended';
    end.addEventListener('click', async () => {
      try {
        showPublished((await call('POST', `/api/v1/events/${encodeURIComponent(e.id)}/end`)).event);
        say('event-message', `Terminé : ${e.id}`);
      } catch (err) { say('event-message', err.message, 'error'); }
    });
    const versions = document.createElement('button');
    versions.type = 'button';
    versions.textContent = 'Versions';
    versions.className = 'versions';
    versions.addEventListener('click', () => showVersions(e.id));
    actions.append(end, versions);
  }
}

async function showVersions(id) {
  const history = await call('GET', `/api/v1/events/${encodeURIComponent(id)}`);
  const body = $('versions').tBodies[0];
  body.replaceChildren();
  for (const v of history.versions) {
    const row = body.insertRow();
    cell(row, String(v.version));
    cell(row, { created: 'créé', updated: 'modifié', ended: 'terminé', reopened: 'rouvert' }[v.change] || v.change);
    cell(row, v.author || 'collecteur');
    cell(row, new Date(v.recorded).toLocaleString('fr-FR'));
  }
  $('versions').hidden = false;
}

async function publish() {
  try {
    const result = await call('POST', '/api/v1/events', eventBody());
    showPublished(result.event);
    say('event-message', `Publié : ${result.event.id} (version ${result.event.version}) par ${result.author}`);
  } catch (err) {
    say('event-message', err.message, 'error');
  }
}

const LEVEL_COLOURS = { C1: '#2e8b57', C2: '#f1c40f', C3: '#e67e22', C4: '#c0392b' };

// The network coloured by state is also where a section is chosen: on the drawing map's
// roads and projection, a first click picks the nearest road and the section's start, a
// second its end; both are located on that road (PR + abscissa) and fill the form.
const picking = { conditions: [], road: null, ends: [], section: null, queue: Promise.resolve() };

async function drawNetwork() {
  const network = await call('GET', '/api/v1/road-conditions');
  picking.conditions = network.features.map((f) => ({
    coordinates: geometryLines(f.geometry), colour: LEVEL_COLOURS[f.properties.level] || '#888',
    level: f.properties.level, className: 'condition',
  }));
  showNetwork();
}

function showNetwork() {
  const svg = $('network');
  if (!drawing.project) { // no referential to draw on: the sections alone, scaled to their box
    draw(svg, picking.conditions);
    return;
  }
  draw(svg, [
    ...roadShapes(), ...picking.conditions,
    ...(picking.section ? [{ coordinates: picking.section, colour: '#2c3e50', width: '2', className: 'chosen' }] : []),
  ], drawing.project);
  for (const end of picking.ends) dot(svg, drawing.project.toSvg(end.at), '#2c3e50', 'end');
  $('co-clear').disabled = picking.ends.length === 0;
}

/** The distance from (x, y) to a polyline, in the map's plane. */
function distanceToLine(x, y, points) {
  let best = Infinity;
  for (let i = 0; i < points.length; i += 1) {
    const [ax, ay] = points[i];
    const [bx, by] = points[Math.min(i + 1, points.length - 1)];
    const dx = bx - ax;
    const dy = by - ay;
    const t = dx || dy ? Math.max(0, Math.min(1, ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy))) : 0;
    best = Math.min(best, Math.hypot(x - (ax + t * dx), y - (ay + t * dy)));
  }
  return best;
}

function nearestRoad(x, y) {
  let nearest = null;
  let best = Infinity;
  for (const r of drawing.roads) {
    const d = distanceToLine(x, y, r.coordinates.map(drawing.project.toSvg));
    if (d < best) [nearest, best] = [r.road, d];
  }
  return nearest;
}

const position = (end) => `${end.pr}+${end.abscissa}`;

async function pickEnd(x, y) {
  if (picking.ends.length === 2) clearPick(); // a third click starts another section
  if (picking.ends.length === 0) picking.road = nearestRoad(x, y);
  const road = picking.road;
  const [lon, lat] = drawing.project.toLonLat(x, y);
  try {
    const found = await call('GET', `/api/v1/roads/${encodeURIComponent(road)}/locate?lon=${lon}&lat=${lat}`);
    const end = { at: [lon, lat], pr: found.pr, abscissa: found.abscissa };
    picking.ends.push(end);
    const which = picking.ends.length === 1 ? 'from' : 'to';
    $('co-road').value = road;
    $(`co-pr-${which}`).value = end.pr;
    $(`co-abs-${which}`).value = end.abscissa;
    if (picking.ends.length === 1) {
      say('pick-status', `Début : ${road} PR ${end.pr} + ${end.abscissa} m. Cliquez sur la même route pour la fin du tronçon.`);
    } else {
      const [start, stop] = picking.ends;
      const query = `from=${encodeURIComponent(position(start))}&to=${encodeURIComponent(position(stop))}`;
      const section = await call('GET', `/api/v1/roads/${encodeURIComponent(road)}/section?${query}`);
      picking.section = geometryLines(section.geometry);
      say('pick-status', `Tronçon choisi : ${road} du PR ${start.pr} + ${start.abscissa} m au PR ${stop.pr} + ${stop.abscissa} m.`);
    }
  } catch (err) { say('pick-status', `${road} : ${err.message}`, 'error'); }
  showNetwork();
  $('network').dataset.picked = String(picking.ends.length);
}

function pickOnMap(event) {
  if (!drawing.project) return;
  const [x, y] = clickedAt($('network'), event);
  picking.queue = picking.queue.then(() => pickEnd(x, y)); // clicks are located in the order they were made
}

function clearPick() {
  picking.road = null;
  picking.ends = [];
  picking.section = null;
  for (const id of ['co-road', 'co-pr-from', 'co-pr-to']) $(id).value = '';
  for (const id of ['co-abs-from', 'co-abs-to']) $(id).value = '0';
  say('pick-status', '');
  $('network').dataset.picked = '0';
  showNetwork();
}

async function setCondition(event) {
  event.preventDefault();
  const end = (which) => ({ pr: Number($(`co-pr-${which}`).value), abscissa: Number($(`co-abs-${which}`).value) || 0 });
  try {
    await call('POST', '/api/v1/road-conditions', {
      road: $('co-road').value.trim(), from: end('from'), to: end('to'), level: $('co-level').value,
    });
    say('conditions-message', `État publié : ${$('co-road').value} ${$('co-level').value}`);
    await drawNetwork();
  } catch (err) { say('conditions-message', err.message, 'error'); }
}

async function loadSites() {
  const select = $('mk-site');
  let url = '/api/v1/sites?limit=500';
  select.replaceChildren();
  while (url) {
    const page = await call('GET', url);
    for (const s of page.sites) {
      const option = document.createElement('option');
      option.value = s.id;
      option.textContent = `${s.road || ''} ${s.name || s.external_id}`.trim();
      select.appendChild(option);
    }
    url = page.next_cursor ? `/api/v1/sites?limit=500&cursor=${encodeURIComponent(page.next_cursor)}` : null;
  }
}

async function mark(event) {
  event.preventDefault();
  try {
    const body = { kind: 'counter_faulty', site_id: Number($('mk-site').value), from: $('mk-from').value,
                   comment: $('mk-comment').value };
    if ($('mk-to').value) body.to = $('mk-to').value;
    const marking = await call('POST', '/api/v1/markings', body);
    say('marking-message', `Compteur marqué défaillant (marquage ${marking.id}) : ces intervalles sont exclus des agrégats.`);
  } catch (err) { say('marking-message', err.message, 'error'); }
}

async function campaign(dryRun) {
  const files = [...$('cp-file').files];
  if (!files.length) {
    say('campaign-message', 'Choisissez un fichier CSV, ou les fichiers site, channel et measure '
      + 'du schéma Comptage des mobilités.', 'error');
    return;
  }
  const url = `/api/v1/campaigns?name=${encodeURIComponent($('cp-name').value.trim())}${dryRun ? '&dry_run=true' : ''}`;
  try {
    let report;
    if (files.length === 1) {
      report = await call('POST', url, await files[0].text(), 'text/csv');
    } else { // the Comptage des mobilités files: one part each, told apart by their headers
      const form = new FormData();
      files.forEach((file, n) => form.append(`file${n}`, file, file.name));
      report = await call('POST', url, form, null);
    }
    const body = $('campaign-errors').tBodies[0];
    body.replaceChildren();
    for (const e of report.errors) {
      const row = body.insertRow();
      cell(row, e.line);
      cell(row, e.reason);
    }
    $('campaign-errors').hidden = report.errors.length === 0;
    say('campaign-message', dryRun
      ? `${report.counts} comptages valides sur ${report.sites} sites, ${report.error_count} ligne(s) refusée(s).`
      : `Importé comme source ${report.source} : ${report.new} comptages, ${report.quarantined} en quarantaine.`);
    $('cp-import').disabled = !dryRun;
  } catch (err) { say('campaign-message', err.message, 'error'); }
}

async function login(event) {
  event.preventDefault();
  try {
    const session = await call('POST', '/api/v1/session', {
      username: $('login-user').value, password: $('login-password').value,
    });
    csrf = session.csrf_token;
    $('who').textContent = `Connecté : ${session.username} (${session.role})`;
    $('login-section').hidden = true;
    $('workspace').hidden = false;
    say('login-message', '');
    await Promise.all([loadSites(), drawNetwork(), loadRoads()]);
    document.body.dataset.ready = 'true';
  } catch (err) {
    say('login-message', err.message, 'error');
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', login);
  $('ev-preview').addEventListener('click', preview);
  $('ev-publish').addEventListener('click', publish);
  $('draw-map').addEventListener('click', clickMap);
  $('dr-add').addEventListener('click', typePoint);
  for (const id of ['dr-lon', 'dr-lat']) {
    $(id).addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); typePoint(); } });
  }
  $('dr-undo').addEventListener('click', () => { drawing.points.pop(); showDrawing(); });
  $('dr-clear').addEventListener('click', () => { drawing.points = []; showDrawing(); });
  $('conditions-form').addEventListener('submit', setCondition);
  $('network').addEventListener('click', pickOnMap);
  $('co-clear').addEventListener('click', () => { picking.queue = picking.queue.then(clearPick); });
  $('marking-form').addEventListener('submit', mark);
  $('campaign-form').addEventListener('submit', (e) => { e.preventDefault(); campaign(true); });
  $('cp-import').addEventListener('click', () => campaign(false));
  document.body.dataset.loaded = 'true';
});
