// Dashboard: one tile per X-ray station grouped by site (the ward's view, "/"), or one table
// row per station (the central team's fleet view, "/?view=fleet"), both fed by the server's
// event stream (/events).  Plain JavaScript, no libraries.  Everything from the network is
// written with textContent, never as HTML, so a payload cannot inject markup.
"use strict";

(() => {
  const STALE_MS = 20000;        // no event or heartbeat for this long: reopen the stream
  const RECONNECT_MS = 2000;     // after the browser gave up on a stream (e.g. an HTTP error)
  const ACK_KEY = "edge-worker-dashboard-acked";
  const LABELS = {ok: "OK", retake: "RETAKE", review: "REVIEW", not_judged: "NOT JUDGED", rejected: "REJECTED"};
  const MARKS = {ok: "\u2713", retake: "R", review: "?", not_judged: "\u2013", rejected: "\u2715"};
  // Events arriving within this are drawn in one go: a few frames a second are enough for a
  // person, and each frame of hundreds of rows costs a browser far more than the events do.
  const RENDER_MS = 200;
  const FLEET_COLUMNS = ["station", "link", "state", "pack", "version", "digest", "backend", "outbox",
    "last-verdict", "decision", "heard", "problems"];

  const state = {
    stations: new Map(),   // key -> station from the server
    tiles: new Map(),      // key -> tile element
    rows: new Map(),       // key -> fleet table row
    sites: new Map(),      // site -> {group, grid, body} (tile section and table body)
    dirty: new Set(),      // keys to draw again at the next render
    renderPending: false,
    silentAfter: 300,
    view: new URLSearchParams(window.location.search).get("view") === "fleet" ? "fleet" : "tiles",
    broker: null,
    skewS: 0,              // server clock minus browser clock, seconds
    lastEventMs: 0,
    source: null,
    server: "connecting",
    acked: loadAcked(),
  };

  const $ = (id) => document.getElementById(id);

  function loadAcked() {
    try {
      return new Set(JSON.parse(sessionStorage.getItem(ACK_KEY) || "[]"));
    } catch (err) {
      console.warn("dashboard: forgetting unreadable acknowledgements", err);
      return new Set();
    }
  }

  function saveAcked() {
    // Keep the newest few hundred: ids of retakes long superseded are of no use.
    const ids = Array.from(state.acked).slice(-500);
    state.acked = new Set(ids);
    try {
      sessionStorage.setItem(ACK_KEY, JSON.stringify(ids));
    } catch (err) {
      console.warn("dashboard: cannot store acknowledgements", err);
    }
  }

  // -- the event stream ----------------------------------------------------------------------

  function connect() {
    if (state.source) state.source.close();
    const source = new EventSource("/events");
    state.source = source;
    source.addEventListener("snapshot", (e) => {
      const snap = JSON.parse(e.data);
      seen(snap.server_time);
      state.stations = new Map(snap.stations.map((s) => [s.key, s]));
      state.broker = snap.broker;
      if (typeof snap.silent_after === "number") state.silentAfter = snap.silent_after;
      $("review-link").hidden = snap.review !== true;
      setServer("live");
      renderAll();
    });
    source.addEventListener("station", (e) => {
      const msg = JSON.parse(e.data);
      seen(msg.server_time);
      state.stations.set(msg.station.key, msg.station);
      state.dirty.add(msg.station.key);
      scheduleRender();
    });
    source.addEventListener("broker", (e) => {
      const msg = JSON.parse(e.data);
      seen(msg.server_time);
      state.broker = msg.broker;
      renderAll();
    });
    source.addEventListener("heartbeat", (e) => seen(JSON.parse(e.data).server_time));
    source.onerror = () => {
      if (source !== state.source) return;
      setServer("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error, not a dropped connection): retry ourselves.
        window.setTimeout(() => { if (source === state.source) connect(); }, RECONNECT_MS);
      }
    };
  }

  function seen(serverTime) {
    state.lastEventMs = Date.now();
    if (typeof serverTime === "number") state.skewS = serverTime - Date.now() / 1000;
  }

  function setServer(value) {
    if (state.server === value) return;
    state.server = value;
    renderLink();
  }

  function watchdog() {
    // A half-open connection raises no error: heartbeats stop, so reopen the stream.
    if (state.server === "live" && Date.now() - state.lastEventMs > STALE_MS) {
      setServer("reconnecting");
      connect();
    }
  }

  // -- rendering -----------------------------------------------------------------------------

  function serverNow() {
    return Date.now() / 1000 + state.skewS;
  }

  function ago(t) {
    if (typeof t !== "number") return "\u2014";
    const s = Math.max(0, Math.round(serverNow() - t));
    if (s < 5) return "just now";
    if (s < 60) return `${s} s ago`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ago`;
    const h = Math.floor(m / 60);
    if (h < 24) return `${h} h ${m % 60} min ago`;
    return `${Math.floor(h / 24)} d ago`;
  }

  const CLOCK = {hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"};

  // One formatter for all: toLocaleTimeString builds a new one per call, hundreds a second.
  const CLOCK_FORMAT = new Intl.DateTimeFormat([], CLOCK);

  function clockTime(t) {
    return CLOCK_FORMAT.format(new Date(t * 1000));
  }

  function setText(node, text) {
    // Writing an unchanged text still costs a layout; with hundreds of rows that adds up.
    if (node.textContent !== text) node.textContent = text;
  }

  function alerting(st) {
    return !!(st.latest && st.latest.decision === "retake" && !state.acked.has(st.latest.id));
  }

  function acknowledge(keys) {
    for (const key of keys) {
      const st = state.stations.get(key);
      if (st && st.latest) state.acked.add(st.latest.id);
    }
    saveAcked();
    renderAll();
  }

  function shortDigest(digest) {
    // "sha256:" or not, the first twelve hex digits tell two packs apart at a glance.
    return typeof digest === "string" ? digest.replace(/^sha256:/, "").slice(0, 12) : "";
  }

  function durationText(seconds) {
    const s = Math.round(seconds);
    return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
  }

  function linkOf(st) {
    if (st.silent) return "silent";
    return st.online === null ? "unknown" : st.online ? "online" : "offline";
  }

  // -- site groups ---------------------------------------------------------------------------

  function insertSorted(parent, node, key, keyOf) {
    // Children are kept in key order; find the first that sorts after this one.
    if (node.parentNode === parent && keyOf(node) === key) {
      const prev = node.previousElementSibling, next = node.nextElementSibling;
      if ((!prev || keyOf(prev) < key) && (!next || keyOf(next) > key)) return;
    }
    const after = Array.from(parent.children).find((c) => c !== node && keyOf(c) > key);
    parent.insertBefore(node, after || null);
  }

  function siteFor(site) {
    let found = state.sites.get(site);
    if (!found) {
      const group = $("site-template").content.firstElementChild.cloneNode(true);
      group.dataset.site = site;
      group.querySelector(".site-name").textContent = site;
      const body = document.createElement("tbody");
      body.dataset.site = site;
      const head = body.insertRow();
      head.className = "site-row";
      const cell = document.createElement("th");
      cell.colSpan = FLEET_COLUMNS.length;
      cell.scope = "rowgroup";
      head.appendChild(cell);
      found = {group, grid: group.querySelector(".grid"), body, head: cell};
      state.sites.set(site, found);
      insertSorted($("sites"), group, site, (n) => n.dataset.site);
      insertSorted($("fleet").querySelector("table"), body, site, (n) => n.dataset.site || "");
    }
    return found;
  }

  function siteCounts(stations) {
    const n = stations.length;
    const online = stations.filter((s) => s.online === true).length;
    const parts = [`${n} station${n === 1 ? "" : "s"}`, `${online} online`];
    const silent = stations.filter((s) => s.silent).length;
    const degraded = stations.filter((s) => s.status && s.status.state === "degraded").length;
    if (silent) parts.push(`${silent} silent`);
    if (degraded) parts.push(`${degraded} degraded`);
    return {text: parts.join(" \u00b7 "), silent, degraded};
  }

  function renderSites() {
    const bySite = new Map();
    for (const st of state.stations.values()) {
      if (!bySite.has(st.site)) bySite.set(st.site, []);
      bySite.get(st.site).push(st);
    }
    for (const [site, parts] of state.sites) {
      if (!bySite.has(site)) { parts.group.remove(); parts.body.remove(); state.sites.delete(site); }
    }
    for (const [site, stations] of bySite) {
      const parts = siteFor(site);
      const counts = siteCounts(stations);
      setText(parts.group.querySelector(".site-counts"), counts.text);
      setText(parts.head, `${site} \u00b7 ${counts.text}`);
      for (const node of [parts.group, parts.head.parentNode]) {
        node.dataset.stations = String(stations.length);
        node.dataset.silent = String(counts.silent);
        node.classList.toggle("has-silent", counts.silent > 0);
      }
    }
  }

  function tileFor(key) {
    let tile = state.tiles.get(key);
    if (!tile) {
      tile = $("tile-template").content.firstElementChild.cloneNode(true);
      tile.dataset.key = key;
      tile.tabIndex = 0;  // a keyboard can acknowledge too
      tile.addEventListener("click", () => acknowledge([key]));
      tile.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); acknowledge([key]); }
      });
      state.tiles.set(key, tile);
    }
    return tile;
  }

  function put(tile, selector, text) {
    setText(tile.querySelector(selector), text);
  }

  function renderTile(st) {
    const tile = tileFor(st.key);
    const v = st.latest;
    const decision = v ? v.decision : "none";
    const online = st.online === null ? "unknown" : String(st.online);
    tile.dataset.online = online;
    tile.dataset.decision = decision;
    tile.dataset.verdictId = v ? v.id : "";
    tile.dataset.history = st.history.map((h) => h.decision).join(",");
    tile.dataset.alert = String(alerting(st));
    tile.className = `tile decision-${decision} ${online === "false" ? "offline" : ""} ${alerting(st) ? "alerting" : ""}`;
    tile.title = alerting(st) ? "Retake: click to acknowledge" : "";

    tile.dataset.silent = String(!!st.silent);
    tile.classList.toggle("silent", !!st.silent);
    put(tile, ".station", st.station);
    put(tile, ".site", st.site);
    const badge = tile.querySelector(".silent-badge");
    badge.hidden = !st.silent;
    badge.textContent = st.silent ? silentText(st) : "";
    const status = st.status;
    const pack = status && status.pack;
    const line = [];
    if (pack) line.push(`${pack.name ?? "?"} ${pack.version ?? ""}`.trim(), shortDigest(pack.digest));
    if (status && status.backend) line.push(status.backend);
    if (status && status.outbox_depth != null) line.push(`outbox\u00a0${status.outbox_depth}`);
    put(tile, ".fleet-line", line.filter(Boolean).join(" \u00b7 "));
    const problems = tile.querySelector(".problems");
    problems.textContent = problemText(status);
    problems.hidden = !problems.textContent;
    const avail = tile.querySelector(".avail");
    avail.textContent = online === "true" ? "ONLINE" : online === "false" ? "OFFLINE" : "UNKNOWN";
    avail.className = `avail avail-${online}`;
    if (online === "false" && typeof st.online_since === "number") {
      avail.textContent = `OFFLINE since ${clockTime(st.online_since)}`;
    }

    put(tile, ".decision", v ? LABELS[decision] || decision : "No image yet");
    let quality = "\u2014";
    if (v && v.series) {
      // An MR series verdict: its 0-10 score (higher better), slices, and the flags above threshold.
      const flags = v.series.flagged.map((f) => `${f.flag.replace(/_/g, " ")} ${f.probability != null ? f.probability.toFixed(2) : ""}`);
      quality = `series ${v.series.score != null ? v.series.score.toFixed(1) : "\u2014"}/10 \u00b7 ${v.series.slices ?? "?"} slices` +
        (flags.length ? ` \u00b7 flagged: ${flags.join(", ")}` : "");
    } else if (v && v.score != null) {
      quality = `${v.score.toFixed(2)} \u00b7 grade ${v.grade ?? "\u2014"}`;
    } else if (v && v.rules) {
      // A rules pack: how many positioning rules passed; the failed ones' sentences are reasons.
      quality = `rules ${v.rules.passed}/${v.rules.total} passed`;
    }
    put(tile, ".quality", quality);
    put(tile, ".view", v && v.view ? `${v.view} ${v.view_confidence != null ? v.view_confidence.toFixed(2) : ""}` : "\u2014");
    let orient = "\u2014";
    if (v && v.angle_deg != null) {
      orient = v.rotate_deg ? `rotate ${v.rotate_deg}\u00b0 clockwise` : `upright (${Math.round(v.angle_deg)}\u00b0)`;
    }
    put(tile, ".orient", orient);
    put(tile, ".since", v ? ago(v.at) : "\u2014");
    // Every reason: for a review the one that matters (e.g. "orientation uncertain") is rarely first.
    put(tile, ".reason", v ? (v.kind === "error" ? `${v.reason}: ${v.detail}` : v.reasons.join(" \u00b7 ")) : "");
    tile.querySelector(".flag").hidden = !(v && v.not_for_clinical_use);

    const img = tile.querySelector(".thumb");
    const thumb = v && typeof v.thumbnail === "string" && v.thumbnail.startsWith("data:image/png;base64,") ? v.thumbnail : "";
    tile.dataset.thumbnail = String(!!thumb);
    if (img.getAttribute("src") !== thumb) {
      if (thumb) img.setAttribute("src", thumb); else img.removeAttribute("src");
    }
    img.hidden = !thumb;
    // The board sends a heatmap only over a whole-image thumbnail, in the same frame (the image
    // as stored): both pictures share the box and object-fit, so one lies exactly on the other.
    const heat = tile.querySelector(".heat");
    const h = thumb && v.heatmap && typeof v.heatmap.overlay === "string" && v.heatmap.overlay.startsWith("data:image/png;base64,") ? v.heatmap : null;
    tile.dataset.heatmap = h ? h.label : "";
    if ((heat.getAttribute("src") || "") !== (h ? h.overlay : "")) {
      if (h) heat.setAttribute("src", h.overlay); else heat.removeAttribute("src");
    }
    heat.hidden = !h;
    const legend = tile.querySelector(".heat-legend");
    legend.textContent = h ? `heatmap: ${h.label} (what the view network looked at)` : "";
    legend.hidden = !h;
    tile.querySelector(".thumb-box").hidden = !thumb;

    const strip = tile.querySelector(".history");
    const ids = st.history.map((h) => h.id).join(",");
    if (strip.dataset.ids === ids) return tile;
    strip.dataset.ids = ids;
    strip.replaceChildren(...st.history.map((h) => {
      const li = document.createElement("li");
      li.className = `h-${h.decision}`;
      li.textContent = MARKS[h.decision] || "\u00b7";
      const score = h.score != null ? ` ${h.score.toFixed(2)}` : "";
      li.title = `${clockTime(h.at)} ${LABELS[h.decision] || h.decision}${score}`;
      return li;
    }));
    return tile;
  }

  function silentText(st) {
    return typeof st.heard === "number" ? `SILENT ${durationText(serverNow() - st.heard)}` : "SILENT";
  }

  function problemText(status) {
    if (!status || !status.problems.length) return "";
    return status.problems.map((p) => `${p.component}: ${p.text}`).join(" \u00b7 ");
  }

  function rowFor(key) {
    let row = state.rows.get(key);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.key = key;
      for (const name of FLEET_COLUMNS) {
        const cell = document.createElement(name === "station" ? "th" : "td");
        if (name === "station") cell.scope = "row";
        cell.className = `c-${name}`;
        row.appendChild(cell);
      }
      state.rows.set(key, row);
    }
    return row;
  }

  function cell(row, name, text) {
    const node = row.querySelector(`.c-${name}`);
    setText(node, text);
    if (node.title !== text) node.title = text;  // the whole text of a cell cut short
  }

  function renderRow(st) {
    const row = rowFor(st.key);
    const status = st.status || {};
    const pack = status.pack || {};
    const v = st.latest;
    const link = linkOf(st);
    Object.assign(row.dataset, {
      link, silent: String(!!st.silent), state: status.state || "unknown",
      pack: pack.name || "", version: pack.version || "", digest: shortDigest(pack.digest),
      backend: status.backend || "", outbox: status.outbox_depth != null ? String(status.outbox_depth) : "",
      decision: v ? v.decision : "none", verdictId: v ? v.id : "", alert: String(alerting(st)),
    });
    row.className = `link-${link} state-${status.state || "unknown"} ${alerting(st) ? "alerting" : ""}`;
    cell(row, "station", st.station);
    cell(row, "link", link === "silent" ? silentText(st) : link.toUpperCase());
    cell(row, "state", status.state ? status.state.toUpperCase() : "\u2014");
    cell(row, "pack", pack.name || "\u2014");
    cell(row, "version", pack.version || "\u2014");
    cell(row, "digest", shortDigest(pack.digest) || "\u2014");
    cell(row, "backend", status.backend || "\u2014");
    cell(row, "outbox", status.outbox_depth != null ? String(status.outbox_depth) : "\u2014");
    cell(row, "last-verdict", v ? `${clockTime(v.at)} (${ago(v.at)})` : "\u2014");
    cell(row, "decision", v ? LABELS[v.decision] || v.decision : "\u2014");
    cell(row, "heard", ago(st.heard));
    cell(row, "problems", problemText(st.status) || (status.broker_connected === false ? "station: broker link down" : ""));
    row.querySelector(".c-digest").title = pack.digest || "";
    return row;
  }

  function renderStation(st) {
    // Only the view on screen is drawn; switching views draws the other one whole.
    const parts = siteFor(st.site);
    if (state.view === "tiles") insertSorted(parts.grid, renderTile(st), st.key, (n) => n.dataset.key);
    else insertSorted(parts.body, renderRow(st), st.key, (n) => n.dataset.key || "");
  }

  function scheduleRender() {
    if (state.renderPending) return;
    state.renderPending = true;
    window.setTimeout(() => {
      state.renderPending = false;
      const keys = Array.from(state.dirty);
      state.dirty.clear();
      for (const key of keys) {
        const st = state.stations.get(key);
        if (st) renderStation(st);
      }
      renderSummary();
    }, RENDER_MS);
  }

  function renderAll() {
    state.dirty.clear();
    for (const nodes of [state.tiles, state.rows]) {
      for (const [key, node] of nodes) {
        if (!state.stations.has(key)) { node.remove(); nodes.delete(key); }
      }
    }
    for (const key of Array.from(state.stations.keys()).sort()) renderStation(state.stations.get(key));
    renderSummary();
  }

  function renderView() {
    document.body.dataset.view = state.view;
    $("sites").hidden = state.view !== "tiles";
    $("fleet").hidden = state.view !== "fleet";
    $("view-toggle").textContent = state.view === "fleet" ? "Station tiles" : "Fleet table";
  }

  function toggleView() {
    state.view = state.view === "fleet" ? "tiles" : "fleet";
    // The address says which view is shown, so a bookmark or a reload keeps it.
    window.history.replaceState(null, "", state.view === "fleet" ? "?view=fleet" : window.location.pathname);
    renderView();
    renderAll();
  }

  function renderSummary() {
    const all = Array.from(state.stations.values());
    $("empty").hidden = all.length > 0;
    renderSites();
    const retakes = all.filter(alerting);
    const banner = $("banner-retake");
    banner.hidden = retakes.length === 0;
    banner.textContent = retakes.length
      ? `RETAKE at ${retakes.map((s) => s.station).join(", ")} \u2014 tap to acknowledge`
      : "";
    $("banner-nfcu").hidden = !all.some((s) => s.latest && s.latest.not_for_clinical_use);
    const silent = all.filter((s) => s.silent);
    const silentBanner = $("banner-silent");
    silentBanner.hidden = silent.length === 0;
    silentBanner.dataset.count = String(silent.length);
    const names = silent.slice(0, 8).map((s) => s.key).join(", ") + (silent.length > 8 ? ", \u2026" : "");
    silentBanner.textContent = silent.length
      ? `${silent.length} station${silent.length === 1 ? "" : "s"} silent for more than ` +
        `${durationText(state.silentAfter)}: ${names}`
      : "";
    const online = all.filter((s) => s.online === true).length;
    const sites = new Set(all.map((s) => s.site)).size;
    $("counts").textContent = `${sites} site${sites === 1 ? "" : "s"} \u00b7 ` +
      `${all.length} station${all.length === 1 ? "" : "s"} \u00b7 ${online} online` +
      (silent.length ? ` \u00b7 ${silent.length} silent` : "");
    renderLink();
  }

  function renderLink() {
    const brokerUp = state.broker ? state.broker.connected : null;
    document.body.dataset.server = state.server;
    document.body.dataset.broker = brokerUp === null ? "unknown" : brokerUp ? "connected" : "disconnected";
    const link = $("link");
    const banner = $("banner-link");
    let text = "";
    if (state.server !== "live") {
      link.textContent = "Server lost";
      text = "Dashboard server unreachable \u2014 reconnecting\u2026 (the tiles below may be out of date)";
    } else if (brokerUp === false) {
      link.textContent = "Broker lost";
      const since = state.broker.since ? ` since ${clockTime(state.broker.since)}` : "";
      text = `Dashboard disconnected from broker${since} \u2014 reconnecting\u2026 (${state.broker.detail})`;
    } else {
      link.textContent = brokerUp ? "Live" : "Connecting\u2026";
    }
    link.className = `link link-${state.server !== "live" ? "down" : brokerUp === false ? "down" : brokerUp ? "up" : "wait"}`;
    banner.textContent = text;
    banner.hidden = !text;
    document.body.classList.toggle("stale", !!text);
  }

  function tick() {
    $("clock").textContent = CLOCK_FORMAT.format(new Date());
    for (const [key, tile] of state.view === "tiles" ? state.tiles : []) {
      const st = state.stations.get(key);
      if (st && st.latest) put(tile, ".since", ago(st.latest.at));
      if (st && st.silent) put(tile, ".silent-badge", silentText(st));
    }
    if (state.view === "fleet") {
      for (const [key, row] of state.rows) {
        const st = state.stations.get(key);
        if (!st) continue;
        cell(row, "heard", ago(st.heard));
        if (st.silent) cell(row, "link", silentText(st));
        if (st.latest) cell(row, "last-verdict", `${clockTime(st.latest.at)} (${ago(st.latest.at)})`);
      }
    }
    watchdog();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("banner-retake").addEventListener("click", () => {
      acknowledge(Array.from(state.stations.values()).filter(alerting).map((s) => s.key));
    });
    $("view-toggle").addEventListener("click", toggleView);
    renderView();
    connect();
    tick();
    window.setInterval(tick, 1000);
  });
})();
