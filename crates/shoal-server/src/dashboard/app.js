// Shoal's dashboard: reads the control API once a second with the session cookie and
// redraws. No framework, no library: tables from templates, charts as SVG polylines.
'use strict';

const HISTORY_SECONDS = 300; // what the charts show
const LATENCY_WINDOW = 10; // seconds of calls each latency point summarises
const history = []; // { t, fn: { name: { calls, buckets: [[le, count]], inFlight, instances } } }
const openDecisions = new Set();
let lastCost = 0;

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const num = (v, digits = 0) => (v == null || Number.isNaN(v) ? '–' : Number(v).toFixed(digits));
const mib = (kib) => (kib == null ? '–' : (kib / 1024).toFixed(1) + ' MiB');
const ago = (ms) => (ms == null ? '–' : ms < 1000 ? ms + ' ms' : ms < 120000 ? (ms / 1000).toFixed(1) + ' s' : Math.round(ms / 60000) + ' min');

async function get(path, asText) {
  const response = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (response.status === 401) throw new Error('unauthorized');
  if (!response.ok) throw new Error(path + ': ' + response.status);
  return asText ? response.text() : response.json();
}

// Prometheus text: per function, calls finished and the latency histogram's buckets.
function parseMetrics(text) {
  const out = {};
  const fn = (name) => (out[name] ??= { calls: 0, buckets: [] });
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line) continue;
    const m = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...m[2].matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    const value = Number(m[3]);
    if (m[1] === 'shoal_invocations_total' && labels.function) fn(labels.function).calls += value;
    if (m[1] === 'shoal_invocation_duration_seconds_bucket' && labels.function) {
      fn(labels.function).buckets.push([labels.le === '+Inf' ? Infinity : Number(labels.le), value]);
    }
  }
  return out;
}

// The q-quantile of the calls between two cumulative histograms, interpolated in its bucket.
function quantile(now, before, q) {
  const delta = now.map(([le, c], i) => [le, c - (before?.[i]?.[1] ?? 0)]);
  const total = delta.length ? delta[delta.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const [le, c] of delta) {
    if (c >= rank) {
      if (le === Infinity) return lower * 1000;
      return (lower + (le - lower) * ((rank - below) / Math.max(c - below, 1e-9))) * 1000;
    }
    lower = le; below = c;
  }
  return null;
}

function chart(svg, series, { unit = '' } = {}) {
  const W = 600, H = 160, L = 44, B = 18;
  const now = Date.now() / 1000;
  let max = 0;
  for (const s of series) for (const [, v] of s.points) if (v != null) max = Math.max(max, v);
  max = max > 0 ? max * 1.15 : 1;
  const x = (t) => L + ((t - (now - HISTORY_SECONDS)) / HISTORY_SECONDS) * (W - L - 4);
  const y = (v) => H - B - (v / max) * (H - B - 20);
  let body = '';
  for (const f of [0, 0.5, 1]) {
    body += `<line class="grid" x1="${L}" x2="${W}" y1="${y(max * f)}" y2="${y(max * f)}"></line>`;
    body += `<text x="2" y="${y(max * f) + 4}">${esc(num(max * f, max < 10 ? 1 : 0))}${unit}</text>`;
  }
  body += `<text x="${L}" y="${H - 3}">-${HISTORY_SECONDS / 60} min</text><text x="${W - 30}" y="${H - 3}">now</text>`;
  series.forEach((s, i) => {
    const pts = s.points.filter(([t, v]) => v != null && t >= now - HISTORY_SECONDS).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    if (pts.length) body += `<polyline class="s${i % 4}" points="${pts.join(' ')}"></polyline>`;
    // The latest value as a dot, so a series with one point so far still shows.
    if (pts.length) {
      const [cx, cy] = pts[pts.length - 1].split(',');
      body += `<circle class="s${i % 4}" cx="${cx}" cy="${cy}" r="2.5"></circle>`;
    }
    body += `<text x="${L + 6 + i * 140}" y="12" class="k${i % 4}">${esc(s.name)}</text>`;
  });
  svg.innerHTML = body;
}

