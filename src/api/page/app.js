// liqwatch live risk page. Plain JavaScript, no build step; reads the daemon's own API.
// Figures arrive as exact decimal strings; they are rounded only for display, and the exact
// value stays in each cell's data-exact attribute (and its tooltip).
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "liqwatch.token";
const BASE_TITLE = "liqwatch — risk";
const MAX_EVENTS = 2000;

const ui = {
  sort: "ratio",
  order: "desc",
  filter: "",
  state: "any",
  offset: 0,
  limit: 50,
  total: 0,
  selected: null,
  events: [], // newest last, bounded
  lastSeq: null,
  triggered: 0,
  alarmAccount: null,
  acked: false,
  streamUp: false,
  detailEvents: [], // the drill-down's events from the journal, newest first
  detailNext: null, // before_seq of the next older page, null when none
  detailPaged: false, // older pages were opened
  riskAt: 0, // when the drill-down's VaR was last asked for
};

// ------------------------------------------------------------------------------------------
// API access (bearer token asked once, kept in sessionStorage)
// ------------------------------------------------------------------------------------------

let tokenWaiters = null;

function askToken() {
  if (!tokenWaiters) {
    tokenWaiters = [];
    const form = $("#auth");
    form.hidden = false;
    $("#auth-token").focus();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  const t = sessionStorage.getItem(TOKEN_KEY);
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

async function api(path, method) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const r = await fetch(path, { method: method || "GET", headers: authHeaders({ Accept: "application/json" }) });
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      await askToken();
      continue;
    }
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      const msg = body && body.error ? body.error.message : r.statusText;
      const err = new Error(r.status + ": " + msg);
      err.status = r.status;
      throw err;
    }
    return body;
  }
  throw new Error("401: the token was refused three times");
}

// ------------------------------------------------------------------------------------------
// Formatting (display only)
// ------------------------------------------------------------------------------------------

function num(s) {
  return s === null || s === undefined ? NaN : s === "inf" ? Infinity : Number(s);
}

function money(s) {
  const n = num(s);
  if (!isFinite(n)) return s === "inf" ? "∞" : "–";
  return n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function price(s) {
  const n = num(s);
  if (!isFinite(n)) return "–";
  if (Math.abs(n) >= 1) return money(s);
  return n.toPrecision(6).replace(/0+$/, "").replace(/\.$/, "");
}

function pct(s, dp) {
  const n = num(s);
  if (n === Infinity) return "∞";
  if (!isFinite(n)) return "–";
  // A hedged book's trigger can sit at prices ×5,000; past +1,000 % the digits say nothing a
  // desk acts on (the exact figure stays in the cell's title).
  if (n > 10) return "> +1,000 %";
  const v = (n * 100).toFixed(dp === undefined ? 2 : dp);
  return (n > 0 ? "+" : "") + v + " %";
}

function ratioPct(s) {
  const n = num(s);
  if (n === Infinity) return "∞ (equity ≤ 0)";
  if (!isFinite(n)) return "–";
  return (n * 100).toFixed(2) + " %";
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}

function timeText(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function stateText(st) {
  if (!st) return "–";
  if (st.state === "warning") return "WARNING " + ratioPct(st.level);
  if (st.state === "triggered") return "TRIGGERED";
  return "healthy";
}

const KIND_TEXT = {
  liquidation_warning: "warning",
  liquidation_trigger: "TRIGGER",
  recovered: "recovered",
  feed_stale: "feed stale",
  feed_restored: "feed restored",
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "title" || k === "tabindex" || k === "scope" || k === "colspan") e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function exactCell(label, text, exact, cls) {
  return el("td", { "data-label": label, "data-exact": exact, title: exact || null, class: cls }, text);
}

// ------------------------------------------------------------------------------------------
// Margin ratio bar with warning and trigger marks (SVG)
// ------------------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function levelsOf(view) {
  const l = view.levels || { warning_levels: ["0.8"], trigger: "1" };
  return { warnings: (l.warning_levels || []).map(Number), trigger: Number(l.trigger) };
}

function ratioBar(view) {
  const { warnings, trigger } = levelsOf(view);
  const r = num(view.snapshot.margin_ratio);
  const scale = Math.max(trigger * 1.25, 0.0001);
  const w = 120, h = 14;
  const frac = r === Infinity ? 1 : Math.max(0, Math.min(1, r / scale));
  const s = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, class: "bar", "aria-hidden": "true" });
  s.append(svg("rect", { x: 0, y: 2, width: w, height: h - 4, class: "bar-bg" }));
  const kind = view.state.state;
  s.append(svg("rect", { x: 0, y: 2, width: (w * frac).toFixed(1), height: h - 4, class: "bar-fill " + kind }));
  for (const lv of warnings) {
    const x = (w * Math.min(1, lv / scale)).toFixed(1);
    s.append(svg("line", { x1: x, x2: x, y1: 0, y2: h, class: "mark-warning" }));
  }
  const tx = (w * Math.min(1, trigger / scale)).toFixed(1);
  s.append(svg("line", { x1: tx, x2: tx, y1: 0, y2: h, class: "mark-trigger" }));
  const label = `${ratioPct(view.snapshot.margin_ratio)} (warning at ${warnings.map((x) => (x * 100).toFixed(0) + " %").join(", ") || "none"}, trigger at ${(trigger * 100).toFixed(0)} %)`;
  const td = el("td", { "data-label": "Margin ratio", "data-exact": view.snapshot.margin_ratio, title: label, class: "ratio" });
  td.append(s, el("span", { class: "ratio-text", text: ratioPct(view.snapshot.margin_ratio) }));
  td.append(el("span", { class: "vh", text: " " + label }));
  return td;
}

