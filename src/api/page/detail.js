// liqwatch live risk page: the account drill-down (summary, positions, collateral, history
// chart, events) and the what-if slider. Loaded before app.js, which holds the shared state and
// helpers (ui, $, api, el, formatting) and wires these functions to the page.
"use strict";

// ------------------------------------------------------------------------------------------
// Drill-down
// ------------------------------------------------------------------------------------------

// The open account is in the address (`#account=ID`): a link to it opens it, and reloading
// the page keeps it open.
function accountInHash() {
  const m = /^#account=(.+)$/.exec(location.hash);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch (e) {
    return null;
  }
}

function select(id) {
  ui.selected = id;
  if (accountInHash() !== id) history.replaceState(null, "", "#account=" + encodeURIComponent(id));
  $("#detail").hidden = false;
  $("#detail-id").textContent = id;
  $("#whatif-shock").value = "0";
  $("#whatif-underlying").replaceChildren(el("option", { value: "all", text: "every asset" }));
  $("#whatif-result").replaceChildren();
  $("#detail-events").replaceChildren();
  $("#detail-events-more").hidden = true;
  ui.detailEvents = [];
  ui.detailNext = null;
  ui.detailPaged = false;
  for (const tr of document.querySelectorAll("#accounts-body tr")) {
    tr.classList.toggle("selected", tr.dataset.account === id);
  }
  refreshDetail();
  refreshRisk();
  whatIf();
  $("#detail-h").scrollIntoView({ block: "start" });
  $("#detail-close").focus();
}

function closeDetail() {
  const id = ui.selected;
  ui.selected = null;
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  $("#detail").hidden = true;
  const row = id && document.querySelector(`#accounts-body tr[data-account="${CSS.escape(id)}"]`);
  if (row) row.focus();
}

function kv(dl, pairs) {
  const frag = document.createDocumentFragment();
  for (const [k, text, exact, id] of pairs) {
    frag.append(el("dt", { text: k }), el("dd", { "data-exact": exact, title: exact || null, id: id || null, text }));
  }
  dl.replaceChildren(frag);
}