function drawCharts() {
  const names = [...new Set(history.flatMap((h) => Object.keys(h.fn)))].sort();
  const throughput = names.map((name) => ({
    name: name + ' calls/s',
    points: history.map((h, i) => {
      const prev = history[i - 1];
      if (!prev || !h.fn[name] || !prev.fn[name]) return [h.t, null];
      return [h.t, Math.max(0, h.fn[name].calls - prev.fn[name].calls) / Math.max(h.t - prev.t, 0.001)];
    }),
  }));
  chart($('#chart-throughput'), throughput.slice(0, 4));
  const latency = [];
  for (const name of names.slice(0, 1)) {
    for (const q of [0.5, 0.95, 0.99]) {
      latency.push({
        name: `${name} p${Math.round(q * 100)}`,
        points: history.map((h) => {
          const then = history.find((o) => o.t >= h.t - LATENCY_WINDOW);
          if (!h.fn[name]) return [h.t, null];
          return [h.t, quantile(h.fn[name].buckets, then?.fn[name]?.buckets, q)];
        }),
      });
    }
  }
  chart($('#chart-latency'), latency, { unit: '' });
  const load = [];
  for (const name of names.slice(0, 2)) {
    load.push({ name: name + ' in flight', points: history.map((h) => [h.t, h.fn[name]?.inFlight ?? null]) });
    load.push({ name: name + ' instances', points: history.map((h) => [h.t, h.fn[name]?.instances ?? null]) });
  }
  chart($('#chart-inflight'), load);
}

