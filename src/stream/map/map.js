// fleetwire live map: follows /api/stream (Server-Sent Events) and draws a
// marker per device with a short track tail on Leaflet, over an offline
// world outline (and a tile layer when the server names one).
//
// Under a flood of updates the page stays usable: a message only updates
// the in-memory state of its device (O(1)) and marks the device dirty;
// drawing happens in animation frames, in slices of at most SLICE_MS,
// paced so that drawing (with Leaflet's canvas redraws) takes at most
// DRAW_SHARE of the time, each device drawn with its newest state. So the
// drawing work is bounded by the number of devices, not by the number of
// messages, and memory by the number of devices times the tail length.
(function () {
  "use strict";

  var TAIL_POINTS = 20; // positions kept per device for its track tail
  var TAIL_BREAK_M = 50000; // a longer step between two positions starts a new tail
  var SLICE_MS = 25; // longest drawing slice (one task, well under 50 ms)
  var DRAW_SHARE = 0.25; // at most this share of the time goes to drawing
  var COLORS = { moving: "#1a9c3e", stopped: "#1f6fd1", offline: "#8a8f98" };
  var STREAM_PARAMS = ["device", "kind", "bbox", "online", "max_rate", "access_token"];

  var query = new URLSearchParams(window.location.search);
  var token = query.get("access_token");
  var streamQuery = new URLSearchParams();
  STREAM_PARAMS.forEach(function (k) {
    if (query.has(k)) streamQuery.set(k, query.get(k));
  });
  var streamUrl = "/api/stream" + (streamQuery.toString() ? "?" + streamQuery.toString() : "");

  // ---- the map ----------------------------------------------------------
  var map = L.map("map", { preferCanvas: true, worldCopyJump: true, minZoom: 1 });
  map.setView([30, 0], 2);
  map.attributionControl.setPrefix(
    '<a href="https://leafletjs.com">Leaflet</a> (<a href="/map/LICENSE-leaflet.txt">BSD-2-Clause</a>)'
  );
  map.createPane("outline").style.zIndex = 150;
  map.createPane("tails").style.zIndex = 390;
  map.createPane("devices").style.zIndex = 410;
  var outlineRenderer = L.canvas({ pane: "outline" });
  var tailRenderer = L.canvas({ pane: "tails" });
  var deviceRenderer = L.canvas({ pane: "devices" });

  fetch("/map/world-110m.geojson")
    .then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    })
    .then(function (world) {
      L.geoJSON(world, {
        pane: "outline",
        renderer: outlineRenderer,
        interactive: false,
        style: { color: "#8d9299", weight: 0.7, fillColor: "#f3f0e6", fillOpacity: 1 },
        attribution:
          'Natural Earth 110 m via <a href="/map/LICENSE-world-atlas.txt">world-atlas</a>',
      }).addTo(map);
    })
    .catch(function (e) {
      console.warn("fleetwire: world outline not loaded:", e);
    });

  var tilesMeta = document.querySelector('meta[name="fleetwire-tiles"]');
  var tilesUrl = tilesMeta && tilesMeta.getAttribute("content");
  if (tilesUrl) {
    L.tileLayer(tilesUrl, { maxZoom: 19, attribution: "tiles: " + escapeHtml(hostOf(tilesUrl)) }).addTo(map);
  }

  // ---- device state -----------------------------------------------------
  // id -> {id, online, moving, last_seen_ms, position, odometer_m,
  //        battery_pct, info, health, readings, event, track, marker, tail, color}
  var devices = new Map();
  var dirty = new Set();
  var totals = { devices: 0, online: 0, moving: 0 };
  var messages = 0;
  var dropped = 0;
  var frameRequested = false;
  var busy = { parse_ms: 0, draw_ms: 0, redraw_ms: 0, frames: 0, drawn: 0 }; // time spent, for tests and the console
  var fittedOnce = false;
  var userMoved = false;
  var snapshotSeen = null; // ids of the snapshot being received, or null
  var openDevice = null; // id whose popup is open

  function tally(d, sign) {
    totals.devices += sign;
    if (d.online) totals.online += sign;
    if (d.online && d.moving) totals.moving += sign;
  }

  function blank(id) {
    return {
      id: id, online: false, moving: false, last_seen_ms: null, position: null,
      odometer_m: null, battery_pct: null, info: null, health: null, readings: null,
      event: null, track: [], marker: null, tail: null, color: null,
    };
  }

  function device(id) {
    var d = devices.get(id);
    if (!d) {
      d = blank(id);
      devices.set(id, d);
      tally(d, 1);
    }
    return d;
  }

  // Applies `change` to the device's state, keeping the fleet counters right.
  function update(id, change) {
    if (typeof id !== "number" || !isFinite(id)) return;
    var d = device(id);
    tally(d, -1);
    change(d);
    tally(d, 1);
    dirty.add(id);
    schedule();
  }

  function validPosition(p) {
    return (
      p != null && typeof p.latitude === "number" && typeof p.longitude === "number" &&
      isFinite(p.latitude) && isFinite(p.longitude) &&
      Math.abs(p.latitude) <= 90 && Math.abs(p.longitude) <= 180 &&
      p.fix !== "none" && !(p.latitude === 0 && p.longitude === 0)
    );
  }

  function pushTrack(d, p) {
    var t = d.track;
    var last = t.length ? t[t.length - 1] : null;
    if (last && last[0] === p.latitude && last[1] === p.longitude) return;
    // A jump (a relocated device, one back after a long silence) starts
    // a new tail instead of a line across the map.
    if (last && L.latLng(last).distanceTo([p.latitude, p.longitude]) > TAIL_BREAK_M) t.length = 0;
    t.push([p.latitude, p.longitude]);
    while (t.length > TAIL_POINTS) t.shift();
  }

  function removeDevice(id) {
    var d = devices.get(id);
    if (!d) return;
    tally(d, -1);
    if (d.marker) d.marker.remove();
    if (d.tail) d.tail.remove();
    devices.delete(id);
    dirty.delete(id);
    if (openDevice === id) openDevice = null;
  }

  // ---- messages ---------------------------------------------------------
  var handlers = {
    device: function (m) {
      if (snapshotSeen === null) snapshotSeen = new Set();
      snapshotSeen.add(m.device);
      update(m.device, function (d) {
        d.online = !!m.online;
        d.moving = !!m.moving;
        d.last_seen_ms = m.last_seen_ms;
        d.position = validPosition(m.position) ? m.position : null;
        d.odometer_m = m.odometer_m;
        d.battery_pct = m.battery_pct;
        d.info = m.info || null;
        d.health = null;
        d.readings = null;
        d.event = null;
        d.track = [];
        if (d.position) pushTrack(d, d.position);
      });
    },
    snapshot_end: function () {
      // A snapshot replaces the whole picture: devices it did not name are gone.
      var seen = snapshotSeen || new Set();
      snapshotSeen = null;
      Array.from(devices.keys()).forEach(function (id) {
        if (!seen.has(id)) removeDevice(id);
      });
      if (!fittedOnce && positioned().length > 0) {
        fittedOnce = true;
        fit();
      }
      schedule();
    },
    position: function (m) {
      if (!validPosition(m.position)) return;
      update(m.device, function (d) {
        d.position = m.position;
        if (m.moving != null) d.moving = !!m.moving;
        if (m.odometer_m != null) d.odometer_m = m.odometer_m;
        d.last_seen_ms = m.received_ms;
        d.online = true;
        pushTrack(d, m.position);
      });
      if (!fittedOnce && !userMoved) {
        // The first snapshot had no positions: show the devices once the
        // first ones have arrived.
        fittedOnce = true;
        setTimeout(function () {
          if (!userMoved) fit();
        }, 1500);
      }
    },
    monitoring: function (m) {
      update(m.device, function (d) {
        d.health = m.health || null;
        d.readings = m.readings || null;
        if (m.health && m.health.battery_pct != null) d.battery_pct = m.health.battery_pct;
        d.last_seen_ms = m.received_ms;
        d.online = true;
      });
    },
    event: function (m) {
      update(m.device, function (d) {
        d.event = m.event || null;
        d.last_seen_ms = m.received_ms;
        d.online = true;
      });
    },
    hello: function (m) {
      update(m.device, function (d) {
        d.info = m.info || null;
      });
    },
    online: function (m) {
      update(m.device, function (d) {
        d.online = true;
        if (m.last_seen_ms != null) d.last_seen_ms = m.last_seen_ms;
      });
    },
    offline: function (m) {
      update(m.device, function (d) {
        d.online = false;
        if (m.last_seen_ms != null) d.last_seen_ms = m.last_seen_ms;
      });
    },
    dropped: function (m) {
      if (typeof m.count === "number") dropped += m.count;
      schedule();
    },
  };

  function onMessage(e) {
    var t0 = performance.now();
    messages += 1;
    var m;
    try {
      m = JSON.parse(e.data);
    } catch (err) {
      console.warn("fleetwire: message is not JSON:", e.data);
      return;
    }
    var h = handlers[(m && m.type) || e.type];
    if (h) h(m);
    schedule();
    busy.parse_ms += performance.now() - t0;
  }

  // ---- drawing, once per animation frame ----------------------------------
  // Drawing is sliced and paced: one slice draws dirty devices for at
  // most SLICE_MS (one short task), and the next slice waits so that
  // drawing takes at most DRAW_SHARE of the time. With few updates that is
  // every frame; with thousands of devices changing it is a slice every
  // ~100 ms, each device redrawn with its newest state when its turn comes.
  var nextDrawAt = 0;
  var drawTimer = null;
  var redrawMs = 0; // Leaflet's canvas redraws since the last slice

  // Leaflet redraws a canvas in the frame after its paths changed: count
  // that time too (Leaflet 1.9's Canvas#_redraw; the vendored version is
  // pinned, and without the method only the slices are paced).
  [tailRenderer, deviceRenderer].forEach(function (r) {
    var redraw = r._redraw;
    if (typeof redraw !== "function") return;
    r._redraw = function () {
      var t = performance.now();
      redraw.apply(this, arguments);
      redrawMs += performance.now() - t;
    };
  });

  function schedule() {
    if (!frameRequested) {
      frameRequested = true;
      window.requestAnimationFrame(frame);
    }
  }

  function frame() {
    var start = performance.now();
    if (start < nextDrawAt) {
      if (drawTimer === null) {
        drawTimer = setTimeout(function () {
          drawTimer = null;
          window.requestAnimationFrame(frame);
        }, nextDrawAt - start);
      }
      return;
    }
    frameRequested = false;
    var it = dirty.values();
    for (var n = it.next(); !n.done; n = it.next()) {
      dirty.delete(n.value);
      var d = devices.get(n.value);
      if (d) draw(d);
      busy.drawn += 1;
      if (performance.now() - start > SLICE_MS) break;
    }
    drawCounters();
    var cost = performance.now() - start;
    nextDrawAt = start + (cost + redrawMs) / DRAW_SHARE;
    busy.redraw_ms += redrawMs;
    redrawMs = 0;
    if (dirty.size > 0) schedule();
    busy.frames += 1;
    busy.draw_ms += cost;
  }

  function colorOf(d) {
    return !d.online ? COLORS.offline : d.moving ? COLORS.moving : COLORS.stopped;
  }

  function draw(d) {
    if (!d.position) {
      if (d.marker) d.marker.remove();
      if (d.tail) d.tail.remove();
      d.marker = d.tail = d.color = null;
      return;
    }
    var ll = [d.position.latitude, d.position.longitude];
    var color = colorOf(d);
    if (!d.marker) {
      d.marker = L.circleMarker(ll, {
        renderer: deviceRenderer, pane: "devices", radius: 6, color: "#ffffff", weight: 1.5,
        fillColor: color, fillOpacity: 0.95,
      });
      d.marker.bindPopup(function () {
        return popupHtml(devices.get(d.id) || d);
      }, { autoPan: false });
      d.marker.on("popupopen", function () { openDevice = d.id; });
      d.marker.on("popupclose", function () { if (openDevice === d.id) openDevice = null; });
      d.marker.addTo(map);
      d.color = color;
    } else {
      d.marker.setLatLng(ll);
      if (d.color !== color) {
        d.marker.setStyle({ fillColor: color });
        d.color = color;
      }
    }
    if (d.track.length >= 2) {
      if (!d.tail) {
        // (Leaflet copies the points.)
        d.tail = L.polyline(d.track, {
          renderer: tailRenderer, pane: "tails", color: color, weight: 2, opacity: 0.55,
          interactive: false,
        }).addTo(map);
      } else {
        d.tail.setLatLngs(d.track);
        if (d.tail.options.color !== color) d.tail.setStyle({ color: color });
      }
    } else if (d.tail) {
      d.tail.remove();
      d.tail = null;
    }
    if (openDevice === d.id && d.marker.isPopupOpen()) d.marker.getPopup().update();
  }

  // ---- the corner panel ---------------------------------------------------
  var el = {
    devices: document.getElementById("c-devices"),
    online: document.getElementById("c-online"),
    moving: document.getElementById("c-moving"),
    messages: document.getElementById("c-messages"),
    rate: document.getElementById("c-rate"),
    dropped: document.getElementById("c-dropped"),
    status: document.getElementById("status"),
    banner: document.getElementById("banner"),
    fleet: document.getElementById("fleet"),
    search: document.getElementById("search"),
    searchId: document.getElementById("search-id"),
    searchMsg: document.getElementById("search-msg"),
    fit: document.getElementById("fit"),
  };
  var rate = 0;

  function setText(node, v) {
    var s = String(v);
    if (node.textContent !== s) node.textContent = s;
  }

  function drawCounters() {
    setText(el.devices, totals.devices);
    setText(el.online, totals.online);
    setText(el.moving, totals.moving);
    setText(el.messages, messages);
    setText(el.rate, rate);
    setText(el.dropped, dropped);
  }

  var lastCount = 0;
  setInterval(function () {
    rate = messages - lastCount;
    lastCount = messages;
    drawCounters();
    if (openDevice !== null) {
      var d = devices.get(openDevice);
      if (d && d.marker && d.marker.isPopupOpen()) d.marker.getPopup().update();
    }
  }, 1000);

  function positioned() {
    var out = [];
    devices.forEach(function (d) {
      if (d.position) out.push([d.position.latitude, d.position.longitude]);
    });
    return out;
  }

  // Programmatic views are not animated: Leaflet ignores a setView while
  // a zoom animation runs, so an animated fit could swallow a search.
  function fit() {
    var pts = positioned();
    if (pts.length === 1) map.setView(pts[0], 13, { animate: false });
    else if (pts.length > 1) {
      map.fitBounds(L.latLngBounds(pts), { padding: [40, 40], maxZoom: 15, animate: false });
    }
  }

  function centreOn(ll, zoom) {
    map.setView(ll, zoom, { animate: false });
    if (map.getZoom() !== zoom) {
      // A zoom animation (the user's) was running: go there once it ends.
      map.once("zoomend", function () {
        map.setView(ll, zoom, { animate: false });
      });
    }
  }

  ["mousedown", "wheel", "touchstart", "keydown"].forEach(function (t) {
    document.getElementById("map").addEventListener(t, function () { userMoved = true; }, { passive: true });
  });
  el.fit.addEventListener("click", fit);

  el.search.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = el.searchId.value.trim();
    var id = Number(text);
    el.searchMsg.textContent = "";
    if (!/^\d+$/.test(text)) {
      el.searchMsg.textContent = "a device id is a number";
      return;
    }
    var d = devices.get(id);
    if (!d) {
      el.searchMsg.textContent = "no device " + id;
      return;
    }
    if (!d.position) {
      el.searchMsg.textContent = "device " + id + " has no position yet";
      return;
    }
    dirty.delete(id);
    draw(d);
    userMoved = true;
    centreOn([d.position.latitude, d.position.longitude], Math.max(map.getZoom(), 13));
    d.marker.openPopup();
  });

  // ---- popup ------------------------------------------------------------
  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function hostOf(url) {
    try {
      return new URL(url.replace(/[{}]/g, "")).host;
    } catch (e) {
      return "configured";
    }
  }

  function ago(ms) {
    if (ms == null) return "never";
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function compass(deg) {
    var names = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"];
    return names[Math.round((((deg % 360) + 360) % 360) / 45) % 8];
  }

  function num(v, digits) {
    return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : null;
  }

  function popupHtml(d) {
    var p = d.position || {};
    var rows = [];
    function row(k, v) {
      if (v != null && v !== "") rows.push("<tr><th>" + k + "</th><td>" + v + "</td></tr>");
    }
    var state = !d.online ? "offline" : d.moving ? "online, moving" : "online, stopped";
    row("state", state);
    var speed = num(p.speed_m_s, 1);
    row("speed", speed == null ? null : num(p.speed_m_s * 3.6, 1) + " km/h (" + speed + " m/s)");
    var heading = num(p.heading_deg, 0);
    row("heading", heading == null ? null : heading + "° " + compass(p.heading_deg));
    row("battery", d.battery_pct == null ? "unknown" : escapeHtml(d.battery_pct) + " %");
    row("last seen", '<span title="' + (d.last_seen_ms ? new Date(d.last_seen_ms).toISOString() : "") + '">' + ago(d.last_seen_ms) + "</span>");
    row("position", num(p.latitude, 5) == null ? null : num(p.latitude, 5) + ", " + num(p.longitude, 5));
    row("fix", p.fix == null ? null : escapeHtml(p.fix) + (p.satellites != null ? ", " + escapeHtml(p.satellites) + " satellites" : ""));
    row("odometer", num(d.odometer_m, 0) == null ? null : num(d.odometer_m / 1000, 2) + " km");
    var h = d.health || {};
    row("temperature", num(h.temperature_c, 1) == null ? null : num(h.temperature_c, 1) + " °C");
    row("supply", num(h.supply_mv, 0) == null ? null : num(h.supply_mv / 1000, 2) + " V");
    row("signal", num(h.rssi_dbm, 0) == null ? null : num(h.rssi_dbm, 0) + " dBm");
    var info = d.info || {};
    row("firmware", info.firmware == null ? "unknown" : escapeHtml(info.firmware));
    row("model", info.model == null ? "unknown" : escapeHtml(info.model));
    if (d.event) {
      var ev = d.event;
      row("last event", escapeHtml(ev.severity || "") + " " + escapeHtml(ev.code) + (ev.text ? ": " + escapeHtml(ev.text) : ""));
    }
    return '<div class="fw-popup"><h2>device ' + escapeHtml(d.id) + "</h2><table>" + rows.join("") + "</table></div>";
  }

  // ---- the stream -------------------------------------------------------
  var source = null;
  var retryMs = 1000;
  var live = false;

  function setStatus(state, text) {
    el.status.className = "status " + state;
    el.status.textContent = text;
    if (state === "reconnecting" || state === "disconnected") {
      el.banner.className = state;
      el.banner.textContent = text;
      el.banner.hidden = false;
    } else {
      el.banner.hidden = true;
    }
  }

  function connect() {
    source = new EventSource(streamUrl);
    source.onopen = function () {
      live = true;
      retryMs = 1000;
      setStatus("live", "live");
    };
    source.onerror = function () {
      live = false;
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (an HTTP error, not a broken
        // connection): the browser does not retry that by itself.
        source.close();
        var wait = retryMs;
        retryMs = Math.min(retryMs * 2, 30000);
        setStatus("disconnected", "disconnected, retrying in " + Math.round(wait / 1000) + " s");
        probe();
        setTimeout(connect, wait);
      } else {
        setStatus("reconnecting", "reconnecting…");
      }
    };
    source.onmessage = onMessage;
    Object.keys(handlers).forEach(function (type) {
      source.addEventListener(type, onMessage);
    });
  }

  // ---- fleet totals from /api/summary -------------------------------------
  function summaryRequest() {
    var url = "/api/summary" + (token ? "?access_token=" + encodeURIComponent(token) : "");
    var headers = token ? { Authorization: "Bearer " + token } : {};
    return fetch(url, { headers: headers, cache: "no-store" });
  }

  function probe() {
    summaryRequest()
      .then(function (r) {
        if (r.status === 401 || r.status === 403) {
          setStatus("disconnected", token ? "access denied: the access_token was refused" : "access denied: open /map?access_token=<token>");
        }
      })
      .catch(function () {});
  }

  function pollSummary() {
    summaryRequest()
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (s) {
        var rec = s.records || {};
        el.fleet.textContent =
          "fleet: " + (s.devices != null ? s.devices : "?") + " devices, " +
          (s.online != null ? s.online : "?") + " online, " +
          (rec.position != null ? rec.position : "?") + " positions received";
        el.fleet.hidden = false;
      })
      .catch(function () {
        el.fleet.hidden = true;
      });
  }

  pollSummary();
  setInterval(pollSummary, 5000);
  connect();

  // ---- for tests and the console -----------------------------------------
  window.fleetwire = {
    markers: function () {
      var out = {};
      devices.forEach(function (d, id) {
        if (d.marker) {
          var ll = d.marker.getLatLng();
          out[id] = [ll.lat, ll.lng];
        }
      });
      return out;
    },
    connected: function () {
      return live && source !== null && source.readyState === EventSource.OPEN;
    },
    messages: function () {
      return messages;
    },
    dropped: function () {
      return dropped;
    },
    counters: function () {
      return { devices: totals.devices, online: totals.online, moving: totals.moving, messages: messages, dropped: dropped };
    },
    busy: function () {
      return {
        parse_ms: busy.parse_ms, draw_ms: busy.draw_ms, redraw_ms: busy.redraw_ms, frames: busy.frames, drawn: busy.drawn, dirty: dirty.size,
      };
    },
    fit: fit,
    map: map,
  };
})();