function nearestLiquidation(snapshot) {
  let best = null;
  for (const p of snapshot.positions || []) {
    if (!p.liquidation_price) continue;
    const mark = num(p.mark_price);
    if (!(mark > 0)) continue;
    const rel = num(p.liquidation_price) / mark - 1;
    if (!best || Math.abs(rel) < Math.abs(best.rel)) best = { p, rel };
  }
  return best;
}

// ------------------------------------------------------------------------------------------
// Accounts table
// ------------------------------------------------------------------------------------------

function accountsQuery() {
  const q = new URLSearchParams({ sort: ui.sort, order: ui.order, offset: ui.offset, limit: ui.limit });
  if (ui.filter) q.set("filter", ui.filter);
  if (ui.state !== "any") q.set("state", ui.state);
  return "/v1/accounts?" + q;
}

let accountsBusy = false;
let accountsAgain = false;

async function refreshAccounts() {
  if (accountsBusy) {
    accountsAgain = true;
    return;
  }
  accountsBusy = true;
  try {
    const body = await api(accountsQuery());
    ui.total = body.total || 0;
    renderAccounts(body.accounts);
    renderIncomplete(body.incomplete);
  } catch (e) {
    $("#page-info").textContent = "accounts unavailable: " + e.message;
  } finally {
    accountsBusy = false;
    if (accountsAgain) {
      accountsAgain = false;
      refreshAccounts();
    }
  }
}

