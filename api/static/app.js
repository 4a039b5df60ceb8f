/* The chart page: reads /api/data/self or /api/data/ with the user's token and draws a
 * stacked bar of quota over time and a pie of request share, split by the dimensions
 * chosen (model, key, channel, group, user), with the filters chosen; a flow of quota
 * between keys, groups, models and channels (/api/data/flow, /api/data/flow/self) drawn
 * as a small SVG Sankey; for administrators, the users with the most quota
 * (/api/data/users); and a CSV download of the rows shown. Plain JS, Chart.js from
 * static/vendor/ (no CDN), the Sankey drawn here.
 *
 * Settings can come from the URL fragment (never sent to the server), e.g.
 *   /#token=...&user=2&granularity=day&range=30&scope=site&tz=Asia/Shanghai&realtime=false
 *   /#token=...&user=2&start=1700000000&end=1700600000&group_by=model,channel&model_name=gpt-4o
 * (`usage-stats up --demo` prints such a link); the page then draws at once. The fragment
 * is removed from the address bar once read (history.replaceState: no new history entry,
 * so the token does not linger in the address bar or the back button); the token stays
 * in this tab's sessionStorage only.
 *
 * When drawn, <body> carries data-state="drawn", data-datasets (series charted),
 * data-buckets, data-rows, and data-bar-pixels / data-pie-pixels (pixels painted in the
 * series' colours); the flow card carries data-state (drawn, empty, error) and its SVG
 * nodes data-stage, data-name and data-quota; the ranking card data-state, data-users
 * (user ids, largest first) and data-quotas. That is what the browser test reads.
 * data-state="error" on <body> when the main answer failed.
 */
