// The search page: a query (text or photo) and filters -> a grid of hits -> one hit in 3D.
// The page's state lives in its URL (/?q=a+red+chair&k=20&show=42), so a search can be shared and reloaded.
import { PointView, decodePoints } from './viewer.js';

const $ = (id) => document.getElementById(id);
const SCAN_POINTS = 300000; // most points of a scan the view loads (subsampled by the server beyond)
const FILTERS = ['min_points', 'max_points', 'min_extent', 'max_extent', 'min_score'];

// -- talking to the API ------------------------------------------------------------------------------

// A token given as ?token=... once is kept for this tab and sent with every API call.
const token = new URLSearchParams(location.search).get('token') || sessionStorage.getItem('scenegrep-token');
if (token) sessionStorage.setItem('scenegrep-token', token);

function withToken(url) {
  return token ? url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : url;
}

async function api(url, options = {}) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(url, { ...options, headers });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `${response.status} ${response.statusText}`);
  }
  return response;
}

const getJSON = async (url) => (await api(url)).json();
const getPoints = async (url) => decodePoints(await (await api(url)).arrayBuffer());

// -- the form <-> the URL ----------------------------------------------------------------------------

function readForm() {
  const p = new URLSearchParams();
  const q = $('q').value.trim();
  if (q) p.set('q', q);
  p.set('k', $('k').value || '20');
  for (const option of $('scan').selectedOptions) p.append('scan', option.value);
  for (const tag of $('tag').value.split(',').map((t) => t.trim()).filter(Boolean)) p.append('tag', tag);
  for (const name of FILTERS) if ($(name).value !== '') p.set(name, $(name).value);
  if ($('all').checked) p.set('all', 'true');
  return p;
}

function fillForm(p) {
  $('q').value = p.get('q') || '';
  $('k').value = p.get('k') || '20';
  const scans = new Set(p.getAll('scan'));
  for (const option of $('scan').options) option.selected = scans.has(option.value);
  $('tag').value = p.getAll('tag').join(', ');
  for (const name of FILTERS) $(name).value = p.get(name) || '';
  $('all').checked = p.get('all') === 'true';
  const filtered = scans.size || p.getAll('tag').length || FILTERS.some((n) => p.has(n)) || p.has('all');
  if (filtered) $('filters').open = true;
}

// The search part of the URL: what /api/search takes (the page's own keys dropped).
function searchParams(p) {
  const s = new URLSearchParams(p);
  s.delete('show');
  s.delete('token');
  return s;
}

function go(p, { push = true } = {}) {
  if (push) history.pushState(null, '', '/?' + p.toString());
  return run(p);
}

// -- results -----------------------------------------------------------------------------------------

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function card(hit, rank) {
  const el = document.createElement('article');
  el.className = 'card';
  el.tabIndex = 0;
  el.dataset.instanceId = hit.id;
  const relevance = hit.relevance == null ? null : Math.round(100 * hit.relevance);
  el.innerHTML = `
    <div class="thumb">${hit.thumbnail_url ? `<img loading="lazy" alt="">` : '<span>no view</span>'}</div>
    <div class="meta">
      <div class="line"><span class="rank">#${rank}</span><span class="scan"></span></div>
      <div class="line nums">
        <span title="cosine score">score ${hit.score.toFixed(3)}</span>
        <span title="points in the instance">${hit.n_points.toLocaleString()} pts</span>
      </div>
      <div class="relevance" title="calibrated relevance">
        <span style="width:${relevance ?? 0}%"></span><em>${relevance == null ? 'relevance n/a' : `relevance ${relevance}%`}</em>
      </div>
      ${hit.folded.length ? `<div class="folded">+${hit.folded.length} near-duplicate${hit.folded.length > 1 ? 's' : ''}</div>` : ''}
    </div>`;
  el.querySelector('.scan').textContent = hit.scan; // scan names are data, never markup
  if (hit.thumbnail_url) el.querySelector('img').src = withToken(hit.thumbnail_url);
  const open = () => selectHit(hit);
  el.addEventListener('click', open);
  el.addEventListener('keydown', (e) => { if (e.key === 'Enter') open(); });
  return el;
}

let hitsById = new Map();

function showHits(result, label) {
  hitsById = new Map(result.hits.map((h) => [h.id, h]));
  $('results').replaceChildren(...result.hits.map((h, i) => card(h, i + 1)));
  const n = result.hits.length;
  status(n ? `${n} hit${n > 1 ? 's' : ''} for ${label} · ${Math.round(result.took_ms)} ms`
           : `no hits for ${label}`);
}

