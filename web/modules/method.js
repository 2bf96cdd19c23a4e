// The licence and method that every API document carries, shown under the chart and the table.
import { currentLang, formatPercent, t } from './i18n.js';

// The API's method (English) as French readers get it: each known entry's name and text.
// Entries without a French text are left out rather than shown in English.
const FRENCH_METHOD = {
  coverage: ['Couverture', 'intervalles présents / intervalles attendus'],
  present: ['Intervalle présent', 'un intervalle avec un comptage de qualité observée ou estimée que la validation n\'a pas rejeté'],
  expected: ['Intervalles attendus', 'ceux qu\'implique le pas de temps de chaque canal sur la période, en calendrier local (un jour local dure de 23 à 25 heures aux changements d\'heure)'],
  estimated_share: ['Part estimée', 'intervalles estimés / intervalles présents (vide quand aucun n\'est présent)'],
  count: ['Comptage', 'véhicules comptés dans les intervalles présents ; vide quand aucun intervalle n\'est présent'],
  speed: ['Vitesse', 'moyenne des vitesses moyennes des intervalles pondérée par leurs comptages, en km/h, arrondie à 0,1'],
  site_total: ['Total d\'un site', 'ses canaux tous véhicules s\'il en a, sinon légers + poids lourds ; toutes directions sauf si une est demandée'],
  v85: ['V85', 'non calculée : seule la vitesse moyenne de chaque intervalle est conservée, et un centile des vitesses individuelles ne se déduit pas de moyennes'],
  validation: ['Validation', 'chaque intervalle observé est comparé à l\'historique de son canal et à ses voisins ; un intervalle rejeté garde sa valeur brute, n\'est pas présent (il abaisse la couverture et sort de toutes les sommes) et est compté par motif dans « intervalles rejetés »'],
  tmja: ['TMJA', 'trafic moyen journalier annuel : somme du total du site (deux sens) sur les jours valides / nombre de jours valides, en véhicules par jour'],
  tmjo: ['TMJO', 'trafic moyen des jours ouvrés : le même calcul sur les jours valides du lundi au vendredi, jours fériés exclus'],
  heavy_share: ['Part de poids lourds', 'poids lourds / tous véhicules sur les jours valides où les poids lourds sont comptés'],
  mean_speed: ['Vitesse moyenne', 'moyenne pondérée par les comptages sur les jours valides, en km/h'],
  days_valid: ['Jours valides', 'jours locaux dont la couverture, sur tous les canaux attendus du site ce jour-là, atteint le seuil'],
  days_excluded: ['Jours exclus', 'les autres jours déjà écoulés de l\'année : sous le seuil ou sans données'],
  mean_coverage: ['Couverture moyenne', 'moyenne de la couverture journalière sur les jours avec données'],
};

/** The method in French: known entries, the threshold, the zone, the version, and each rejection reason's French text. */
function describeFrench(method) {
  const dl = document.createElement('dl');
  const add = (term, text) => {
    const dt = document.createElement('dt');
    dt.textContent = term;
    const dd = document.createElement('dd');
    dd.textContent = text;
    dl.append(dt, dd);
  };
  if (typeof method.coverage_threshold === 'number') add('Seuil de couverture', formatPercent(method.coverage_threshold, 0));
  for (const [key, [term, text]] of Object.entries(FRENCH_METHOD)) {
    if (key in method) add(term, text);
  }
  const reasons = method.invalid_reasons && typeof method.invalid_reasons === 'object' ? method.invalid_reasons : {};
  for (const [code, text] of Object.entries(reasons)) {
    if (text && text.fr) add(`Motif de rejet « ${code} »`, text.fr);
  }
  if (method.timezone) add('Fuseau horaire', String(method.timezone));
  if (method.aggregation_version) add('Version du calcul', String(method.aggregation_version));
  return dl;
}

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
    details.append(summary, currentLang() === 'fr' ? describeFrench(method) : describe(method));
    children.push(details);
  }
  el.replaceChildren(...children);
  el.hidden = false;
}