function renderFunctions(functions, status) {
  const rows = functions.map((f) => {
    const pools = status.pools.filter((p) => p.function === f.name);
    const inFlight = pools.flatMap((p) => p.instances).reduce((a, i) => a + i.in_flight, 0);
    const queued = pools.reduce((a, p) => a + p.queued, 0);
    const concurrency = f.concurrency === 'auto' || f.concurrency === 'Auto' ? 'auto' : JSON.stringify(f.concurrency).replace(/[{}"]/g, '').replace('Fixed:', '');
    const where = [...f.routes, ...f.events.map((e) => `${e.kind} ${e.source}`)].join(', ');
    return `<tr data-function="${esc(f.name)}"><td>${esc(f.name)}</td><td class="num">${esc(f.version)}</td><td>${esc(String(f.runtime).toLowerCase())}</td><td>${esc(concurrency)}</td>` +
      `<td class="num instances">${esc(f.instances)}</td><td class="num in-flight">${esc(inFlight)}</td><td class="num">${esc(queued)}</td><td>${esc(where)}</td></tr>`;
  });
  $('#functions tbody').innerHTML = rows.join('') || '<tr><td colspan="8" class="muted">nothing deployed</td></tr>';
}

function renderPools(status) {
  const html = status.pools.map((p) => {
    const key = `${p.function}-${p.version}`;
    const instances = p.instances.map((i) =>
      `<tr data-instance="${esc(i.id)}"><td>${esc(i.id)}</td><td class="state-${esc(i.state)}">${esc(i.state)}</td><td class="num">${esc(i.in_flight)} / ${esc(i.limit)}</td>` +
      `<td class="num">${esc(num(i.littles_law, 1))}</td><td class="num">${i.cpu_busy == null ? '–' : esc(num(i.cpu_busy * 100)) + ' %'}</td>` +
      `<td class="num">${esc(mib(i.rss_kib))}</td><td class="num">${esc(mib(i.pss_kib))}</td><td class="num">${esc(i.invocations)}</td><td class="num">${esc(ago(i.uptime_ms))}</td></tr>`).join('');
    const decisions = p.decisions.slice().reverse().map((d) =>
      `<li><span class="muted">${esc(new Date(d.at_ms).toLocaleTimeString())}</span> <b>${esc(d.kind)}</b> ${esc(d.message)}</li>`).join('');
    return `<div class="pool" data-pool="${esc(key)}"><h3>${esc(p.function)} v${esc(p.version)}${p.retired ? ' (retired, draining)' : ''}</h3>` +
      `<p class="muted">limit ${esc(p.limit)}${p.auto ? ` (auto, learned ${esc(p.learned_limit)})` : ''} · desired instances ${esc(p.desired)} · demand ${esc(num(p.demand_stable, 1))} stable / ${esc(num(p.demand_panic, 1))} panic · queued ${esc(p.queued)}</p>` +
      `<table class="instances"><thead><tr><th>instance</th><th>state</th><th class="num">in flight / limit</th><th class="num">L*</th><th class="num">CPU</th><th class="num">RSS</th><th class="num">PSS</th><th class="num">calls</th><th class="num">up</th></tr></thead><tbody>${instances || '<tr><td colspan="9" class="muted">no instances (scaled to zero)</td></tr>'}</tbody></table>` +
      `<details class="decisions" data-pool="${esc(key)}"${openDecisions.has(key) ? ' open' : ''}><summary>Scaling decisions (${p.decisions.length})</summary><ol class="decisions">${decisions}</ol></details></div>`;
  }).join('');
  $('#pools').innerHTML = html;
  for (const d of document.querySelectorAll('details.decisions')) {
    d.addEventListener('toggle', () => (d.open ? openDecisions.add(d.dataset.pool) : openDecisions.delete(d.dataset.pool)));
  }
}

function renderQueues(status) {
  $('#queues tbody').innerHTML = (status.queues ?? []).map((q) =>
    `<tr><td>${esc(q.name)}</td><td class="num">${esc(q.visible)}</td><td class="num">${esc(q.in_flight)}</td><td class="num">${esc(q.delayed)}</td><td class="num">${esc(ago(q.oldest_age_ms))}</td><td>${esc(q.dead_letter ?? '')}</td></tr>`).join('') ||
    '<tr><td colspan="6" class="muted">no queues</td></tr>';
  $('#triggers tbody').innerHTML = (status.triggers ?? []).map((t) =>
    `<tr><td>${esc(t.function)}</td><td>${esc(t.kind)}</td><td>${esc(t.source)}</td><td class="num">${esc(t.in_flight)} / ${esc(t.cap)}</td><td class="num">${esc(t.backlog)}</td><td>${esc(Object.entries(t.counts ?? {}).map(([k, v]) => `${k} ${v}`).join(' · '))}${t.next_fire_ms ? esc(` · next fire ${new Date(t.next_fire_ms).toLocaleTimeString()}`) : ''}${t.position ? esc(` · position ${t.position}`) : ''}${t.last_error ? esc(` · last error: ${t.last_error}`) : ''}</td></tr>`).join('') ||
    '<tr><td colspan="6" class="muted">no triggers</td></tr>';
}

function renderCost(cost) {
  const rows = cost.functions.map((f) => {
    const ratio = f.shoal_configured_gb_seconds > 0 ? (f.lambda_gb_seconds / f.shoal_configured_gb_seconds).toFixed(1) + '×' : '–';
    return `<tr data-function="${esc(f.function)}"><td>${esc(f.function)}</td><td class="num">${esc(f.invocations)}</td><td class="num">${esc(f.cold_starts)}</td><td class="num">${esc(num(f.lambda_gb_seconds, 3))}</td><td class="num">${esc(num(f.lambda_usd, 6))}</td>` +
      `<td class="num">${esc(num(f.shoal_instance_seconds, 3))}</td><td class="num">${esc(num(f.shoal_configured_gb_seconds, 3))}</td><td class="num">${esc(num(f.shoal_measured_gb_seconds, 4))}</td><td class="num">${esc(num(f.shoal_cpu_seconds, 3))}</td><td class="num ratio">${esc(ratio)}</td></tr>`;
  });
  $('#cost tbody').innerHTML = rows.join('');
  $('#cost-note').textContent = `Lambda: configured memory × billed duration (init included, 1 ms units) + request fee at ${cost.prices.source}. Shoal: instance time with calls in flight or starting, at the configured memory (ratio) and at measured resident memory. Idle warm instances are in neither.`;
}

async function tick() {
  try {
    const [functions, status, metrics] = await Promise.all([
      get('/admin/functions'), get('/admin/status'), get('/metrics', true),
    ]);
    $('#login-needed').hidden = true;
    const t = Date.now() / 1000;
    const parsed = parseMetrics(metrics);
    const fn = {};
    for (const f of functions.functions) {
      const pools = status.pools.filter((p) => p.function === f.name);
      fn[f.name] = {
        calls: parsed[f.name]?.calls ?? 0,
        buckets: parsed[f.name]?.buckets ?? [],
        inFlight: pools.flatMap((p) => p.instances).reduce((a, i) => a + i.in_flight, 0),
        instances: pools.reduce((a, p) => a + p.instances.length, 0),
      };
    }
    history.push({ t, fn });
    while (history.length && history[0].t < t - HISTORY_SECONDS - LATENCY_WINDOW) history.shift();
    renderFunctions(functions.functions, status);
    renderPools(status);
    renderQueues(status);
    drawCharts();
    $('#host').textContent = `${status.host.instances} / ${status.host.max_instances} instances · memory limits ${mib(status.host.memory_kib)} of ${mib(status.host.max_memory_kib)}`;
    // The bill reads the logs through: every 10 s is enough.
    if (t - lastCost >= 10) {
      lastCost = t;
      renderCost(await get('/admin/cost?since_seconds=3600'));
    }
    $('#updated').textContent = 'live · ' + new Date().toLocaleTimeString();
    $('#updated').className = 'live';
  } catch (e) {
    if (e.message === 'unauthorized') {
      $('#login-needed').hidden = false;
      $('#updated').textContent = 'not logged in';
    } else {
      $('#updated').textContent = 'daemon unreachable, retrying';
    }
    $('#updated').className = 'stale';
  }
}

tick();
setInterval(tick, 1000);
