// The headquarters' dashboard page: reads /dashboard/data (the API's JSON, authenticated by
// the session cookie, which script cannot read) and draws the KPI cards, the daily chart
// (uPlot), the sortable store table, the campaigns' results (when the program has campaigns),
// the tiers and the top rewards. No inline script, no
// other origin: everything comes from /dashboard.
(function () {
  "use strict";

  const cfg = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const DAY_MS = 86400000;

  // ---- formatting -------------------------------------------------------------------------
  const lang = navigator.language || "en";
  const int = new Intl.NumberFormat(lang, { maximumFractionDigits: 0 });
  const dec = new Intl.NumberFormat(lang, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  function moneyFormat(digits) {
    try {
      return new Intl.NumberFormat(lang, {
        style: "currency", currency: cfg.currency,
        minimumFractionDigits: digits, maximumFractionDigits: digits,
      });
    } catch (e) {
      return null; // not a currency this browser knows: plain numbers
    }
  }
  const money2 = moneyFormat(2), money0 = moneyFormat(0);
  const NONE = "\u2014";
  function fmt(kind, v) {
    if (v === null || v === undefined) return NONE;
    switch (kind) {
      case "money": {
        const units = v / 100;
        const f = Math.abs(units) >= 10000 ? money0 : money2;
        return f ? f.format(units) : dec.format(units);
      }
      case "pct": return dec.format(v) + " %";
      case "num": return dec.format(v);
      default: return int.format(v);
    }
  }

  // ---- dates ------------------------------------------------------------------------------
  const parseDay = (s) => {
    const [y, m, d] = s.split("-").map(Number);
    return Date.UTC(y, m - 1, d);
  };
  const isoDay = (ms) => new Date(ms).toISOString().slice(0, 10);
  const addDays = (s, n) => isoDay(parseDay(s) + n * DAY_MS);

  // ---- what is shown ----------------------------------------------------------------------
  // kind: count | money | pct | num; good: whether a rise is good news (+1) or bad (-1).
  const CARDS = [
    ["member_purchases", "Member purchases", "count", 1],
    ["anonymous_purchases", "Anonymous purchases", "count", 0],
    ["member_revenue_cents", "Member revenue", "money", 1],
    ["anonymous_revenue_cents", "Anonymous revenue", "money", 0],
    ["active_members", "Active members", "count", 1],
    ["new_members", "New members", "count", 1],
    ["enrolments", "Enrolments", "count", 1],
    ["repeat_purchase_rate_pct", "Repeat rate", "pct", 1],
    ["visit_frequency", "Visit frequency", "num", 1],
    ["avg_spend_member_cents", "Avg member basket", "money", 1],
    ["spend_lift_pct", "Spend lift", "pct", 1],
    ["redemption_rate_pct", "Redemption rate", "pct", 0],
    ["customer_retention_rate_pct", "Retention", "pct", 1],
    ["ltv_cents", "Lifetime value", "money", 1],
    ["roi_pct", "ROI", "pct", 1],
    ["points_issued", "Points issued", "count", 0],
    ["redemptions", "Redemptions", "count", 0],
    ["refunded_cents", "Refunded", "money", -1],
  ];
  const COLUMNS = [
    ["name", "Store", "text"],
    ["member_purchases", "Member purchases", "count"],
    ["anonymous_purchases", "Anonymous purchases", "count"],
    ["member_revenue_cents", "Member revenue", "money"],
    ["anonymous_revenue_cents", "Anonymous revenue", "money"],
    ["refunded_cents", "Refunded", "money"],
    ["enrolments", "Enrolments", "count"],
    ["active_members", "Active members", "count"],
    ["repeat_purchase_rate_pct", "Repeat rate", "pct"],
  ];

  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ---- state ------------------------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  const state = {
    from: params.get("from") || addDays(cfg.today, -29),
    to: params.get("to") || cfg.today,
    store: params.get("store") || "",
    sort: { key: "member_revenue_cents", dir: -1 },
    metric: "purchases",
    data: null,
  };
  let chart = null;
  let seq = 0;

  function query(withCompare) {
    const q = new URLSearchParams({ from: state.from, to: state.to });
    if (state.store) q.set("store", state.store);
    if (withCompare) q.set("compare", "previous");
    return q.toString();
  }

  async function load() {
    const mine = ++seq;
    document.body.dataset.state = "loading";
    $("status").textContent = "Loading\u2026";
    $("status").classList.remove("error");
    $("csv").href = "/dashboard/export.csv?" + query(false);
    history.replaceState(null, "", "?" + query(false));
    markPreset();
    let r;
    try {
      r = await fetch("/dashboard/data?" + query(true), {
        credentials: "same-origin", headers: { Accept: "application/json" },
      });
    } catch (e) {
      return failed(mine, "The gateway did not answer: " + e.message);
    }
    if (mine !== seq) return;
    if (r.status === 401) {
      location.assign("/dashboard"); // the session ended: back to the form
      return;
    }
    const body = await r.json().catch(() => null);
    if (mine !== seq) return;
    if (!r.ok) return failed(mine, (body && body.detail) || "HTTP " + r.status);
    state.data = body;
    render();
    $("status").textContent = "";
    document.body.dataset.query = query(false);
    document.body.dataset.state = "ready";
  }

  function failed(mine, message) {
    if (mine !== seq) return;
    $("status").textContent = message;
    $("status").classList.add("error");
    document.body.dataset.state = "error";
  }

  // ---- rendering --------------------------------------------------------------------------
  function render() {
    renderCards();
    renderChart();
    renderStores();
    renderCampaigns();
    renderTiers();
    renderRewards();
  }

  function change(kind, v, p) {
    if (v === null || v === undefined || p === null || p === undefined) return [NONE, 0];
    if (kind === "pct") {
      const d = v - p;
      return [(d > 0 ? "+" : "") + dec.format(d) + " pt", Math.sign(d)];
    }
    if (p === 0) return [v === 0 ? "\u00b10 %" : "new", Math.sign(v)];
    const d = ((v - p) / Math.abs(p)) * 100;
    return [(d > 0 ? "+" : "") + dec.format(d) + " %", Math.sign(d)];
  }

  function renderCards() {
    const k = state.data.kpis;
    const prev = state.data.previous ? state.data.previous.kpis : {};
    const box = $("cards");
    box.replaceChildren();
    for (const [key, label, kind, good] of CARDS) {
      const v = k[key];
      const [text, dir] = change(kind, v, prev[key]);
      const card = el("article", { class: "card", "data-kpi": key, "data-value": JSON.stringify(v === undefined ? null : v) });
      card.append(el("h3", {}, label), el("p", { class: "value" }, fmt(kind, v)));
      const tone = dir === 0 || good === 0 ? "flat" : dir * good > 0 ? "good" : "bad";
      const delta = el("p", { class: "delta " + tone, title: "vs " + state.data.previous.from + " \u2013 " + state.data.previous.to }, text);
      card.append(delta);
      box.append(card);
    }
  }

  function renderChart() {
    const s = state.data.series;
    const xs = s.map((d) => parseDay(d.day) / 1000);
    const revenue = state.metric === "revenue";
    const m = s.map((d) => (revenue ? d.member_revenue_cents / 100 : d.member_purchases));
    const a = s.map((d) => (revenue ? d.anonymous_revenue_cents / 100 : d.anonymous_purchases));
    const box = $("chart");
    const width = Math.max(280, box.clientWidth);
    const height = width < 500 ? 200 : 260;
    const value = (u, v) => (v === null || v === undefined ? NONE : revenue ? fmt("money", v * 100) : int.format(v));
    const opts = {
      width, height,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [{}, { size: revenue ? 70 : 50, values: (u, vals) => vals.map((v) => revenue ? fmt("money", v * 100) : int.format(v)) }],
      series: [
        { label: "Day", value: (u, ts) => (ts ? isoDay(ts * 1000) : NONE) },
        { label: "Members", stroke: "#2457c5", fill: "rgba(36,87,197,0.12)", width: 2, value },
        { label: "Anonymous", stroke: "#9a6b00", width: 2, dash: [6, 3], value },
      ],
    };
    if (chart) chart.destroy();
    box.replaceChildren();
    chart = new uPlot(opts, [xs, m, a], box);
  }

  function renderStores() {
    const table = $("stores-table");
    const head = table.tHead.rows[0];
    head.replaceChildren();
    for (const [key, label, kind] of COLUMNS) {
      const th = el("th", { scope: "col", "data-key": key, class: kind === "text" ? "" : "num" });
      const sorted = state.sort.key === key;
      th.setAttribute("aria-sort", sorted ? (state.sort.dir > 0 ? "ascending" : "descending") : "none");
      const b = el("button", { type: "button" }, label + (sorted ? (state.sort.dir > 0 ? " \u25b2" : " \u25bc") : ""));
      b.addEventListener("click", () => {
        state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : kind === "text" ? 1 : -1 };
        renderStores();
      });
      th.append(b);
      head.append(th);
    }
    const rows = state.data.stores.slice();
    const { key, dir } = state.sort;
    rows.sort((x, y) => {
      const a = x[key], b = y[key];
      if (a === b) return x.name.localeCompare(y.name);
      if (a === null) return 1; // no rate: last either way
      if (b === null) return -1;
      return (typeof a === "string" ? a.localeCompare(b) : a - b) * dir;
    });
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = el("tr", { "data-store-id": r.store_id });
      if (r.store_id === state.store) tr.classList.add("selected");
      for (const [key, , kind] of COLUMNS) {
        const v = r[key];
        tr.append(el("td", { class: kind === "text" ? "" : "num", "data-value": JSON.stringify(v === undefined ? null : v) }, kind === "text" ? v : fmt(kind, v)));
      }
      body.append(tr);
    }
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: String(COLUMNS.length), class: "muted" }, "No stores yet."));
      body.append(tr);
    }
  }

  // The trigger types of the API (README "Campaigns"), in words.
  const TRIGGERS = {
    enrolled: "Enrolment",
    segment_entered: "Segment entered",
    birthday: "Birthday",
    tier_reached: "Tier reached",
    points_reached: "Points reached",
    date: "Date",
  };

  // One row per campaign of the program; the panel stays hidden when the JSON has none.
  function renderCampaigns() {
    const rows = state.data.campaigns || [];
    $("campaigns").hidden = rows.length === 0;
    const body = $("campaigns-table").tBodies[0];
    body.replaceChildren();
    const cell = (v, text) => el("td", { class: "num", "data-value": JSON.stringify(v) }, text);
    for (const c of rows) {
      const tr = el("tr", { "data-campaign": c.id });
      tr.append(
        el("td", {}, c.name),
        el("td", { "data-value": JSON.stringify(c.trigger) }, TRIGGERS[c.trigger] || c.trigger),
        cell(c.fired, int.format(c.fired)),
        cell(c.delivered, int.format(c.delivered)),
        cell(c.failed, int.format(c.failed)),
        cell(c.redeemed, int.format(c.redeemed)),
        cell(c.redemption_rate, fmt("pct", c.fired ? c.redemption_rate * 100 : null)),
        cell(c.revenue_cents, fmt("money", c.revenue_cents)),
      );
      body.append(tr);
    }
  }

  function renderTiers() {
    const tiers = state.data.tiers;
    const total = tiers.reduce((n, t) => n + t.members, 0);
    const body = $("tiers-table").tBodies[0];
    body.replaceChildren();
    for (const t of tiers) {
      const tr = el("tr", { "data-tier": t.name });
      const share = total ? (t.members / total) * 100 : null;
      const bar = el("span", { class: "bar" });
      bar.style.width = (share || 0).toFixed(1) + "%";
      const shareCell = el("td", { class: "num share" });
      shareCell.append(bar, el("span", {}, fmt("pct", share === null ? null : Math.round(share * 100) / 100)));
      tr.append(el("td", {}, t.name), el("td", { class: "num", "data-value": String(t.members) }, int.format(t.members)), shareCell);
      body.append(tr);
    }
  }

  function renderRewards() {
    const body = $("rewards-table").tBodies[0];
    body.replaceChildren();
    for (const r of state.data.top_rewards) {
      const tr = el("tr", { "data-reward": r.reward_id });
      const name = cfg.rewards[r.reward_id] || r.reward_id;
      tr.append(el("td", {}, name), el("td", { class: "num", "data-value": String(r.redemptions) }, int.format(r.redemptions)));
      body.append(tr);
    }
    if (!state.data.top_rewards.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: "2", class: "muted" }, "No redemptions in this range."));
      body.append(tr);
    }
  }

  function markPreset() {
    const days = Math.round((parseDay(state.to) - parseDay(state.from)) / DAY_MS) + 1;
    for (const b of document.querySelectorAll(".presets button")) {
      b.classList.toggle("active", state.to === cfg.today && Number(b.dataset.days) === days);
    }
  }

  // ---- controls ---------------------------------------------------------------------------
  function init() {
    $("zone").textContent = cfg.time_zone;
    $("from").value = state.from;
    $("to").value = state.to;
    $("store").value = state.store;
    if ($("store").value !== state.store) state.store = ""; // a store no longer listed
    const dates = () => {
      const f = $("from").value, t = $("to").value;
      if (!f || !t) return;
      state.from = f;
      state.to = t;
      load();
    };
    $("from").addEventListener("change", dates);
    $("to").addEventListener("change", dates);
    for (const b of document.querySelectorAll(".presets button")) {
      b.addEventListener("click", () => {
        state.to = cfg.today;
        state.from = addDays(cfg.today, 1 - Number(b.dataset.days));
        $("from").value = state.from;
        $("to").value = state.to;
        load();
      });
    }
    $("store").addEventListener("change", () => {
      state.store = $("store").value;
      load();
    });
    $("metric").addEventListener("change", () => {
      state.metric = $("metric").value;
      if (state.data) renderChart();
    });
    $("filters").addEventListener("submit", (e) => e.preventDefault());
    let width = $("chart").clientWidth;
    new ResizeObserver(() => {
      const w = $("chart").clientWidth;
      if (chart && Math.abs(w - width) > 4) {
        width = w;
        chart.setSize({ width: Math.max(280, w), height: w < 500 ? 200 : 260 });
      }
    }).observe($("chart"));
    load();
  }

  init();
})();