function renderAccounts(rows) {
  const tb = $("#accounts-body");
  const frag = document.createDocumentFragment();
  if (!rows.length) {
    frag.append(el("tr", {}, el("td", { colspan: "9", text: "No account matches." })));
  }
  for (const v of rows) {
    const s = v.snapshot;
    const kind = v.state.state;
    const tr = el("tr", {
      class: "row " + kind + (ui.selected === v.account_id ? " selected" : ""),
      "data-account": v.account_id,
      "data-state": kind,
      tabindex: "0",
      "aria-label": `Account ${v.account_id}, ${stateText(v.state)}, margin ratio ${ratioPct(s.margin_ratio)}` +
        (s.margin_call ? `, margin call ${money(s.margin_call.deposit)}` : "") + "; press Enter for details",
    });
    tr.append(el("th", { scope: "row", "data-label": "Account" }, v.account_id));
    tr.append(el("td", { "data-label": "State", class: "state " + kind },
      el("span", { class: "badge " + kind, text: stateText(v.state) }),
      v.stale_prices ? el("span", { class: "badge stale", text: "stale prices" }) : null));
    tr.append(ratioBar(v));
    const sd = s.shock_distance || {};
    const sdText = sd.nearest ? (kind === "triggered" ? "recovers " + pct(sd.nearest) : pct(sd.nearest)) : "unreachable";
    tr.append(exactCell("Shock to trigger", sdText, sd.nearest || ""));
    const nl = nearestLiquidation(s);
    tr.append(exactCell("Nearest liquidation",
      nl ? `${nl.p.instrument} ${price(nl.p.liquidation_price)} (${pct(String(nl.rel))})` : "–",
      nl ? nl.p.liquidation_price : ""));
    tr.append(exactCell("Equity", money(s.equity), s.equity, "num"));
    tr.append(exactCell("Maint. margin", money(s.maintenance_margin), s.maintenance_margin, "num"));
    // In warning or triggered: what to ask the client for (the API's `snapshot.margin_call`).
    const mc = s.margin_call;
    tr.append(exactCell("Margin call", mc ? money(mc.deposit) : "–", mc ? mc.deposit : "", "num"));
    const le = v.last_event;
    tr.append(el("td", { "data-label": "Last event" },
      le ? `${KIND_TEXT[le.kind] || le.kind} ${timeText(le.time_ms)}` : "–"));
    tr.addEventListener("click", () => select(v.account_id));
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        select(v.account_id);
      }
    });
    frag.append(tr);
  }
  tb.replaceChildren(frag);
  const first = ui.total ? ui.offset + 1 : 0;
  const last = Math.min(ui.offset + rows.length, ui.total);
  $("#page-info").textContent = `rows ${first}–${last} of ${ui.total}`;
  $("#prev").disabled = ui.offset === 0;
  $("#next").disabled = ui.offset + ui.limit >= ui.total;
}

// Accounts the daemon cannot value now (an instrument without a price): on no page, so named
// under the table rather than silently missing.
function renderIncomplete(inc) {
  const p = $("#incomplete");
  const count = (inc && inc.count) || 0;
  if (!count) {
    p.hidden = true;
    p.textContent = "";
    return;
  }
  // Each name links to the account's drill-down (`#account=ID`), which says why.
  const parts = [`${count} account${count === 1 ? "" : "s"} cannot be valued now and ${count === 1 ? "is" : "are"} not ranked: `];
  inc.accounts.forEach((a, i) => {
    if (i) parts.push(", ");
    parts.push(el("a", { href: "#account=" + encodeURIComponent(a.account_id), "data-account": a.account_id, text: a.account_id }));
    parts.push(` (${a.reason})`);
  });
  if (count > inc.accounts.length) parts.push(` and ${count - inc.accounts.length} more`);
  parts.push(".");
  p.replaceChildren(...parts);
  p.hidden = false;
}

function setSort(key) {
  if (ui.sort === key) ui.order = ui.order === "desc" ? "asc" : "desc";
  else {
    ui.sort = key;
    // Ids read A→Z; every other key starts riskiest first (for distance: closest first).
    ui.order = key === "id" ? "asc" : "desc";
  }
  ui.offset = 0;
  for (const b of document.querySelectorAll("button.sort")) {
    const th = b.closest("th");
    // Riskiest first is descending for every key but the distance, where it is the smallest.
    const down = (ui.order === "desc") !== (ui.sort === "distance");
    th.setAttribute("aria-sort", b.dataset.sort === ui.sort ? (down ? "descending" : "ascending") : "none");
  }
  refreshAccounts();
}

