/* The chart page: reads /api/data/self or /api/data/ with the user's token and draws a
 * stacked bar of quota by model over time and a pie of request share by model, as
 * new-api's dashboard does. Plain JS, Chart.js from static/vendor/ (no CDN).
 *
 * Settings can come from the URL fragment (never sent to the server), e.g.
 *   /#token=...&user=2&granularity=day&range=30&scope=site&tz=Asia/Shanghai&realtime=false
 *   /#token=...&user=2&start=1700000000&end=1700600000
 * (`usage-stats up --demo` prints such a link); the page then draws at once. The fragment
 * is removed from the address bar once read (history.replaceState: no new history entry,
 * so the token does not linger in the address bar or the back button); the token stays
 * in this tab's sessionStorage only.
 *
 * When drawn, <body> carries data-state="drawn", data-datasets (models), data-buckets,
 * data-rows, and data-bar-pixels / data-pie-pixels (pixels painted in the models'
 * colours): what the browser test reads. data-state="error" on a failure.
 */
(function () {
  "use strict";

  const QUOTA_PER_USD = 500000;
  const PALETTE = ["#1f6feb", "#fb8500", "#2da44e", "#cf222e", "#8250df", "#0a9396", "#bf8700", "#e85aad",
                   "#57606a", "#6e40c9", "#1b998b", "#9a6700"];
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const serverZone = document.querySelector('meta[name="usage-stats-timezone"]').content;
  const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  let bars = null;
  let pie = null;
  if (typeof Chart !== "undefined") {
    Chart.defaults.font.family = getComputedStyle(body).fontFamily;
    Chart.defaults.color = "#1f2328";
  }

  function zoneOptions(extra) {
    const select = $("tz");
    const zones = [["", `server (${serverZone})`]];
    if (browserZone && browserZone !== serverZone) zones.push([browserZone, `browser (${browserZone})`]);
    if (extra && extra !== serverZone && extra !== browserZone) zones.push([extra, extra]);
    select.replaceChildren(...zones.map(([value, text]) => new Option(text, value)));
    if (extra && extra !== serverZone) select.value = extra;
  }

  function readFragment() {
    const p = new URLSearchParams(location.hash.slice(1));
    const stored = (k) => sessionStorage.getItem("usage-stats-" + k) || "";
    $("token").value = p.get("token") || stored("token");
    $("user").value = p.get("user") || stored("user");
    for (const k of ["scope", "granularity", "range"]) if (p.get(k)) $(k).value = p.get(k);
    if (p.get("username")) $("username").value = p.get("username");
    if (p.get("realtime")) $("realtime").checked = p.get("realtime") !== "false";
    zoneOptions(p.get("tz"));
    if (p.get("start") && p.get("end")) {
      $("range").value = "custom";
      $("start").value = localInput(Number(p.get("start")));
      $("end").value = localInput(Number(p.get("end")));
    }
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
    syncVisibility();
    return Boolean($("token").value && $("user").value);
  }

  function localInput(ts) {
    const d = new Date(ts * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function syncVisibility() {
    $("username-label").hidden = $("scope").value !== "user";
    $("custom-range").hidden = $("range").value !== "custom";
  }

  function range() {
    if ($("range").value === "custom") {
      const start = Math.floor(new Date($("start").value).getTime() / 1000);
      const end = Math.floor(new Date($("end").value).getTime() / 1000);
      if (!Number.isFinite(start) || !Number.isFinite(end)) throw new Error("choose a start and an end");
      return [start, end];
    }
    const end = Math.floor(Date.now() / 1000);
    return [end - Number($("range").value) * 86400, end];
  }

  // The access token is new-api's system access token; an API key (sk-...) is refused
  // by the API as an invalid token, so say which one is wanted before asking.
  const TOKEN_HINT = "use the system access token from new-api's personal settings, not an sk- API key";

  async function fetchRows() {
    if ($("token").value.trim().startsWith("sk-")) throw new Error(`that is an API key: ${TOKEN_HINT}`);
    const [start, end] = range();
    const q = new URLSearchParams({ granularity: $("granularity").value, start_timestamp: start, end_timestamp: end });
    if ($("tz").value) q.set("tz", $("tz").value);
    if (!$("realtime").checked) q.set("realtime", "false");
    let path = "api/data/self";
    if ($("scope").value !== "self") {
      path = "api/data/";
      if ($("scope").value === "user") q.set("username", $("username").value);
    }
    const response = await fetch(`${path}?${q}`, {
      headers: { Authorization: `Bearer ${$("token").value.trim()}`, "New-Api-User": $("user").value.trim() },
      cache: "no-store",
    });
    let payload;
    try {
      payload = await response.json();
    } catch (e) {
      throw new Error(`HTTP ${response.status}`);
    }
    if (!response.ok || !payload.success) {
      const message = payload.message || `HTTP ${response.status}`;
      throw new Error(response.status === 401 ? `${message} (${TOKEN_HINT})` : message);
    }
    return payload.data;
  }

  function label(ts, granularity, zone) {
    const opts = { timeZone: zone || serverZone, hourCycle: "h23" };
    if (granularity === "hour") Object.assign(opts, { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
    else if (granularity === "month") Object.assign(opts, { year: "numeric", month: "short" });
    else Object.assign(opts, { year: "numeric", month: "2-digit", day: "2-digit" });
    const text = new Intl.DateTimeFormat("en-CA", opts).format(new Date(ts * 1000));
    return granularity === "week" ? `week of ${text}` : text;
  }

  const fmt = new Intl.NumberFormat("en-US");
  const usd = (quota) => "$" + (quota / QUOTA_PER_USD).toFixed(quota >= QUOTA_PER_USD * 100 ? 0 : 2);

  function summarize(rows) {
    const buckets = [...new Set(rows.map((r) => r.created_at))].sort((a, b) => a - b);
    const byModel = new Map();
    for (const r of rows) {
      const m = byModel.get(r.model_name) || { count: 0, quota: 0, tokens: 0, perBucket: new Map() };
      m.count += r.count;
      m.quota += r.quota;
      m.tokens += r.token_used;
      m.perBucket.set(r.created_at, (m.perBucket.get(r.created_at) || 0) + r.quota);
      byModel.set(r.model_name, m);
    }
    const models = [...byModel.entries()].sort((a, b) => b[1].quota - a[1].quota || (a[0] < b[0] ? -1 : 1));
    return { buckets, models };
  }

  function colour(i) {
    return PALETTE[i % PALETTE.length];
  }

  function draw(rows) {
    const granularity = $("granularity").value;
    const { buckets, models } = summarize(rows);
    const name = (m) => m || "(no model)";
    if (bars) bars.destroy();
    if (pie) pie.destroy();
    bars = new Chart($("bars"), {
      type: "bar",
      data: {
        labels: buckets.map((b) => label(b, granularity, $("tz").value)),
        datasets: models.map(([model, m], i) => ({
          label: name(model),
          data: buckets.map((b) => (m.perBucket.get(b) || 0) / QUOTA_PER_USD),
          backgroundColor: colour(i),
          borderWidth: 0,
        })),
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: {
          x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true } },
          y: { stacked: true, title: { display: true, text: "USD (quota / 500,000)" } },
        },
        plugins: {
          legend: { position: "bottom" },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${usd(c.raw * QUOTA_PER_USD)} (${fmt.format(Math.round(c.raw * QUOTA_PER_USD))} quota)` } },
        },
      },
    });
    pie = new Chart($("pie"), {
      type: "pie",
      data: {
        labels: models.map(([model]) => name(model)),
        datasets: [{ data: models.map(([, m]) => m.count), backgroundColor: models.map((_, i) => colour(i)), borderWidth: 1 }],
      },
      options: { animation: false, responsive: true, maintainAspectRatio: false, plugins: { legend: { position: "bottom" } } },
    });

    const total = models.reduce((t, [, m]) => ({ count: t.count + m.count, quota: t.quota + m.quota, tokens: t.tokens + m.tokens }),
      { count: 0, quota: 0, tokens: 0 });
    $("total-count").textContent = fmt.format(total.count);
    $("total-quota").textContent = usd(total.quota);
    $("total-tokens").textContent = fmt.format(total.tokens);
    $("models").tBodies[0].replaceChildren(...models.map(([model, m]) => {
      const tr = document.createElement("tr");
      tr.dataset.model = model;
      tr.dataset.count = m.count;
      tr.dataset.quota = m.quota;
      tr.dataset.tokens = m.tokens;
      for (const text of [name(model), fmt.format(m.count), `${usd(m.quota)} (${fmt.format(m.quota)})`, fmt.format(m.tokens)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }));
    const used = models.map((_, i) => colour(i));
    requestAnimationFrame(() => {
      body.dataset.barPixels = painted($("bars"), used);
      body.dataset.piePixels = painted($("pie"), used);
      body.dataset.datasets = models.length;
      body.dataset.buckets = buckets.length;
      body.dataset.rows = rows.length;
      body.dataset.state = "drawn";
      $("status").textContent = rows.length ? `${fmt.format(rows.length)} rows, ${models.length} models` : "No usage in this range.";
    });
  }

  // Pixels of the canvas painted exactly in one of `hexes` (the interior of bars and slices).
  function painted(canvas, hexes) {
    const wanted = new Set(hexes.map((h) => h.toLowerCase()));
    const ctx = canvas.getContext("2d");
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const hex = (n) => n.toString(16).padStart(2, "0");
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] === 255 && wanted.has("#" + hex(data[i]) + hex(data[i + 1]) + hex(data[i + 2]))) n++;
    }
    return n;
  }

  async function load() {
    body.dataset.state = "loading";
    $("status").textContent = "Loading...";
    sessionStorage.setItem("usage-stats-token", $("token").value.trim());
    sessionStorage.setItem("usage-stats-user", $("user").value.trim());
    try {
      draw(await fetchRows());
    } catch (e) {
      body.dataset.state = "error";
      $("status").textContent = `Error: ${e.message}`;
    }
  }

  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  for (const id of ["scope", "range"]) $(id).addEventListener("change", syncVisibility);
  if (typeof Chart === "undefined") {
    body.dataset.state = "error";
    $("status").textContent = "Error: the chart library did not load";
  } else if (readFragment()) {
    load();
  } else {
    $("status").textContent = "Enter your access token and user id, then Show.";
  }
})();