async function refreshDetail() {
  const id = ui.selected;
  if (!id) return;
  let v, h, evs;
  try {
    [v, h, evs] = await Promise.all([
      api("/v1/accounts/" + encodeURIComponent(id)),
      api("/v1/accounts/" + encodeURIComponent(id) + "/history"),
      api("/v1/accounts/" + encodeURIComponent(id) + "/events?limit=" + DETAIL_EVENTS),
    ]);
  } catch (e) {
    $("#detail-summary").replaceChildren(el("dd", { text: e.message }));
    return;
  }
  if (ui.selected !== id) return;
  const s = v.snapshot;
  const sd = s.shock_distance || {};
  kv($("#detail-summary"), [
    ["State", stateText(v.state), v.state.state],
    ["Equity", money(s.equity), s.equity],
    ["Maintenance margin", money(s.maintenance_margin), s.maintenance_margin],
    ["Margin ratio", ratioPct(s.margin_ratio), s.margin_ratio],
    ["Free margin", money(s.free_margin), s.free_margin],
    // In warning or triggered: what the client must deposit (counted at 100 %) to recover.
    ...(s.margin_call ? [["Margin call", `deposit ${money(s.margin_call.deposit)} to bring the ratio under ${ratioPct(s.margin_call.below_ratio)}`, s.margin_call.deposit]] : []),
    ["Shock to trigger (down / up)", `${sd.down ? pct(sd.down) : "–"} / ${sd.up ? pct(sd.up) : "–"}`, sd.nearest || ""],
    // The next funding payment and the ratio once paid (only when a funding rate is known).
    ...(s.funding ? [["Next funding → ratio after", `${money(s.funding.total)} → ${ratioPct(s.funding.margin_ratio_after)}`, s.funding.total]] : []),
    ["Prices", v.stale_prices ? "some STALE" : "all fresh", String(v.stale_prices)],
  ]);
  const pos = document.createDocumentFragment();
  for (const p of s.positions) {
    pos.append(el("tr", {},
      el("th", { scope: "row", "data-label": "Instrument" }, p.instrument + (p.side !== "both" ? " / " + p.side : "")),
      exactCell("Qty", p.quantity, p.quantity, "num"),
      exactCell("Entry", price(p.entry_price), p.entry_price, "num"),
      exactCell("Mark", price(p.mark_price), p.mark_price, "num"),
      exactCell("uPnL", money(p.unrealized_pnl), p.unrealized_pnl, "num"),
      exactCell("MM", money(p.maintenance_margin), p.maintenance_margin, "num"),
      exactCell("Liq. price ↓", p.liquidation_price_down ? price(p.liquidation_price_down) : "none", p.liquidation_price_down || "", "num"),
      exactCell("Liq. price ↑", p.liquidation_price_up ? price(p.liquidation_price_up) : "none", p.liquidation_price_up || "", "num")));
  }
  if (!s.positions.length) pos.append(el("tr", {}, el("td", { colspan: "8", text: "No positions." })));
  $("#positions tbody").replaceChildren(pos);
  const col = document.createDocumentFragment();
  for (const c of s.collateral) {
    const gross = num(c.amount) * num(c.price);
    const haircut = gross > 0 ? (1 - num(c.value) / gross) : 0;
    col.append(el("tr", {},
      el("th", { scope: "row", "data-label": "Asset" }, c.asset),
      exactCell("Amount", c.amount, c.amount, "num"),
      exactCell("Price", price(c.price), c.price, "num"),
      exactCell("Value after haircut", money(c.value), c.value, "num"),
      el("td", { "data-label": "Haircut", class: "num" }, (haircut * 100).toFixed(2) + " %")));
  }
  if (!s.collateral.length) col.append(el("tr", {}, el("td", { colspan: "5", text: "No collateral." })));
  $("#collateral tbody").replaceChildren(col);
  renderHistory(h.points, v);
  // The newest page replaces what was shown, unless older pages were opened: then only the
  // events newer than the shown ones go on top.
  const fresh = evs.events.map((x) => Object.assign({}, x.event, { seq: x.seq }));
  if (ui.detailPaged) {
    const top = ui.detailEvents.length ? ui.detailEvents[0].seq : -1;
    ui.detailEvents = fresh.filter((e) => e.seq > top).concat(ui.detailEvents);
  } else {
    ui.detailEvents = fresh;
    ui.detailNext = evs.next_before_seq;
  }
  renderDetailEvents();
  if (Date.now() - (ui.riskAt || 0) > RISK_EVERY_MS) refreshRisk();
}

// The drill-down's events come from the journal (GET /v1/accounts/{id}/events), newest first,
// so they reach back past the page's own stream and past restarts of the daemon.
const DETAIL_EVENTS = 50;

function renderDetailEvents() {
  const frag = document.createDocumentFragment();
  for (const e of ui.detailEvents) frag.append(eventItem(e));
  if (!ui.detailEvents.length) frag.append(el("li", { text: "No event journaled for this account." }));
  $("#detail-events").replaceChildren(frag);
  $("#detail-events-more").hidden = ui.detailNext === null || ui.detailNext === undefined;
}

async function olderDetailEvents() {
  const id = ui.selected;
  if (!id || ui.detailNext === null || ui.detailNext === undefined) return;
  let evs;
  try {
    evs = await api(`/v1/accounts/${encodeURIComponent(id)}/events?limit=${DETAIL_EVENTS}&before_seq=${ui.detailNext}`);
  } catch (e) {
    $("#detail-events").append(el("li", { text: "older events unavailable: " + e.message }));
    return;
  }
  if (ui.selected !== id) return;
  ui.detailPaged = true;
  ui.detailEvents = ui.detailEvents.concat(evs.events.map((x) => Object.assign({}, x.event, { seq: x.seq })));
  ui.detailNext = evs.next_before_seq;
  renderDetailEvents();
}

