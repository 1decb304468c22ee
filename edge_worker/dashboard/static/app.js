// Ward dashboard: one tile per X-ray station, fed by the server's event stream (/events).
// Plain JavaScript, no libraries.  Everything from the network is written with textContent,
// never as HTML, so a payload cannot inject markup.
"use strict";

(() => {
  const STALE_MS = 20000;        // no event or heartbeat for this long: reopen the stream
  const RECONNECT_MS = 2000;     // after the browser gave up on a stream (e.g. an HTTP error)
  const ACK_KEY = "edge-worker-dashboard-acked";
  const LABELS = {ok: "OK", retake: "RETAKE", review: "REVIEW", not_judged: "NOT JUDGED", rejected: "REJECTED"};
  const MARKS = {ok: "\u2713", retake: "R", review: "?", not_judged: "\u2013", rejected: "\u2715"};

  const state = {
    stations: new Map(),   // key -> station from the server
    tiles: new Map(),      // key -> tile element
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
      setServer("live");
      renderAll();
    });
    source.addEventListener("station", (e) => {
      const msg = JSON.parse(e.data);
      seen(msg.server_time);
      state.stations.set(msg.station.key, msg.station);
      renderAll();
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

  function clockTime(t) {
    return new Date(t * 1000).toLocaleTimeString([], CLOCK);
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
    tile.querySelector(selector).textContent = text;
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

    put(tile, ".station", st.station);
    put(tile, ".site", st.site);
    const avail = tile.querySelector(".avail");
    avail.textContent = online === "true" ? "ONLINE" : online === "false" ? "OFFLINE" : "UNKNOWN";
    avail.className = `avail avail-${online}`;
    if (online === "false" && typeof st.online_since === "number") {
      avail.textContent = `OFFLINE since ${clockTime(st.online_since)}`;
    }

    put(tile, ".decision", v ? LABELS[decision] || decision : "No image yet");
    put(tile, ".quality", v && v.score != null ? `${v.score.toFixed(2)} \u00b7 grade ${v.grade ?? "\u2014"}` : "\u2014");
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

    const strip = tile.querySelector(".history");
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

  function renderAll() {
    const grid = $("grid");
    const keys = Array.from(state.stations.keys()).sort();
    for (const [key, tile] of state.tiles) {
      if (!state.stations.has(key)) { tile.remove(); state.tiles.delete(key); }
    }
    keys.forEach((key, i) => {
      const tile = renderTile(state.stations.get(key));
      if (grid.children[i] !== tile) grid.insertBefore(tile, grid.children[i] || null);
    });
    $("empty").hidden = keys.length > 0;

    const all = Array.from(state.stations.values());
    const retakes = all.filter(alerting);
    const banner = $("banner-retake");
    banner.hidden = retakes.length === 0;
    banner.textContent = retakes.length
      ? `RETAKE at ${retakes.map((s) => s.station).join(", ")} \u2014 tap to acknowledge`
      : "";
    $("banner-nfcu").hidden = !all.some((s) => s.latest && s.latest.not_for_clinical_use);
    const online = all.filter((s) => s.online === true).length;
    $("counts").textContent = `${all.length} station${all.length === 1 ? "" : "s"} \u00b7 ${online} online`;
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
    $("clock").textContent = new Date().toLocaleTimeString([], CLOCK);
    for (const [key, tile] of state.tiles) {
      const st = state.stations.get(key);
      if (st && st.latest) put(tile, ".since", ago(st.latest.at));
    }
    watchdog();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("banner-retake").addEventListener("click", () => {
      acknowledge(Array.from(state.stations.values()).filter(alerting).map((s) => s.key));
    });
    connect();
    tick();
    window.setInterval(tick, 1000);
  });
})();
