'''The swarm map page served at ``/``: one self-contained HTML document (inline CSS and JavaScript).

No framework, no CDN: it works offline, on an air-gapped operator network. It polls ``map.json`` (relative,
so it also works behind a path-prefix proxy) and redraws in place, without reloading. Everything a server
announces reaches the DOM through ``textContent`` or ``setAttribute``, never ``innerHTML``: a hostile
``public_name`` such as ``<script>...`` is shown as text. Kept as a Python string so packaging needs nothing.
'''

# Served as is, so its long CSS/JS lines stay unwrapped (the noqa on its closing line waives E501).
PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Petals swarm map</title>
<style>
:root { --on:#2e9d44; --join:#e0b020; --off:#c0392b; --absent:#eceff1; --ink:#1d2327; --muted:#6b7780; }
body { font: 13px/1.35 system-ui, sans-serif; color: var(--ink); margin: 12px 16px; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 18px 0 4px; }
#status { margin: 4px 0 8px; } #status .bad, .summary .bad { color: var(--off); font-weight: 600; }
.summary .good { color: var(--on); font-weight: 600; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i, td.c { display: inline-block; width: 10px; height: 14px; vertical-align: middle; }
table.grid { border-collapse: collapse; margin-top: 6px; }
table.grid td, table.grid th { padding: 0 4px; white-space: nowrap; text-align: left; }
table.grid td.c { padding: 0; border: 1px solid #fff; display: table-cell; }
table.grid th.b { padding: 0; width: 11px; font-size: 8px; color: var(--muted); font-weight: normal; text-align: center; }
table.grid td.cov { padding: 0; font-size: 9px; text-align: center; color: var(--muted); }
table.grid td.cov.uncovered { background: var(--off); color: #fff; font-weight: 700; }
table.grid tr.srv:hover { background: #f3f6f8; }
.O { background: var(--on); } .J { background: var(--join); }
.F { background: repeating-linear-gradient(45deg, var(--off), var(--off) 2px, #f4c7c1 2px, #f4c7c1 4px); }
.A { background: var(--absent); } .A.U { background: #f6d5d1; }
.X { background: repeating-linear-gradient(45deg, #7d3c98, #7d3c98 2px, #e8d5f0 2px, #e8d5f0 4px); }
.st-UNREACHABLE { color: #7d3c98; font-weight: 600; }
.ours { background: #1f5fa8; color: #fff; border-radius: 3px; padding: 0 4px; font-size: 11px; margin-left: 4px; }
.clip { display: inline-block; max-width: 12em; overflow: hidden; text-overflow: ellipsis; vertical-align: bottom; }
.name { display: inline-block; max-width: 18em; overflow: hidden; text-overflow: ellipsis; vertical-align: bottom; }
.peer { color: var(--muted); font-family: ui-monospace, monospace; font-size: 11px; margin-left: 4px; }
.num { text-align: right !important; font-variant-numeric: tabular-nums; }
.st-ONLINE { color: var(--on); } .st-JOINING { color: #a07800; } .st-OFFLINE { color: var(--off); }
.muted { color: var(--muted); }
</style></head>
<body>
<h1>Petals swarm map</h1>
<div id="status" data-polls="0">loading&hellip;</div>
<div class="legend">
  <span><i class="O"></i> ONLINE</span><span><i class="J"></i> JOINING</span><span><i class="F"></i> OFFLINE</span>
  <span><i class="X"></i> ONLINE but unreachable</span><span><i class="A"></i> not held</span><span><i style="background:var(--off)"></i> block with no ONLINE server</span>
</div>
<div id="models"></div>
<script>
"use strict";
// Announced strings only ever reach the DOM as textContent or attribute values, never as markup.
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function ranges(blocks) {  // [0,1,2,5] -> "0:3, 5:6" (Petals' half-open ranges)
  const out = []; let start = null, prev = null;
  for (const b of blocks) {
    if (start === null) { start = prev = b; } else if (b === prev + 1) { prev = b; }
    else { out.push(start + ":" + (prev + 1)); start = prev = b; }
  }
  if (start !== null) out.push(start + ":" + (prev + 1));
  return out.join(", ");
}
function fmtAge(s) {
  if (s === null || s === undefined) return "no snapshot yet";
  if (s < 90) return s.toFixed(0) + " s";
  if (s < 5400) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function fmtNum(x, digits) { return (x === null || x === undefined) ? "?" : Number(x).toFixed(digits); }
const STATE = { O: "ONLINE", J: "JOINING", F: "OFFLINE", X: "ONLINE in the DHT, but did not answer our probe", ".": "not held" };
let last = null, fetchedAt = 0, drawnKey = null, polls = 0, failing = null;

function drawModel(m) {
  const sec = el("section", "model");
  sec.dataset.model = m.dht_prefix;
  sec.appendChild(el("h2", null, m.dht_prefix + (m.model !== m.dht_prefix ? "  (" + m.model + ")" : "")));
  const sum = el("div", "summary");
  const counts = m.servers_by_state;
  sum.appendChild(el("span", null, m.num_blocks + " blocks, " + m.servers.length + " servers (" +
    (counts.ONLINE || 0) + " ONLINE, " + (counts.JOINING || 0) + " JOINING, " + (counts.OFFLINE || 0) + " OFFLINE). "));
  if (m.unreachable_servers) {
    sum.appendChild(el("span", "bad unreachable-summary", m.unreachable_servers + " server(s) announce ONLINE but do not answer our probe: they count for no block. "));
  }
  if (m.uncovered_blocks.length) {
    sum.appendChild(el("span", "bad uncovered-summary", "Blocks with no ONLINE server: " + ranges(m.uncovered_blocks) +
      " (" + m.uncovered_blocks.length + "): no forward pass can be served."));
  } else {
    sum.appendChild(el("span", "good", "Every block has an ONLINE server."));
  }
  sec.appendChild(sum);

  const table = el("table", "grid");
  const head = el("tr");
  head.appendChild(el("th", null, "server"));
  head.appendChild(el("th", null, "state"));
  for (let b = 0; b < m.num_blocks; b++) {
    const th = el("th", "b", (m.num_blocks <= 40 || b % 5 === 0) ? b : "");
    th.title = "block " + b;
    head.appendChild(th);
  }
  for (const h of ["blocks", "throughput", "cache left", "version", "dtype", "quant", "relay", "probe", "its pings to next servers"]) head.appendChild(el("th", null, h));
  table.appendChild(head);

  const cov = el("tr", "coverage");
  cov.appendChild(el("td", "muted", "ONLINE servers per block"));
  cov.appendChild(el("td"));
  m.online_per_block.forEach((n, b) => {
    const td = el("td", "cov" + (n === 0 ? " uncovered" : ""), n === 0 ? "\u2717" : (n > 9 ? "+" : n));
    td.dataset.block = b; td.dataset.online = n;
    td.title = "block " + b + ": " + n + " ONLINE server(s)";
    cov.appendChild(td);
  });
  table.appendChild(cov);

  for (const s of m.servers) {
    const tr = el("tr", "srv");
    tr.dataset.peer = s.peer_id; tr.dataset.state = s.state;
    tr.dataset.reachable = s.reachable === null ? "" : String(s.reachable);
    const name = el("td");
    const shown = name.appendChild(el("span", "name", s.public_name || ""));
    if (s.public_name) shown.title = s.public_name;
    name.appendChild(el("span", "peer", "\u2026" + s.peer_id.slice(-8)));
    name.lastChild.title = s.peer_id;
    if (s.ours) { const o = el("span", "ours", "ours: " + s.ours); name.appendChild(o); tr.dataset.ours = s.ours; }
    tr.appendChild(name);
    const st = tr.appendChild(s.reachable === false ? el("td", "st-UNREACHABLE", s.state + " \u00b7 unreachable") : el("td", "st-" + s.state, s.state));
    if (s.probe_error) st.title = "probe: " + s.probe_error;
    const label = (s.public_name || s.peer_id);
    for (let b = 0; b < m.num_blocks; b++) {
      const ch = s.cells[b] || ".";
      const td = el("td", "c " + (ch === "." ? "A" : ch) + (m.online_per_block[b] === 0 ? " U" : ""));
      td.title = label + " \u2014 block " + b + ": " + (STATE[ch] || ch);
      tr.appendChild(td);
    }
    tr.appendChild(el("td", "num", s.start_block + ":" + s.end_block));
    tr.appendChild(el("td", "num", fmtNum(s.throughput, 1)));
    tr.appendChild(el("td", "num", s.cache_tokens_left === null ? "?" : s.cache_tokens_left));
    for (const text of [s.version, s.torch_dtype, s.quant_type]) {  // announced: clipped, full text on hover
      const td = el("td"), span = td.appendChild(el("span", "clip", text || "?"));
      if (text) span.title = text;
      tr.appendChild(td);
    }
    tr.appendChild(el("td", null, s.using_relay === null ? "?" : (s.using_relay ? "relay" : "direct")));
    const probe = tr.appendChild(el("td", "num probe", s.reachable === null ? "" : (s.reachable ? fmtNum(s.probe_ms, 0) + " ms" : "\u2717")));
    if (s.probe_error) probe.title = s.probe_error;
    const pings = tr.appendChild(el("td", "pings muted", s.next_pings.map(([p, ms]) => "\u2026" + p.slice(-6) + " " + (ms === null ? "\u2717" : fmtNum(ms, 0) + " ms")).join(", ")));
    pings.title = "round trips this server measured to servers of its next blocks (petals' next_pings)";
    table.appendChild(tr);
  }
  sec.appendChild(table);
  return sec;
}

function drawStatus() {
  const st = document.getElementById("status");
  st.replaceChildren();
  st.dataset.polls = polls;
  if (failing) st.appendChild(el("span", "bad", "Exporter unreachable (" + failing + "); showing the last map. "));
  if (!last) return;
  const ex = last.exporter;
  const age = last.snapshot_age_seconds === null ? null : last.snapshot_age_seconds + (Date.now() - fetchedAt) / 1000;
  st.appendChild(el("span", ex.up ? null : "bad", ex.up ? "Swarm reachable. " : "Latest DHT walk failed: " + (ex.last_error || "?") + ". "));
  st.appendChild(el("span", "age", "Snapshot age: " + fmtAge(age) + " (DHT walk every " + ex.refresh_interval + " s). "));
  if (ex.bootstrap && ex.bootstrap.length) {
    const down = ex.bootstrap.filter(b => !b.alive);
    const b = st.appendChild(el("span", down.length ? "bad" : null, "Bootstrap peers: " + (ex.bootstrap.length - down.length) + "/" + ex.bootstrap.length + " alive" +
      down.map(d => "; DOWN " + d.address + " (" + (d.error || "?") + ")").join("") + ". "));
    b.id = "bootstrap"; b.dataset.down = down.length;
  }
  if (!ex.inventory) st.appendChild(el("span", "muted", "No --inventory given: \u2018ours\u2019 marks only the local swarm's servers."));
}

function draw() {
  const key = last.exporter.refreshes + "|" + last.models.map(m => m.taken_at).join(",");
  if (key !== drawnKey) {
    const box = document.getElementById("models");
    if (!last.models.length) box.replaceChildren(el("p", "muted", "No snapshot yet: waiting for the first DHT walk."));
    else box.replaceChildren(...last.models.map(drawModel));
    drawnKey = key;
    document.body.dataset.drawn = key;
  }
  drawStatus();
}

async function poll() {
  try {
    const r = await fetch("map.json", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    last = await r.json(); fetchedAt = Date.now(); failing = null;
  } catch (e) {
    failing = String(e.message || e);
  }
  polls += 1;
  if (last) draw(); else drawStatus();
  const every = last ? Math.min(Math.max(last.exporter.refresh_interval, 1), 10) : 2;
  setTimeout(poll, every * 1000);
}
setInterval(() => { if (last) drawStatus(); }, 1000);
poll();
</script>
</body></html>
"""  # noqa: E501


def page_bytes() -> bytes:
    return PAGE.encode()