async function run(p) {
  fillForm(p);
  const show = Number(p.get('show')) || null;
  const s = searchParams(p);
  if (!s.has('q') && !s.has('like')) {
    $('results').replaceChildren();
    status('Type what you are looking for, or drop a photo.');
  } else {
    const label = s.has('like') ? `instance ${s.get('like')}` : `“${s.get('q')}”`;
    status(`searching ${label} …`);
    try {
      showHits(await getJSON('/api/search?' + s.toString()), label);
    } catch (e) {
      $('results').replaceChildren();
      status(e.message, true);
    }
  }
  if (show) await openInstance(show); else closeViewer();
}

async function searchPhoto(file) {
  const p = readForm();
  p.delete('q');
  history.pushState(null, '', '/?' + p.toString());
  $('q').value = '';
  const form = new FormData();
  form.append('photo', file);
  status(`searching photo ${file.name} …`);
  try {
    const result = await (await api('/api/search/image?' + p.toString(), { method: 'POST', body: form })).json();
    showHits(result, `photo ${file.name}`);
  } catch (e) {
    status(e.message, true);
  }
}

// -- the 3D view -------------------------------------------------------------------------------------

let view = null;
let shown = null;
const clouds = new Map(); // scan name -> decoded cloud (the last two)

async function scanCloud(name) {
  if (!clouds.has(name)) {
    clouds.set(name, await getPoints(`/api/scans/${encodeURIComponent(name)}/points?max_points=${SCAN_POINTS}`));
    if (clouds.size > 2) clouds.delete(clouds.keys().next().value);
  }
  return clouds.get(name);
}

function selectHit(hit) {
  const p = new URLSearchParams(location.search);
  p.set('show', hit.id);
  history.pushState(null, '', '/?' + p.toString());
  openInstance(hit.id, hit);
}

async function openInstance(id, hit = hitsById.get(id)) {
  const viewer = $('viewer');
  viewer.hidden = false;
  document.body.classList.add('viewing');
  viewer.dataset.state = 'loading';
  $('viewer-message').textContent = 'loading …';
  for (const el of document.querySelectorAll('.card.selected')) el.classList.remove('selected');
  document.querySelector(`.card[data-instance-id="${id}"]`)?.classList.add('selected');
  const started = performance.now();
  try {
    hit = hit || (await getJSON(`/api/instances/${id}`));
    shown = hit;
    $('viewer-title').textContent = `${hit.scan} · instance ${hit.id}`;
    $('download-ply').href = withToken(`${hit.points_url}?format=ply`);
    $('download-ply').setAttribute('download', `instance-${hit.id}.ply`);
    const [cloud, points] = await Promise.all([scanCloud(hit.scan), getPoints(`${hit.points_url}?format=bin`)]);
    if (shown !== hit) return; // another hit was clicked meanwhile
    view ??= new PointView($('view3d'));
    view.setPointSize(Number($('point-size').value));
    view.setScan(hit.scan, cloud);
    const n = view.setHit(points);
    view.resize();
    const count = $('highlight-count');
    count.dataset.count = n;
    count.textContent = `${n.toLocaleString()} points highlighted · scan ${cloud.n.toLocaleString()}`
      + (cloud.n < cloud.total ? ` of ${cloud.total.toLocaleString()} shown` : ' shown');
    viewer.dataset.loadMs = Math.round(performance.now() - started);
    viewer.dataset.state = 'ready';
    $('viewer-message').textContent = '';
  } catch (e) {
    viewer.dataset.state = 'error';
    $('viewer-message').textContent = e.message;
  }
}

function closeViewer() {
  shown = null;
  $('viewer').hidden = true;
  $('viewer').dataset.state = 'idle';
  document.body.classList.remove('viewing');
  for (const el of document.querySelectorAll('.card.selected')) el.classList.remove('selected');
}

// -- wiring ------------------------------------------------------------------------------------------

async function loadScans() {
  try {
    const scans = await getJSON('/api/scans');
    $('scan').replaceChildren(...scans.map((s) => new Option(`${s.name} (${s.instances})`, s.name)));
  } catch (e) {
    status(e.message, true);
  }
}

$('search').addEventListener('submit', (e) => {
  e.preventDefault();
  go(readForm());
});
$('photo').addEventListener('change', () => $('photo').files[0] && searchPhoto($('photo').files[0]));
const drop = $('dropzone');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith('image/'));
  if (file) searchPhoto(file); else status('drop an image file (JPEG or PNG)', true);
});
$('viewer-close').addEventListener('click', () => {
  const p = new URLSearchParams(location.search);
  p.delete('show');
  history.pushState(null, '', '/?' + p.toString());
  closeViewer();
});
$('point-size').addEventListener('input', () => view?.setPointSize(Number($('point-size').value)));
$('find-similar').addEventListener('click', () => {
  if (!shown) return;
  const p = searchParams(readForm());
  p.delete('q');
  p.set('like', shown.id);
  go(p);
});
window.addEventListener('popstate', () => run(new URLSearchParams(location.search)));

await loadScans();
await run(new URLSearchParams(location.search));