// ------------------------------------------------------------------------------------------
// Triggered count → document title
// ------------------------------------------------------------------------------------------

async function refreshTriggered() {
  try {
    const body = await api("/v1/accounts?state=triggered&limit=1");
    ui.triggered = body.total || 0;
    if (ui.triggered > 0 && !ui.alarmAccount && body.accounts.length) {
      raiseAlarm(body.accounts[0].account_id, null);
    }
    if (ui.triggered === 0) clearAlarm();
  } catch (_) {
    /* shown by the accounts table */
  }
  updateTitle();
}

function updateTitle() {
  const down = ui.streamUp ? "" : " (stream disconnected)";
  if (ui.triggered > 0 || ui.alarmAccount) {
    const n = Math.max(ui.triggered, 1);
    document.title = `⚠ ${n} TRIGGERED — ${BASE_TITLE}${down}`;
    document.body.classList.add("triggered");
  } else {
    document.title = BASE_TITLE + down;
    document.body.classList.remove("triggered");
  }
}

function raiseAlarm(account, ev) {
  ui.alarmAccount = account;
  const when = ev ? " at " + ev.time : "";
  const ratio = ev && ev.snapshot ? ", margin ratio " + ratioPct(ev.snapshot.margin_ratio) : "";
  $("#alarm-text").textContent = `TRIGGER: account ${account} reached its trigger level${ratio}${when}.`;
  const a = $("#alarm");
  if (!ui.acked || ev) {
    a.hidden = false;
    ui.acked = false;
  }
  updateTitle();
}

function clearAlarm() {
  ui.alarmAccount = null;
  $("#alarm").hidden = true;
}

// ------------------------------------------------------------------------------------------
// Feeds
// ------------------------------------------------------------------------------------------

async function refreshFeeds() {
  let body;
  try {
    body = await api("/v1/feeds");
  } catch (e) {
    $("#feeds-body").replaceChildren(el("tr", {}, el("td", { colspan: "8", text: "feeds unavailable: " + e.message })));
    return;
  }
  const frag = document.createDocumentFragment();
  for (const f of body.feeds) {
    const sorted = [...f.instruments].sort((a, b) => (a.instrument < b.instrument ? -1 : a.instrument > b.instrument ? 1 : 0));
    const insts = sorted.length ? sorted : [null];
    for (const i of insts) {
      let status = "–";
      let cls = "";
      if (i) {
        const rejected = (f.rejected_symbols || []).includes(i.symbol);
        const unconfirmed = (f.unconfirmed_symbols || []).includes(i.symbol);
        const waiting = !f.connected ? "not subscribed (feed disconnected)"
          : rejected ? "REJECTED by the venue (retried)"
          : unconfirmed ? "not subscribed (no first price; retried)"
          : "subscribing (waiting for a first price)";
        // A replay has no connection and subscribes nothing: only its prices' age counts.
        const live = f.replay || i.subscribed;
        status = !live ? waiting
          : i.stale ? (i.last_price ? "STALE" : f.replay ? "no price yet in the recording" : "STALE (no price yet)")
          : f.replay ? "fresh (replayed)" : "fresh";
        cls = !live || i.stale ? "stale" : "fresh";
        if (i.held_price) {
          status += ", HELD " + price(i.held_price) + " (possible spike, awaiting confirmation)";
          cls = "stale";
        }
      }
      frag.append(el("tr", { class: "feed " + cls, "data-venue": f.venue, "data-instrument": i ? i.instrument : "" },
        el("th", { scope: "row", "data-label": "Venue" }, f.venue),
        el("td", { "data-label": "Connection" }, f.replay ? (f.replay_finished_ms ? "replay, finished" : "replay") : f.connected ? "connected" : "DISCONNECTED"),
        el("td", { "data-label": "Reconnects", class: "num" }, f.reconnects),
        el("td", { "data-label": "Instrument" }, i ? i.instrument : "–"),
        el("td", { "data-label": "Symbol" }, i ? i.symbol : "–"),
        exactCell("Price", i && i.last_price ? price(i.last_price) : "–", i ? i.last_price : "", "num"),
        el("td", { "data-label": "Age", class: "num" }, i ? ago(i.age_ms) : "–"),
        el("td", { "data-label": "Status", class: "feed-status" }, el("span", { class: "badge " + cls, text: status }))));
    }
  }
  $("#feeds-body").replaceChildren(frag);
  const notes = document.createDocumentFragment();
  for (const f of body.feeds) {
    const rej = f.rejected_symbols || [];
    const unc = f.unconfirmed_symbols || [];
    if (rej.length) notes.append(el("li", { class: "rejected", text: `${f.venue}: rejected symbols ${rej.join(", ")}` }));
    if (unc.length) notes.append(el("li", { class: "rejected", text: `${f.venue}: no first price (unconfirmed) ${unc.join(", ")}` }));
  }
  if (!notes.childNodes.length) notes.append(el("li", { text: "No rejected or unconfirmed symbols." }));
  $("#feeds-notes").replaceChildren(notes);
}