(function () {
  "use strict";

  const QUOTA_PER_USD = 500000;
  const PALETTE = ["#1f6feb", "#fb8500", "#2da44e", "#cf222e", "#8250df", "#0a9396", "#bf8700", "#e85aad",
                   "#57606a", "#6e40c9", "#1b998b", "#9a6700"];
  const OTHER_COLOUR = "#afb8c1";
  // Series drawn in their own colour; the rest are summed into one "other" series.
  const MAX_SERIES = 9;
  const MAX_TABLE_ROWS = 500;
  const MAX_FLOW_NODES = 8;
  const TOP_USERS = 10;
  // new-api's limit on /api/data/flow/self: a range of at most 30 days.
  const SELF_FLOW_SPAN = 30 * 86400;
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const serverZone = document.querySelector('meta[name="usage-stats-timezone"]').content;
  const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const charts = { bars: null, pie: null, ranking: null };
  let shown = null; // the view drawn last: what the CSV download exports
  let flowShown = null; // its flow rows and stages, redrawn when the window is resized
  if (typeof Chart !== "undefined") {
    Chart.defaults.font.family = getComputedStyle(body).fontFamily;
    Chart.defaults.color = "#1f2328";
  }

  const fmt = new Intl.NumberFormat("en-US");
  const usd = (quota) => "$" + (quota / QUOTA_PER_USD).toFixed(quota >= QUOTA_PER_USD * 100 ? 0 : 2);

  // The dimensions an answer is grouped by: group_by's value -> how a row names it.
  // `key` identifies the series, `name` is what the reader sees.
  const withId = (name, id, fallback) => {
    if (id === null || id === undefined) return "(none)";
    if (!name || name === `${fallback}-${id}`) return `${fallback} #${id}`;
    return `${name} #${id}`;
  };
  const DIMENSIONS = {
    model: { title: "Model", plural: "models", key: (r) => r.model_name, name: (r) => r.model_name || "(no model)" },
    token: { title: "Key", plural: "keys", key: (r) => r.token_id, name: (r) => withId(r.token_name, r.token_id, "key") },
    channel: { title: "Channel", plural: "channels", key: (r) => r.channel_id, name: (r) => withId(r.channel_name, r.channel_id, "channel") },
    group: { title: "Group", plural: "groups", key: (r) => r.use_group, name: (r) => r.use_group || "(no group)" },
    user: { title: "User", plural: "users", key: (r) => r.user_id, name: (r) => withId(r.username, r.user_id, "user") },
  };
  // Filters: the form field's name is the API's parameter; `column` is the row's field.
  const FILTERS = { model_name: "model_name", token_id: "token_id", channel: "channel_id", group: "use_group" };

  // --- the form ----------------------------------------------------------------------

  function zoneOptions(extra) {
    const select = $("tz");
    const zones = [["", `server (${serverZone})`]];
    if (browserZone && browserZone !== serverZone) zones.push([browserZone, `browser (${browserZone})`]);
    if (extra && extra !== serverZone && extra !== browserZone) zones.push([extra, extra]);
    select.replaceChildren(...zones.map(([value, text]) => new Option(text, value)));
    if (extra && extra !== serverZone) select.value = extra;
  }

  const groupBoxes = () => [...document.querySelectorAll('#group-by input[name="group_by"]')];

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
    if (p.get("group_by")) {
      const asked = p.get("group_by").split(",");
      for (const box of groupBoxes()) box.checked = asked.includes(box.value);
    }
    for (const name of Object.keys(FILTERS)) if (p.get(name)) $(`f-${name}`).value = p.get(name);
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
    const scope = $("scope").value;
    $("username-label").hidden = scope !== "user";
    $("custom-range").hidden = $("range").value !== "custom";
    // group_by=user is for the site-wide view (an administrator's); one user is one series.
    const byUser = groupBoxes().find((b) => b.value === "user");
    byUser.disabled = scope !== "site";
    if (byUser.disabled) byUser.checked = false;
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

  // The view the form asks for: the request's path and parameters, and what the panels
  // need to ask the same of their endpoints.
  function currentView() {
    const [start, end] = range();
    const scope = $("scope").value;
    let dims = groupBoxes().filter((b) => b.checked && !b.disabled).map((b) => b.value);
    if (!dims.length) {
      // Nothing to split by: the answer is per model, as without group_by.
      groupBoxes()[0].checked = true;
      dims = ["model"];
    }
    const time = new URLSearchParams({ granularity: $("granularity").value, start_timestamp: start, end_timestamp: end });
    if ($("tz").value) time.set("tz", $("tz").value);
    if (!$("realtime").checked) time.set("realtime", "false");
    const q = new URLSearchParams(time);
    q.set("group_by", dims.join(","));
    const filters = {};
    for (const name of Object.keys(FILTERS)) {
      const value = $(`f-${name}`).value.trim();
      if (value) {
        filters[name] = value;
        q.set(name, value);
      }
    }
    const username = scope === "user" ? $("username").value.trim() : null;
    if (username !== null) q.set("username", username);
    return {
      scope, start, end, dims, filters, username, time, q,
      path: scope === "self" ? "api/data/self" : "api/data/",
      granularity: $("granularity").value,
      tz: $("tz").value,
      realtime: $("realtime").checked,
    };
  }

  // --- talking to the API --------------------------------------------------------------

  // The access token is new-api's system access token; an API key (sk-...) is refused
  // by the API as an invalid token, so say which one is wanted before asking.
  const TOKEN_HINT = "use the system access token from new-api's personal settings, not an sk- API key";

  function headers() {
    return { Authorization: `Bearer ${$("token").value.trim()}`, "New-Api-User": $("user").value.trim() };
  }

  async function failureOf(response) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).message || message;
    } catch (e) {
      // not JSON: the status says it
    }
    return new Error(response.status === 401 ? `${message} (${TOKEN_HINT})` : message);
  }

  async function getData(path, q) {
    const response = await fetch(`${path}?${q}`, { headers: headers(), cache: "no-store" });
    if (!response.ok) throw await failureOf(response);
    let payload;
    try {
      payload = await response.json();
    } catch (e) {
      throw new Error(`HTTP ${response.status}`);
    }
    if (!payload.success) throw new Error(payload.message || "the API refused");
    return payload.data;
  }

  // --- the main charts -------------------------------------------------------------------

  function label(ts, granularity, zone) {
    const opts = { timeZone: zone || serverZone, hourCycle: "h23" };
    if (granularity === "hour") Object.assign(opts, { month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" });
    else if (granularity === "month") Object.assign(opts, { year: "numeric", month: "short" });
    else Object.assign(opts, { year: "numeric", month: "2-digit", day: "2-digit" });
    const text = new Intl.DateTimeFormat("en-CA", opts).format(new Date(ts * 1000));
    return granularity === "week" ? `week of ${text}` : text;
  }

  // Rows -> buckets and series (one per combination of the grouped dimensions), largest
  // quota first; beyond MAX_SERIES, the rest summed into one "other" series for the charts.
  function summarize(rows, dims) {
    const buckets = [...new Set(rows.map((r) => r.created_at))].sort((a, b) => a - b);
    const byKey = new Map();
    for (const r of rows) {
      const key = JSON.stringify(dims.map((d) => DIMENSIONS[d].key(r)));
      let s = byKey.get(key);
      if (!s) {
        s = { key, names: dims.map((d) => DIMENSIONS[d].name(r)), count: 0, quota: 0, tokens: 0, perBucket: new Map() };
        s.label = s.names.join(" · ");
        byKey.set(key, s);
      }
      s.count += r.count;
      s.quota += r.quota;
      s.tokens += r.token_used;
      s.perBucket.set(r.created_at, (s.perBucket.get(r.created_at) || 0) + r.quota);
    }
    const series = [...byKey.values()].sort((a, b) => b.quota - a.quota || b.count - a.count || (a.label < b.label ? -1 : 1));
    series.forEach((s, i) => { s.colour = i < MAX_SERIES || series.length === MAX_SERIES + 1 ? PALETTE[i % PALETTE.length] : null; });
    const charted = series.filter((s) => s.colour);
    const rest = series.filter((s) => !s.colour);
    if (rest.length) {
      const other = { label: `${rest.length} others`, colour: OTHER_COLOUR, count: 0, quota: 0, perBucket: new Map() };
      for (const s of rest) {
        other.count += s.count;
        other.quota += s.quota;
        for (const [b, q] of s.perBucket) other.perBucket.set(b, (other.perBucket.get(b) || 0) + q);
      }
      charted.push(other);
    }
    return { buckets, series, charted };
  }

  function destroy(name) {
    if (charts[name]) charts[name].destroy();
    charts[name] = null;
  }

  const usdTooltip = (c) => `${c.dataset.label || c.label}: ${usd(c.raw * QUOTA_PER_USD)} (${fmt.format(Math.round(c.raw * QUOTA_PER_USD))} quota)`;

  function drawMain(rows, view) {
    const { buckets, series, charted } = summarize(rows, view.dims);
    const titles = view.dims.map((d) => DIMENSIONS[d].title.toLowerCase());
    const splitName = titles.length > 1 ? `${titles.slice(0, -1).join(", ")} and ${titles[titles.length - 1]}` : titles[0];
    for (const el of document.querySelectorAll(".split-name")) el.textContent = splitName;
    destroy("bars");
    destroy("pie");
    charts.bars = new Chart($("bars"), {
      type: "bar",
      data: {
        labels: buckets.map((b) => label(b, view.granularity, view.tz)),
        datasets: charted.map((s) => ({
          label: s.label,
          data: buckets.map((b) => (s.perBucket.get(b) || 0) / QUOTA_PER_USD),
          backgroundColor: s.colour,
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
        plugins: { legend: { position: "bottom" }, tooltip: { callbacks: { label: usdTooltip } } },
      },
    });
    charts.pie = new Chart($("pie"), {
      type: "pie",
      data: {
        labels: charted.map((s) => s.label),
        datasets: [{ data: charted.map((s) => s.count), backgroundColor: charted.map((s) => s.colour), borderWidth: 1 }],
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        // Many or long names would squeeze the pie: the bars' legend has the same colours.
        plugins: { legend: { position: "bottom", display: charted.length <= 6 && charted.every((s) => s.label.length <= 28) } },
      },
    });

    const total = series.reduce((t, s) => ({ count: t.count + s.count, quota: t.quota + s.quota, tokens: t.tokens + s.tokens }),
      { count: 0, quota: 0, tokens: 0 });
    $("total-count").textContent = fmt.format(total.count);
    $("total-quota").textContent = usd(total.quota);
    $("total-tokens").textContent = fmt.format(total.tokens);
    drawTable(series, view.dims);
    if (view.dims.includes("model")) {
      const models = [...new Set(rows.map((r) => r.model_name).filter(Boolean))].sort();
      $("model-names").replaceChildren(...models.map((m) => new Option(m)));
    }
    return { series, charted, buckets };
  }

  function drawTable(series, dims) {
    const th = (text) => Object.assign(document.createElement("th"), { textContent: text });
    $("series").tHead.rows[0].replaceChildren(...dims.map((d) => th(DIMENSIONS[d].title)), th("Requests"), th("Quota"), th("Tokens"));
    $("series").tBodies[0].replaceChildren(...series.slice(0, MAX_TABLE_ROWS).map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.series = s.label;
      tr.dataset.count = s.count;
      tr.dataset.quota = s.quota;
      tr.dataset.tokens = s.tokens;
      const cells = [...s.names, fmt.format(s.count), `${usd(s.quota)} (${fmt.format(s.quota)})`, fmt.format(s.tokens)];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (i === 0) {
          // The series' colour in the charts; grey: summed into "others" there.
          const swatch = document.createElement("span");
          swatch.className = "swatch";
          swatch.style.backgroundColor = s.colour || OTHER_COLOUR;
          td.append(swatch);
        }
        td.append(text);
        tr.append(td);
      });
      return tr;
    }));
    $("series-more").textContent = series.length > MAX_TABLE_ROWS
      ? `and ${fmt.format(series.length - MAX_TABLE_ROWS)} more: the CSV download has every row.` : "";
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

  const nextFrame = () => new Promise((resolve) => requestAnimationFrame(resolve));

  // --- the flow: keys, groups, models, channels --------------------------------------------

  // Which stages the flow rows allow: root's rows carry keys (keys -> models -> channels),
  // an administrator's do not (groups -> models -> channels), a user's own have no
  // channels (keys -> groups -> models).
  function flowStages(view, rows) {
    if (view.scope === "self") return ["token", "group", "model"];
    if (rows.length && "token_id" in rows[0]) return ["token", "model", "channel"];
    return ["group", "model", "channel"];
  }

  // Widths of label text (12px, the page's font), and a name shortened with an ellipsis
  // until "<name> <amount>" fits in `room` pixels.
  const measure = document.createElement("canvas").getContext("2d");
  measure.font = `12px ${getComputedStyle(body).fontFamily}`;
  const textWidth = (text) => measure.measureText(text).width;
  function fit(name, amount, room) {
    let shown = name;
    for (let n = name.length - 1; n > 3 && textWidth(`${shown} ${amount}`) > room; n--) shown = name.slice(0, n) + "…";
    return shown;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (parent) parent.append(el);
    return el;
  }

  // A Sankey of quota through `stages` (dimensions) of the flat `rows`: a column of
  // nodes per stage (the largest MAX_FLOW_NODES - 1, then one node for the rest), a
  // band between adjacent stages for each pair of nodes, as wide as its quota.
  function drawSankey(box, rows, stages) {
    rows = rows.filter((r) => r.quota > 0);
    const total = rows.reduce((t, r) => t + r.quota, 0);
    const columns = stages.map((dim) => {
      const byKey = new Map();
      for (const r of rows) {
        const key = JSON.stringify(DIMENSIONS[dim].key(r));
        const n = byKey.get(key) || { key, name: DIMENSIONS[dim].name(r), value: 0 };
        n.value += r.quota;
        byKey.set(key, n);
      }
      let nodes = [...byKey.values()].sort((a, b) => b.value - a.value || (a.name < b.name ? -1 : 1));
      const of = new Map(nodes.map((n) => [n.key, n]));
      if (nodes.length > MAX_FLOW_NODES) {
        const rest = nodes.slice(MAX_FLOW_NODES - 1);
        const other = { key: "\u0000other", name: `${rest.length} others`, value: 0, other: true };
        for (const n of rest) {
          other.value += n.value;
          of.set(n.key, other);
        }
        nodes = [...nodes.slice(0, MAX_FLOW_NODES - 1), other];
      }
      nodes.forEach((n, i) => { n.colour = n.other ? OTHER_COLOUR : PALETTE[i % PALETTE.length]; });
      return { dim, nodes, of: (r) => of.get(JSON.stringify(DIMENSIONS[dim].key(r))) };
    });
    const layers = columns.slice(1).map((col, i) => {
      const links = new Map();
      for (const r of rows) {
        const source = columns[i].of(r);
        const target = col.of(r);
        const key = source.key + "\u0001" + target.key;
        const link = links.get(key) || { source, target, value: 0 };
        link.value += r.quota;
        links.set(key, link);
      }
      return [...links.values()];
    });

    // Layout: node columns spread over the width; the first column's labels on its left,
    // the others' on their right, each margin as wide as its longest label (names are
    // shortened to fit at most 30% of the width).
    const width = Math.max(box.clientWidth, 480);
    const nodeWidth = 12;
    const gap = 14;
    const top = 22;
    const room = width * 0.3 - 12;
    for (const col of columns) {
      for (const n of col.nodes) n.shown = fit(n.name, usd(n.value), room);
    }
    const margin = (col) => Math.max(...col.nodes.map((n) => textWidth(`${n.shown} ${usd(n.value)}`))) + 12;
    const left = margin(columns[0]);
    const right = margin(columns[columns.length - 1]);
    const step = (width - left - right - nodeWidth) / (stages.length - 1);
    const tallest = Math.max(...columns.map((c) => c.nodes.length));
    const bottom = 8;
    const height = Math.max(260, tallest * 40) + top + bottom;
    const free = height - top - bottom;
    // Pixels per quota: the largest at which every column fits, its nodes at least 2px.
    const scaleFor = (col) => {
      let scale = (free - gap * (col.nodes.length - 1)) / total;
      for (let pass = 0; pass < 3; pass++) {
        const tiny = col.nodes.filter((n) => n.value * scale < 2);
        const rest = total - tiny.reduce((t, n) => t + n.value, 0);
        if (rest > 0) scale = (free - gap * (col.nodes.length - 1) - 2 * tiny.length) / rest;
      }
      return scale;
    };
    const scale = Math.min(...columns.map(scaleFor));
    columns.forEach((col, i) => {
      const used = col.nodes.reduce((t, n) => t + Math.max(n.value * scale, 2), 0) + gap * (col.nodes.length - 1);
      let y = top + (free - used) / 2;
      for (const n of col.nodes) {
        if (i > 0 && i < columns.length - 1) n.shown = fit(n.name, usd(n.value), step - nodeWidth - 16);
        n.x = left + i * step;
        n.y = y;
        n.h = Math.max(n.value * scale, 2);
        n.out = 0;
        n.in = 0;
        y += n.h + gap;
      }
    });

    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", class: "sankey" });
    const title = (el, text) => { svg("title", {}, el).textContent = text; };
    columns.forEach((col, i) => {
      const x = left + i * step + nodeWidth / 2;
      svg("text", { x, y: 12, "text-anchor": "middle", class: "stage" }, root).textContent = DIMENSIONS[col.dim].plural;
    });
    // Bands: out of each source in the order of their targets, into each target in the
    // order of their sources, so that bands do not cross at the nodes.
    for (const links of layers) {
      for (const link of [...links].sort((a, b) => a.source.y - b.source.y || a.target.y - b.target.y)) {
        link.h0 = (link.value * link.source.h) / link.source.value;
        link.y0 = link.source.y + link.source.out;
        link.source.out += link.h0;
      }
      for (const link of [...links].sort((a, b) => a.target.y - b.target.y || a.source.y - b.source.y)) {
        link.h1 = (link.value * link.target.h) / link.target.value;
        link.y1 = link.target.y + link.target.in;
        link.target.in += link.h1;
      }
      for (const link of links) {
        const x0 = link.source.x + nodeWidth;
        const x1 = link.target.x;
        const xm = (x0 + x1) / 2;
        const { y0, y1, h0, h1 } = link;
        const d = `M${x0},${y0} C${xm},${y0} ${xm},${y1} ${x1},${y1} L${x1},${y1 + h1} `
          + `C${xm},${y1 + h1} ${xm},${y0 + h0} ${x0},${y0 + h0} Z`;
        const path = svg("path", { d, fill: link.source.colour, class: "band" }, root);
        path.dataset.source = link.source.name;
        path.dataset.target = link.target.name;
        path.dataset.quota = link.value;
        title(path, `${link.source.name} → ${link.target.name}: ${usd(link.value)} (${fmt.format(link.value)} quota)`);
      }
    }
    // Nodes; labels left of the first column (room was kept for them), right of the others.
    columns.forEach((col, i) => {
      for (const n of col.nodes) {
        const rect = svg("rect", { x: n.x, y: n.y, width: nodeWidth, height: n.h, fill: n.colour, class: "node" }, root);
        rect.dataset.stage = col.dim;
        rect.dataset.name = n.name;
        rect.dataset.quota = n.value;
        title(rect, `${n.name}: ${usd(n.value)} (${fmt.format(n.value)} quota)`);
        const text = svg("text", {
          x: i === 0 ? n.x - 6 : n.x + nodeWidth + 6,
          y: n.y + n.h / 2,
          "text-anchor": i === 0 ? "end" : "start",
          "dominant-baseline": "middle",
          class: "label",
        }, root);
        text.append(n.shown + " ");
        svg("tspan", { class: "amount" }, text).textContent = usd(n.value);
      }
    });
    box.replaceChildren(root);
  }

  // The instants the buckets of the main answer cover: from its first bucket's start to
  // its last bucket's end, so that the flow sums the logs the charts sum (the API counts a
  // bucket when it starts in the range, the flow sums hours). Without rows, the range.
  function coveredRange(rows, view) {
    if (!rows.length) return [view.start, view.end];
    const starts = rows.map((r) => r.created_at);
    const last = Math.max(...starts);
    return [Math.min(...starts), last + bucketLength(last, view) - 1];
  }

  // Seconds in the bucket starting at `ts` (a DST day is taken as 24 hours).
  function bucketLength(ts, view) {
    if (view.granularity !== "month") return { hour: 3600, day: 86400, week: 7 * 86400 }[view.granularity];
    const parts = new Intl.DateTimeFormat("en-US", { timeZone: view.tz || serverZone, year: "numeric", month: "numeric" })
      .formatToParts(new Date(ts * 1000));
    const part = (type) => Number(parts.find((p) => p.type === type).value);
    return new Date(Date.UTC(part("year"), part("month"), 0)).getUTCDate() * 86400;
  }

  async function loadFlow(view, [first, last]) {
    const card = $("flow-card");
    card.dataset.state = "loading";
    const notes = [];
    try {
      let start = Math.max(first, 1);
      if (view.scope === "self" && last - start > SELF_FLOW_SPAN) {
        start = last - SELF_FLOW_SPAN;
        notes.push("the last 30 days shown: the most the API gives a user");
      }
      const q = new URLSearchParams({ start_timestamp: start, end_timestamp: last });
      if (!view.realtime) q.set("realtime", "false");
      if (view.username !== null) q.set("username", view.username);
      let rows = await getData(view.scope === "self" ? "api/data/flow/self" : "api/data/flow", q);
      const stages = flowStages(view, rows);
      $("flow-stages").textContent = stages.map((d) => DIMENSIONS[d].plural).join(" → ");
      // The flow routes take no filters: the page keeps the rows that match them, where
      // the rows carry the filtered column.
      const unused = [];
      for (const [name, value] of Object.entries(view.filters)) {
        const column = FILTERS[name];
        if (rows.length && !(column in rows[0])) unused.push(name);
        else rows = rows.filter((r) => String(r[column]) === value);
      }
      if (unused.length) notes.push(`not filtered by ${unused.join(", ")}`);
      notes.push("requests with no group are left out");
      $("flow-note").textContent = notes.length ? `(${notes.join("; ")})` : "";
      flowShown = { rows, stages };
      if (!rows.some((r) => r.quota > 0)) {
        card.dataset.state = "empty";
        $("flow").replaceChildren(Object.assign(document.createElement("p"), { className: "empty", textContent: "No quota in this range." }));
        return;
      }
      drawSankey($("flow"), rows, stages);
      card.dataset.state = "drawn";
    } catch (e) {
      flowShown = null;
      card.dataset.state = "error";
      $("flow-note").textContent = "";
      $("flow").replaceChildren(Object.assign(document.createElement("p"), { className: "error", textContent: `Error: ${e.message}` }));
    }
  }

  // --- administrators: the users with the most quota ---------------------------------------

  async function loadRanking(view) {
    const card = $("ranking-card");
    card.hidden = view.scope !== "site";
    destroy("ranking");
    if (card.hidden) {
      card.dataset.state = "idle";
      return;
    }
    card.dataset.state = "loading";
    const filtered = Object.keys(view.filters);
    $("ranking-note").textContent = filtered.length ? `(all usage: not filtered by ${filtered.join(", ")})` : "";
    try {
      const rows = await getData("api/data/users", view.time);
      const byUser = new Map();
      for (const r of rows) {
        const u = byUser.get(r.user_id) || { id: r.user_id, name: r.username, quota: 0, count: 0 };
        u.quota += r.quota;
        u.count += r.count;
        byUser.set(r.user_id, u);
      }
      const top = [...byUser.values()].sort((a, b) => b.quota - a.quota || a.id - b.id).slice(0, TOP_USERS);
      card.dataset.users = top.map((u) => u.id).join(",");
      card.dataset.quotas = top.map((u) => u.quota).join(",");
      charts.ranking = new Chart($("ranking"), {
        type: "bar",
        data: {
          labels: top.map((u) => u.name || `user #${u.id}`),
          datasets: [{ label: "quota", data: top.map((u) => u.quota / QUOTA_PER_USD), backgroundColor: PALETTE[0], borderWidth: 0 }],
        },
        options: {
          indexAxis: "y",
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          scales: { x: { title: { display: true, text: "USD" } }, y: { ticks: { autoSkip: false } } },
          plugins: { legend: { display: false }, tooltip: { callbacks: { label: usdTooltip } } },
        },
      });
      card.dataset.state = top.length ? "drawn" : "empty";
    } catch (e) {
      card.dataset.state = "error";
      $("ranking-note").textContent = `Error: ${e.message}`;
    }
  }

  // --- the CSV download --------------------------------------------------------------------

  // The token travels in a header, which a plain link cannot carry: fetch, then hand the
  // answer to the browser as a file through a Blob URL.
  async function downloadCsv() {
    if (!shown) return;
    const q = new URLSearchParams(shown.q);
    q.set("format", "csv");
    $("csv").disabled = true;
    try {
      const response = await fetch(`${shown.path}?${q}`, { headers: headers(), cache: "no-store" });
      if (!response.ok) throw await failureOf(response);
      const blob = await response.blob();
      const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const filename = named ? named[1] : "usage.csv";
      const url = URL.createObjectURL(blob);
      const a = Object.assign(document.createElement("a"), { href: url, download: filename });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      body.dataset.csv = filename;
      $("status").textContent = `Saved ${filename} (${fmt.format(blob.size)} bytes).`;
    } catch (e) {
      $("status").textContent = `CSV download failed: ${e.message}`;
    } finally {
      $("csv").disabled = false;
    }
  }

  // --- the whole page ------------------------------------------------------------------------

  // One load at a time: Show waits for the answers (and the panels) of the last one.
  async function load() {
    const show = $("controls").querySelector('button[type="submit"]');
    show.disabled = true;
    try {
      await loadView();
    } finally {
      show.disabled = false;
    }
  }

  async function loadView() {
    body.dataset.state = "loading";
    $("status").textContent = "Loading...";
    sessionStorage.setItem("usage-stats-token", $("token").value.trim());
    sessionStorage.setItem("usage-stats-user", $("user").value.trim());
    let view;
    let drawn;
    let rows;
    try {
      if ($("token").value.trim().startsWith("sk-")) throw new Error(`that is an API key: ${TOKEN_HINT}`);
      view = currentView();
      rows = await getData(view.path, view.q);
      drawn = drawMain(rows, view);
    } catch (e) {
      shown = null;
      $("csv").disabled = true;
      body.dataset.state = "error";
      $("status").textContent = `Error: ${e.message}`;
      return;
    }
    shown = view;
    body.dataset.scope = view.scope; // the layout: the ranking is for the site-wide view
    $("csv").disabled = false;
    await Promise.all([loadFlow(view, coveredRange(rows, view)), loadRanking(view)]);
    await nextFrame();
    const used = drawn.charted.map((s) => s.colour);
    body.dataset.barPixels = painted($("bars"), used);
    body.dataset.piePixels = painted($("pie"), used);
    body.dataset.datasets = drawn.charted.length;
    body.dataset.buckets = drawn.buckets.length;
    body.dataset.rows = rows.length;
    body.dataset.state = "drawn";
    const what = view.dims.length === 1 ? DIMENSIONS[view.dims[0]].plural : "series";
    $("status").textContent = rows.length ? `${fmt.format(rows.length)} rows, ${drawn.series.length} ${what}` : "No usage in this range.";
  }

  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  $("csv").addEventListener("click", downloadCsv);
  for (const id of ["scope", "range"]) $(id).addEventListener("change", syncVisibility);
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      if (flowShown && $("flow-card").dataset.state === "drawn") drawSankey($("flow"), flowShown.rows, flowShown.stages);
    }, 150);
  });
  if (typeof Chart === "undefined") {
    body.dataset.state = "error";
    $("status").textContent = "Error: the chart library did not load";
  } else if (readFragment()) {
    load();
  } else {
    $("status").textContent = "Enter your access token and user id, then Show.";
  }
})();