// ------------------------------------------------------------------------------------------
// VaR, ES and P(liquidation) (GET /v1/accounts/{id}/risk, when [risk] is configured)
// ------------------------------------------------------------------------------------------

// Thousands of scenarios per call: refreshed on opening and at most this often after.
const RISK_EVERY_MS = 15000;

async function refreshRisk() {
  const id = ui.selected;
  if (!id) return;
  ui.riskAt = Date.now();
  const dl = $("#risk-result");
  const table = $("#risk-components");
  let r;
  try {
    r = await api(`/v1/accounts/${encodeURIComponent(id)}/risk`);
  } catch (e) {
    if (ui.selected !== id) return;
    const notConfigured = e.status === 404 && /not configured/.test(e.message);
    dl.dataset.state = notConfigured ? "not-configured" : "error";
    kv(dl, [["VaR, ES, P(liquidation)", notConfigured
      ? "not configured: the daemon has no [risk] section (see the risk docs)"
      : "unavailable: " + e.message, "", "risk-status"]]);
    table.hidden = true;
    $("#risk-note").textContent = "";
    return;
  }
  if (ui.selected !== id) return;
  dl.dataset.state = "ready";
  dl.dataset.account = id;
  const conf = (num(r.alpha) * 100).toFixed(2).replace(/\.?0+$/, "") + " %";
  kv(dl, [
    [`VaR (${conf})`, money(r.var), r.var, "risk-var"],
    [`Expected shortfall (${conf})`, money(r.es), r.es, "risk-es"],
    ["P(liquidation)", `${(num(r.p_liquidation) * 100).toFixed(2)} % (${r.liquidating_scenarios} of ${r.scenarios} scenarios)`, r.p_liquidation, "risk-pliq"],
  ]);
  const rows = document.createDocumentFragment();
  for (const c of r.components || []) {
    const name = c.instrument + (c.side && c.side !== "both" ? " / " + c.side : "") + (c.kind === "collateral" ? " (collateral)" : "");
    rows.append(el("tr", { "data-instrument": c.instrument, "data-kind": c.kind },
      el("th", { scope: "row", "data-label": "Component" }, name),
      exactCell("Component ES", money(c.es), c.es, "num")));
  }
  $("#risk-components tbody").replaceChildren(rows);
  table.hidden = !(r.components || []).length;
  $("#risk-note").textContent = `Historical, over ${r.scenarios} scenarios of the configured price history at today's prices (${r.method}); losses in USD, positive = a loss.`;
}