// ------------------------------------------------------------------------------------------
// Delivery: each sink's state, lag and failures (is the desk's Slack or pager still fed?)
// ------------------------------------------------------------------------------------------

const SINK_STATE_TEXT = {
  starting: "starting", idle: "up to date", delivering: "delivering a backlog",
  retrying: "RETRYING", stuck: "STUCK", stopped: "stopped",
};

async function refreshSinks() {
  let body;
  try {
    body = await api("/v1/sinks");
  } catch (e) {
    $("#sinks-body").replaceChildren(el("tr", {}, el("td", { colspan: "8", text: "sinks unavailable: " + e.message })));
    return;
  }
  const frag = document.createDocumentFragment();
  for (const k of body.sinks) {
    const cls = k.state === "stuck" ? "triggered"
      : k.state === "retrying" || k.dead_letters > 0 ? "warning" : "fresh";
    const since = k.last_delivery_ms ? ago(Date.now() - k.last_delivery_ms) + " ago" : "never";
    frag.append(el("tr", { class: "sink " + cls, "data-sink": k.sink, "data-state": k.state, "data-lag": String(k.lag) },
      el("th", { scope: "row", "data-label": "Sink" }, k.sink),
      el("td", { "data-label": "State" }, el("span", { class: "badge " + cls, text: SINK_STATE_TEXT[k.state] || k.state })),
      el("td", { "data-label": "Lag", class: "num" }, k.lag),
      el("td", { "data-label": "Delivered", class: "num" }, k.delivered),
      el("td", { "data-label": "Retries", class: "num" }, k.retries),
      el("td", { "data-label": "Dead letters", class: "num" }, k.dead_letters),
      el("td", { "data-label": "Last delivery" }, since),
      el("td", { "data-label": "Last error" }, k.last_error || "–")));
  }
  if (!body.sinks.length) {
    frag.append(el("tr", {}, el("td", { colspan: "8", text: "No sinks configured: events are journaled only." })));
  }
  $("#sinks-body").replaceChildren(frag);
  // What to do about dead letters: list them, then send them again once the receiver is fixed.
  const notes = document.createDocumentFragment();
  for (const k of body.sinks) {
    if (k.dead_letters > 0) {
      const n = k.dead_letters === 1 ? "1 dead letter" : `${k.dead_letters} dead letters`;
      const last = k.last_dead_letter_ms ? `, the last ${ago(Date.now() - k.last_dead_letter_ms)} ago` : "";
      const asked = redeliverAsked[k.sink];
      notes.append(el("li", { class: "rejected", "data-sink": k.sink,
        text: `${k.sink} holds ${n} (events its receiver refused for good${last}): ` +
          `liqwatch journal dead-letters --sink ${k.sink} lists them; once the receiver is fixed, ` +
          `POST /v1/sinks/${k.sink}/redeliver sends them again. ` },
        el("button", { type: "button", class: "redeliver", "data-sink": k.sink, text: "Send again",
          disabled: asked === REDELIVER_PENDING, onclick: () => redeliver(k.sink) }),
        asked ? el("span", { class: "redeliver-status", role: "status", text: " " + asked }) : null));
    }
  }
  $("#sinks-notes").replaceChildren(notes);
}

// What the last "Send again" of each sink answered, kept across the table's refreshes.
const redeliverAsked = {};
const REDELIVER_PENDING = "asking…";

// Asks the sink to deliver its dead letters again (a mutation: the daemon's token is asked for
// if it wants one). The answer is how many it holds now; the driver sends them between two
// batches, and the next refreshes show what is left.
async function redeliver(sink) {
  redeliverAsked[sink] = REDELIVER_PENDING;
  refreshSinks();
  try {
    const r = await api(`/v1/sinks/${encodeURIComponent(sink)}/redeliver`, "POST");
    const n = r.dead_letters === 1 ? "its 1 dead letter" : `its ${r.dead_letters} dead letters`;
    redeliverAsked[sink] = `Asked at ${new Date().toISOString().slice(11, 19)}Z: the sink sends ${n} again, ` +
      "oldest first; one its receiver refuses again stays here.";
  } catch (e) {
    redeliverAsked[sink] = "Not asked: " + e.message;
  }
  refreshSinks();
}

// ------------------------------------------------------------------------------------------
// Live events: SSE over fetch() (headers allowed, so a token works), resumed by Last-Event-ID
// ------------------------------------------------------------------------------------------

function eventItem(e) {
  const who = e.account_id ? "account " + e.account_id : e.feed ? "feed " + (e.feed.instrument || JSON.stringify(e.feed)) : "";
  const call = e.snapshot && e.snapshot.margin_call ? ", margin call " + money(e.snapshot.margin_call.deposit) : "";
  const detail = e.snapshot ? ", ratio " + ratioPct(e.snapshot.margin_ratio) + call : "";
  const kind = KIND_TEXT[e.kind] || e.kind;
  return el("li", { class: "ev " + e.kind, "data-seq": e.seq },
    el("span", { class: "badge " + e.kind, text: kind }), ` ${who}${detail} — ${e.time || ""}`);
}

function onEvent(seq, kind, data) {
  let e;
  try {
    e = JSON.parse(data);
  } catch (_) {
    return;
  }
  if (kind === "resync" || kind === "error") return;
  e.seq = seq;
  ui.events.push(e);
  if (ui.events.length > MAX_EVENTS) ui.events.splice(0, ui.events.length - MAX_EVENTS);
  const list = $("#events");
  list.prepend(eventItem(e));
  while (list.children.length > 100) list.lastChild.remove();
  if (e.kind === "liquidation_trigger" && e.account_id) raiseAlarm(e.account_id, e);
  if (e.account_id) {
    refreshAccounts();
    refreshTriggered();
    if (e.account_id === ui.selected) refreshDetail();
  }
  if (e.kind === "feed_stale" || e.kind === "feed_restored") refreshFeeds();
}

function setStream(up, text) {
  ui.streamUp = up;
  const s = $("#stream-status");
  s.dataset.state = up ? "live" : "down";
  s.textContent = text;
  document.body.classList.toggle("stream-down", !up);
  updateTitle();
}