function renderHistory(points, view) {
  const box = $("#history-chart");
  const w = 480, h = 220, pad = 36, mid = h / 2;
  const s = svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-labelledby": "history-h history-desc" });
  const desc = svg("desc", { id: "history-desc" });
  s.append(desc);
  if (points.length < 2) {
    desc.textContent = "Not enough history yet.";
    box.replaceChildren(s);
    $("#history-note").textContent = `${points.length} point(s) so far; the daemon samples accounts at risk and accounts being viewed (bounded, kept in the journal across restarts).`;
    return;
  }
  const t0 = points[0].t_ms, t1 = points[points.length - 1].t_ms;
  const x = (t) => pad + ((w - pad - 8) * (t - t0)) / Math.max(1, t1 - t0);
  const { warnings, trigger } = levelsOf(view);
  const ratios = points.map((p) => Math.min(num(p.margin_ratio), trigger * 2));
  const rmax = Math.max(trigger * 1.1, ...ratios);
  const yr = (r) => mid - 8 - ((mid - 20) * r) / rmax;
  const eq = points.map((p) => num(p.equity));
  const emin = Math.min(...eq), emax = Math.max(...eq);
  const ye = (e) => h - 16 - ((mid - 28) * (e - emin)) / Math.max(1e-9, emax - emin);
  const line = (vals, f, cls) => svg("polyline", { points: points.map((p, i) => `${x(p.t_ms).toFixed(1)},${f(vals[i]).toFixed(1)}`).join(" "), class: cls });
  s.append(svg("text", { x: 4, y: 14, class: "axis" }));
  s.lastChild.textContent = "margin ratio";
  for (const lv of warnings) {
    s.append(svg("line", { x1: pad, x2: w - 8, y1: yr(lv), y2: yr(lv), class: "mark-warning" }));
    const t = svg("text", { x: 2, y: yr(lv) + 4, class: "axis" });
    t.textContent = (lv * 100).toFixed(0) + "%";
    s.append(t);
  }
  s.append(svg("line", { x1: pad, x2: w - 8, y1: yr(trigger), y2: yr(trigger), class: "mark-trigger" }));
  const tt = svg("text", { x: 2, y: yr(trigger) + 4, class: "axis" });
  tt.textContent = (trigger * 100).toFixed(0) + "%";
  s.append(tt, line(ratios, yr, "series-ratio"));
  const el2 = svg("text", { x: 4, y: mid + 12, class: "axis" });
  el2.textContent = `equity ${money(String(emin))} – ${money(String(emax))}`;
  s.append(el2, line(eq, ye, "series-equity"));
  const last = points[points.length - 1];
  desc.textContent = `${points.length} points from ${timeText(t0)} to ${timeText(t1)}; margin ratio now ${ratioPct(last.margin_ratio)}, equity ${money(last.equity)}.`;
  box.replaceChildren(s);
  $("#history-note").textContent = desc.textContent + " Downsampled and bounded, kept in the journal across restarts.";
}

// ------------------------------------------------------------------------------------------
// What if (the stress endpoint)
// ------------------------------------------------------------------------------------------

let whatIfTimer = null;
let whatIfSeq = 0;

function whatIfShock() {
  const v = Number($("#whatif-shock").value);
  return String(v / 100);
}

function scheduleWhatIf() {
  const v = Number($("#whatif-shock").value);
  const text = (v > 0 ? "+" : "") + v + " %";
  $("#whatif-shock-text").textContent = text;
  $("#whatif-shock").setAttribute("aria-valuetext", text.replace("%", "percent"));
  clearTimeout(whatIfTimer);
  whatIfTimer = setTimeout(whatIf, 120);
}

async function whatIf() {
  const id = ui.selected;
  if (!id) return;
  const shock = whatIfShock();
  const und = $("#whatif-underlying").value;
  const mine = ++whatIfSeq;
  const q = new URLSearchParams({ shock });
  if (und !== "all") q.set("underlying", und);
  let r;
  try {
    r = await api(`/v1/accounts/${encodeURIComponent(id)}/stress?${q}`);
  } catch (e) {
    $("#whatif-result").replaceChildren(el("dt", { text: "What if" }), el("dd", { text: e.message }));
    return;
  }
  if (mine !== whatIfSeq || ui.selected !== id) return;
  const sel = $("#whatif-underlying");
  if (sel.options.length === 1) {
    for (const u of r.underlyings || []) sel.append(el("option", { value: u, text: "only " + u }));
  }
  const s = r.snapshot;
  const sd = s.shock_distance || {};
  const dl = $("#whatif-result");
  dl.dataset.shock = r.shock;
  dl.dataset.underlying = r.underlying || "all";
  kv(dl, [
    ["Scenario", r.scenario, r.scenario, "whatif-scenario"],
    ["State", stateText(r.state), r.state.state, "whatif-state"],
    ["Equity", money(s.equity), s.equity, "whatif-equity"],
    ["Maintenance margin", money(s.maintenance_margin), s.maintenance_margin, "whatif-mm"],
    ["Margin ratio", ratioPct(s.margin_ratio), s.margin_ratio, "whatif-ratio"],
    [r.state.state === "triggered" ? "Move that recovers" : "Further shock to trigger",
      sd.nearest ? pct(sd.nearest) : "unreachable", sd.nearest || "", "whatif-distance"],
  ]);
}