async function streamOnce() {
  const headers = authHeaders({ Accept: "text/event-stream" });
  let url = "/v1/events/stream";
  if (ui.lastSeq !== null) headers["Last-Event-ID"] = String(ui.lastSeq);
  else url += "?since=" + encodeURIComponent(new Date(Date.now() - 6 * 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z"));
  const r = await fetch(url, { headers, cache: "no-store" });
  if (r.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken();
    return;
  }
  if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
  setStream(true, "Event stream: live");
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  let id = null, kind = "message", data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      let line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (data.length) {
          if (id !== null) ui.lastSeq = Number(id);
          onEvent(id === null ? null : Number(id), kind, data.join("\n"));
        }
        id = null; kind = "message"; data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const c = line.indexOf(":");
      const field = c < 0 ? line : line.slice(0, c);
      const val = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
      if (field === "id") id = val;
      else if (field === "event") kind = val;
      else if (field === "data") data.push(val);
    }
  }
}

async function streamLoop() {
  let delay = 500;
  for (;;) {
    try {
      await streamOnce();
      delay = 500;
    } catch (_) {
      /* reconnect below */
    }
    for (let left = Math.ceil(delay / 1000); left > 0; left--) {
      setStream(false, `Event stream: DISCONNECTED — reconnecting in ${left} s`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    setStream(false, "Event stream: DISCONNECTED — reconnecting…");
    delay = Math.min(delay * 2, 10000);
  }
}

// ------------------------------------------------------------------------------------------
// Wiring
// ------------------------------------------------------------------------------------------

// The table refreshes every second, or less often when a page takes the daemon long to rank
// (a very large book): the next refresh waits at least four times the last one's duration.
async function accountsLoop() {
  for (;;) {
    const t0 = performance.now();
    if (!document.hidden) await refreshAccounts();
    const took = performance.now() - t0;
    await new Promise((r) => setTimeout(r, Math.max(1000, 4 * took)));
  }
}

function every(ms, f) {
  f();
  setInterval(() => {
    if (!document.hidden) f();
  }, ms);
}

function init() {
  $("#auth").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#auth-token").value);
    $("#auth-token").value = "";
    $("#auth").hidden = true;
    const w = tokenWaiters || [];
    tokenWaiters = null;
    for (const r of w) r();
  });
  for (const b of document.querySelectorAll("button.sort")) b.addEventListener("click", () => setSort(b.dataset.sort));
  let filterTimer = null;
  $("#filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      ui.filter = $("#filter").value.trim();
      ui.offset = 0;
      refreshAccounts();
    }, 200);
  });
  $("#state-filter").addEventListener("change", () => {
    ui.state = $("#state-filter").value;
    ui.offset = 0;
    refreshAccounts();
  });
  $("#page-size").addEventListener("change", () => {
    ui.limit = Number($("#page-size").value);
    ui.offset = 0;
    refreshAccounts();
  });
  $("#prev").addEventListener("click", () => {
    ui.offset = Math.max(0, ui.offset - ui.limit);
    refreshAccounts();
  });
  $("#next").addEventListener("click", () => {
    if (ui.offset + ui.limit < ui.total) ui.offset += ui.limit;
    refreshAccounts();
  });
  $("#detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && ui.selected) closeDetail();
  });
  $("#detail-events-more").addEventListener("click", olderDetailEvents);
  $("#whatif-shock").addEventListener("input", scheduleWhatIf);
  $("#whatif-underlying").addEventListener("change", whatIf);
  $("#whatif").addEventListener("submit", (e) => e.preventDefault());
  $("#alarm-ack").addEventListener("click", () => {
    ui.acked = true;
    $("#alarm").hidden = true;
  });
  // A link to an account (`#account=ID`) opens it, at load and when the address changes.
  const fromHash = () => {
    const id = accountInHash();
    if (id && id !== ui.selected) select(id);
  };
  window.addEventListener("hashchange", fromHash);
  fromHash();
  accountsLoop();
  every(2000, refreshTriggered);
  every(2000, refreshFeeds);
  every(2000, refreshSinks);
  every(3000, refreshDetail);
  setInterval(() => {
    $("#clock").textContent = new Date().toISOString().slice(11, 19) + "Z";
  }, 1000);
  streamLoop();
}

document.addEventListener("DOMContentLoaded", init);
