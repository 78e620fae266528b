// The openmaker console: draws each view from its JSON endpoint under /console/api.
// Everything from the server goes on screen through text nodes (never as markup), and the
// only requests that change something carry the session's CSRF token in a header.
"use strict";

(function () {
  const API = "/console/api";
  const POLL_MS = 2000;
  const LOG_BATCH = 1000;  // what one /logs answer holds at most (views.py)
  const LOG_BATCHES = 20;
  const MAX_LINES = 50000;  // what the page keeps (and searches) of a log
  const COLOURS = ["#2459c9", "#d9480f", "#1b7f3a", "#8e44ad", "#b42318", "#0b7285", "#a15c00"];
  const STATUSES = ["InProgress", "Completed", "Failed", "Stopping", "Stopped"];
  let csrf = null;
  let timer = null;  // the current view's poll
  let generation = 0;  // a view's callbacks stop once another view is drawn

  // el("td", {class: "x"}, "text", childNode): children that are strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  function problem(message) {
    const box = document.getElementById("problem");
    box.textContent = message || "";
    box.hidden = !message;
  }

  async function call(path, options) {
    const answer = await fetch(API + path, Object.assign({credentials: "same-origin"}, options));
    if (answer.status === 401) {
      window.location.assign("/console/login");
      throw new Error("Log in again.");
    }
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.message || ("HTTP " + answer.status));
    return data;
  }

  async function change(path) {
    if (csrf === null) csrf = (await call("/session")).csrf;
    return call(path, {method: "POST", headers: {"X-CSRF-Token": csrf}});
  }

  function when(ms) {
    return ms ? new Date(ms).toLocaleString() : "";
  }

  function duration(row) {
    const start = row.started || row.created;
    if (!start) return "";
    const seconds = Math.max(0, Math.round(((row.ended || Date.now()) - start) / 1000));
    const h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }

  function badge(status) {
    const known = STATUSES.includes(status) ? status : "";
    return el("span", {class: "status " + known}, status);
  }

  function jobLink(name) {
    return el("a", {href: "#/job/" + encodeURIComponent(name)}, name);
  }

  function empty(...lines) {
    return el("div", {class: "empty"}, lines.map((line) => el("p", {}, line)));
  }

  function show(...nodes) {
    const view = document.getElementById("view");
    view.replaceChildren(...nodes.flat());
  }

  // Runs `step` now and every POLL_MS while this view is shown.
  function poll(step) {
    const mine = generation;
    const run = async () => {
      if (mine !== generation) return;
      try {
        await step(mine);
        problem("");
      } catch (error) {
        if (mine === generation) problem(error.message);
      }
      if (mine === generation) timer = window.setTimeout(run, POLL_MS);
    };
    run();
  }

  // ---- the jobs table -------------------------------------------------------------------
  const table = {name: "", status: "", sort: "CreationTime", order: "desc", tokens: [null]};

  function jobsView() {
    const filter = el("input", {type: "search", placeholder: "Name contains", value: table.name});
    const status = el("select", {}, el("option", {value: ""}, "Any status"),
      STATUSES.map((s) => el("option", {value: s, selected: s === table.status}, s)));
    const body = el("tbody");
    const pager = el("div", {class: "pager"});
    const refilter = () => {
      table.name = filter.value;
      table.status = status.value;
      table.tokens = [null];
      draw();
    };
    filter.addEventListener("change", refilter);
    status.addEventListener("change", refilter);
    const header = (label, key) => {
      if (!key) return el("th", {}, label);
      const mark = table.sort === key ? (table.order === "desc" ? " ▼" : " ▲") : "";
      return el("th", {class: "sortable", onclick: () => {
        table.order = table.sort === key && table.order === "desc" ? "asc" : "desc";
        table.sort = key;
        table.tokens = [null];
        draw();
      }}, label + mark);
    };
    const draw = () => {
      generation += 1;
      window.clearTimeout(timer);
      show(el("h1", {}, "Training jobs"),
        el("div", {class: "toolbar"}, filter, status),
        el("table", {id: "jobs"}, el("thead", {}, el("tr", {},
          header("Name", "Name"), header("Status", "Status"), el("th", {}, "Secondary status"),
          el("th", {}, "Instances"), el("th", {}, "Duration"), header("Created", "CreationTime"))),
        body),
        pager);
      poll(async (mine) => {
        const page = table.tokens[table.tokens.length - 1];
        const query = new URLSearchParams({sort: table.sort, order: table.order, limit: "25"});
        if (table.name) query.set("name", table.name);
        if (table.status) query.set("status", table.status);
        if (page) query.set("token", page);
        const data = await call("/jobs?" + query.toString());
        if (mine !== generation) return;
        body.replaceChildren(...data.jobs.map((row) => el("tr", {"data-job": row.name},
          el("td", {class: "name"}, jobLink(row.name)),
          el("td", {}, badge(row.status)),
          el("td", {}, row.secondary || ""),
          el("td", {}, (row.instanceType || "") + " × " + (row.instanceCount || 1)),
          el("td", {}, duration(row)),
          el("td", {}, when(row.created)))));
        if (!data.jobs.length) {
          body.replaceChildren(el("tr", {}, el("td", {colspan: 6}, (table.name || table.status)
            ? empty("No training job matches these filters.")
            : empty("No training jobs yet.",
              "Start one with 'openmaker train …', or CreateTrainingJob from boto3 or the " +
              "sagemaker SDK after eval \"$(openmaker env)\"."))));
        }
        const back = el("button", {type: "button", disabled: table.tokens.length < 2,
          onclick: () => { table.tokens.pop(); draw(); }}, "Previous");
        const next = el("button", {type: "button", disabled: !data.next,
          onclick: () => { table.tokens.push(data.next); draw(); }}, "Next");
        pager.replaceChildren(back, el("span", {class: "muted"}, "Page " + table.tokens.length),
          next);
      });
    };
    draw();
  }

  // ---- a job ----------------------------------------------------------------------------
  function kv(pairs) {
    return el("dl", {class: "kv"}, pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== "")
      .map(([k, v]) => [el("dt", {}, k), el("dd", {}, typeof v === "object" ? JSON.stringify(v) : v)]));
  }

  function requestCards(job) {
    const cards = [];
    const channels = job.InputDataConfig || [];
    cards.push(el("div", {class: "card"}, el("h2", {}, "Input channels"), channels.length
      ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Channel"), el("th", {}, "Mode"),
        el("th", {}, "Source"))), el("tbody", {}, channels.map((c) => {
          const source = c.DataSource || {};
          const s3 = source.S3DataSource || {};
          const file = source.FileSystemDataSource || {};
          return el("tr", {}, el("td", {}, c.ChannelName),
            el("td", {}, c.InputMode || (job.AlgorithmSpecification || {}).TrainingInputMode || ""),
            el("td", {class: "mono"}, s3.S3Uri || file.DirectoryPath || JSON.stringify(source)));
        })))
      : el("p", {class: "muted"}, "No input channels.")));
    const hp = Object.entries(job.HyperParameters || {});
    cards.push(el("div", {class: "card"}, el("h2", {}, "Hyperparameters"),
      hp.length ? kv(hp) : el("p", {class: "muted"}, "None.")));
    const r = job.ResourceConfig || {};
    const stop = job.StoppingCondition || {};
    const algo = job.AlgorithmSpecification || {};
    cards.push(el("div", {class: "card"}, el("h2", {}, "Resources"), kv([
      ["Instance type", r.InstanceType], ["Instance count", r.InstanceCount],
      ["Volume (GB)", r.VolumeSizeInGB], ["Image", algo.TrainingImage],
      ["Input mode", algo.TrainingInputMode],
      ["Max runtime (s)", stop.MaxRuntimeInSeconds], ["Max wait (s)", stop.MaxWaitTimeInSeconds],
    ])));
    return cards;
  }

  function timeline(job) {
    const steps = job.SecondaryStatusTransitions || [];
    return el("div", {class: "card"}, el("h2", {}, "Timeline"), el("ol", {class: "timeline"},
      steps.map((t, i) => el("li", {class: i === steps.length - 1 ? "last" : null},
        el("strong", {}, t.Status), " ", el("span", {class: "muted"}, when(t.StartTime)),
        t.StatusMessage ? el("div", {}, t.StatusMessage) : null))));
  }

  function ended(job) {
    return ["Completed", "Failed", "Stopped"].includes(job.TrainingJobStatus);
  }

  function artifacts(job) {
    const model = (job.ModelArtifacts || {}).S3ModelArtifacts;
    const output = (job.OutputDataConfig || {}).S3OutputPath;
    return el("div", {class: "card"}, el("h2", {}, "Artifacts"), kv([
      ["Model", model], ["Output path", output],
      ["Checkpoints", (job.CheckpointConfig || {}).S3Uri],
    ]), ended(job) ? el("p", {}, ["model", "output"].filter((k) => k !== "model" ||
      String(model || "").endsWith(".tar.gz")).map((kind) => el("a", {
      class: "download", href: API + "/jobs/" + encodeURIComponent(job.TrainingJobName) +
        "/artifacts/" + kind, download: true}, "Download " + kind + ".tar.gz")))
      : el("p", {class: "muted"}, "Downloads appear once the job has ended."));
  }

  // One SVG line chart: a line per host; drag across it to zoom, double-click to reset.
  function chart(title, byHost) {
    const width = 600, height = 220, left = 54, right = 10, top = 10, bottom = 26;
    const box = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img"});
    const legend = el("div", {class: "legend"});
    let hosts = Object.keys(byHost).sort();
    // Values logged within one second (a quick job) are spread by their order instead of
    // their time: on a time axis they would stack into one vertical line.
    const stamps = hosts.flatMap((h) => byHost[h].map((p) => p[0]));
    const byOrder = Math.max(...stamps) - Math.min(...stamps) < 1000;
    if (byOrder) {
      byHost = Object.fromEntries(hosts.map((h) => [h, byHost[h].map((p, i) => [i + 1, p[1]])]));
      hosts = Object.keys(byHost).sort();
    }
    const tickLabel = (t) => byOrder ? "#" + Math.round(t) : new Date(t).toLocaleTimeString();
    let range = null;  // [t0, t1] when zoomed
    const drawLines = () => {
      box.replaceChildren();
      const all = hosts.flatMap((h) => byHost[h]).filter((p) => !range || (p[0] >= range[0] && p[0] <= range[1]));
      if (!all.length) return;
      const t0 = range ? range[0] : Math.min(...all.map((p) => p[0]));
      const t1 = range ? range[1] : Math.max(...all.map((p) => p[0]));
      let v0 = Math.min(...all.map((p) => p[1])), v1 = Math.max(...all.map((p) => p[1]));
      if (v0 === v1) { v0 -= 1; v1 += 1; }
      const x = (t) => left + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (width - left - right);
      const y = (v) => top + (1 - (v - v0) / (v1 - v0)) * (height - top - bottom);
      box.appendChild(svg("line", {class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom}));
      box.appendChild(svg("line", {class: "axis", x1: left, y1: top, x2: left, y2: height - bottom}));
      for (const [v, anchorY] of [[v1, top + 8], [v0, height - bottom]]) {
        const label = svg("text", {x: left - 4, y: anchorY, "text-anchor": "end"});
        label.textContent = Number(v.toPrecision(4)).toString();
        box.appendChild(label);
      }
      for (const [t, anchor, at] of [[t0, "start", left], [t1, "end", width - right]]) {
        const label = svg("text", {x: at, y: height - 8, "text-anchor": anchor});
        label.textContent = tickLabel(t);
        box.appendChild(label);
      }
      hosts.forEach((host, i) => {
        const points = byHost[host].filter((p) => !range || (p[0] >= range[0] && p[0] <= range[1]));
        const colour = COLOURS[i % COLOURS.length];
        box.appendChild(svg("polyline", {fill: "none", stroke: colour, "stroke-width": 1.6,
          "data-host": host, points: points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ")}));
        if (points.length === 1) {
          box.appendChild(svg("circle", {cx: x(points[0][0]), cy: y(points[0][1]), r: 2.5, fill: colour}));
        }
      });
      box.dataset.t0 = t0;
      box.dataset.t1 = t1;
    };
    let dragFrom = null;
    const timeAt = (event) => {
      const rect = box.getBoundingClientRect();
      const fraction = ((event.clientX - rect.left) / rect.width * width - left) / (width - left - right);
      const t0 = Number(box.dataset.t0), t1 = Number(box.dataset.t1);
      return t0 + Math.min(1, Math.max(0, fraction)) * (t1 - t0);
    };
    box.addEventListener("mousedown", (e) => { dragFrom = timeAt(e); });
    box.addEventListener("mouseup", (e) => {
      const to = timeAt(e);
      if (dragFrom !== null && Math.abs(to - dragFrom) > 0) {
        range = [Math.min(dragFrom, to), Math.max(dragFrom, to)];
        drawLines();
      }
      dragFrom = null;
    });
    box.addEventListener("dblclick", () => { range = null; drawLines(); });
    hosts.forEach((host, i) => {
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = COLOURS[i % COLOURS.length];  // CSSOM: allowed by the CSP
      legend.appendChild(el("span", {}, swatch, host));
    });
    drawLines();
    return el("div", {class: "card chart", "data-metric": title}, el("h2", {}, title), box, legend);
  }

  function jobView(name) {
    generation += 1;
    window.clearTimeout(timer);
    const mine = generation;
    const head = el("div");
    const failure = el("div");
    const details = el("div", {class: "grid"});
    const charts = el("div", {class: "grid", id: "charts"});
    const system = el("div", {class: "grid", id: "system"});
    const hostPick = el("select", {}, el("option", {value: ""}, "All hosts"));
    const search = el("input", {type: "search", placeholder: "Search the log"});
    const follow = el("input", {type: "checkbox", checked: true});
    const logBox = el("pre", {class: "logs", id: "log"});
    const lines = [];
    let after = 0;
    let shownHosts = 0;
    const lineNode = (e) => el("span", {class: "line"}, el("span", {class: "host"}, e.host), e.message);
    const visible = (e) => (!hostPick.value || e.host === hostPick.value) &&
      (!search.value || e.message.toLowerCase().includes(search.value.toLowerCase()));
    const redrawLog = () => {
      logBox.replaceChildren(...lines.filter(visible).map(lineNode));
      if (follow.checked) logBox.scrollTop = logBox.scrollHeight;
    };
    hostPick.addEventListener("change", redrawLog);
    search.addEventListener("input", redrawLog);
    show(head, failure, details,
      el("h2", {}, "Metrics"), charts, el("h2", {}, "Instance metrics"), system,
      el("h2", {}, "Logs"),
      el("div", {class: "toolbar"}, hostPick, search, el("label", {}, follow, " Follow")), logBox);
    // The lines after the last one shown: a long log is caught up in batches at once.
    const readLogs = async () => {
      const events = [];
      let last = after;
      for (let batch = 0; batch < LOG_BATCHES; batch += 1) {
        const got = await call("/jobs/" + encodeURIComponent(name) + "/logs?after=" + last);
        events.push(...got.events);
        last = got.last;
        if (got.events.length < LOG_BATCH) break;
      }
      return {events: events, last: last};
    };
    let lastState = "";
    let lastValues = "";
    poll(async () => {
      const [data, logs, values] = await Promise.all([
        call("/jobs/" + encodeURIComponent(name)),
        readLogs(),
        call("/jobs/" + encodeURIComponent(name) + "/metrics"),
      ]);
      if (mine !== generation) return;
      const job = data.job;
      const state = JSON.stringify([job.TrainingJobStatus, job.SecondaryStatus,
        (job.SecondaryStatusTransitions || []).length, job.FailureReason, job.ModelArtifacts]);
      if (state !== lastState) {
        lastState = state;
        const running = job.TrainingJobStatus === "InProgress";
        const stop = el("button", {type: "button", class: "danger", id: "stop", disabled: !running,
          onclick: async () => {
            if (!window.confirm("Stop training job " + name + "?")) return;
            stop.disabled = true;
            try { await change("/jobs/" + encodeURIComponent(name) + "/stop"); }
            catch (error) { problem(error.message); stop.disabled = false; }
          }}, "Stop");
        head.replaceChildren(el("div", {class: "toolbar"}, el("h1", {}, name), badge(job.TrainingJobStatus),
          el("span", {class: "muted"}, job.SecondaryStatus || ""), stop),
          kv([["Created", when(job.CreationTime)], ["Started", when(job.TrainingStartTime)],
            ["Ended", when(job.TrainingEndTime)], ["ARN", job.TrainingJobArn]]));
        failure.replaceChildren(...(job.FailureReason
          ? [el("h2", {}, "Why it failed"), el("div", {class: "failure", id: "failure"}, job.FailureReason)]
          : []));
        details.replaceChildren(...requestCards(job), timeline(job), artifacts(job));
      }
      if (data.hosts.length !== shownHosts) {
        shownHosts = data.hosts.length;
        hostPick.replaceChildren(el("option", {value: ""}, "All hosts"),
          data.hosts.map((h) => el("option", {value: h}, h)));
      }
      if (logs.events.length) {
        lines.push(...logs.events);
        if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
        after = logs.last;
        const fresh = logs.events.filter(visible).map(lineNode);
        append(logBox, fresh);
        if (follow.checked) logBox.scrollTop = logBox.scrollHeight;
      }
      // Charts are drawn again only when their values changed (a redraw ends a zoom).
      const drawn = JSON.stringify(values);
      if (drawn === lastValues) return;
      lastValues = drawn;
      const metricNames = Object.keys(values.metrics).sort();
      charts.replaceChildren(...(metricNames.length
        ? metricNames.map((m) => chart(m, values.metrics[m]))
        : [el("p", {class: "muted"}, data.metricNames.length
          ? "No values yet for " + data.metricNames.join(", ") + "."
          : "This job defines no MetricDefinitions: give the request some (a Name and a " +
            "Regex over its log lines) to chart them here.")]));
      const systemNames = Object.keys(values.system).sort();
      system.replaceChildren(...(systemNames.length
        ? systemNames.map((m) => chart(m, values.system[m]))
        : [el("p", {class: "muted"}, "No utilization samples yet.")]));
    });
  }

  // ---- the machine ----------------------------------------------------------------------
  function jobRows(rows, what) {
    if (!rows.length) return empty(what);
    return el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Status"),
      el("th", {}, "Instances"), el("th", {}, "Since"))),
    el("tbody", {}, rows.map((row) => el("tr", {}, el("td", {class: "name"}, jobLink(row.name)),
      el("td", {}, badge(row.status), " ", row.secondary || ""),
      el("td", {}, (row.instanceType || "") + " × " + (row.instanceCount || 1)),
      el("td", {}, when(row.created))))));
  }

  function machineView() {
    generation += 1;
    window.clearTimeout(timer);
    const capacity = el("div", {class: "card"});
    const running = el("div");
    const pending = el("div");
    show(el("h1", {}, "Machine"), capacity, el("h2", {}, "Running"), running,
      el("h2", {}, "Waiting (Pending)"), pending);
    poll(async () => {
      const data = await call("/machine");
      const c = data.capacity;
      capacity.replaceChildren(kv([["Capacity policy", c.policy], ["CPUs", c.cpus],
        ["Memory (GiB)", c.memoryGiB], ["GPUs", c.gpus]]));
      running.replaceChildren(jobRows(data.running, "Nothing runs now."));
      pending.replaceChildren(jobRows(data.pending, "No job waits for capacity."));
    });
  }

  function route() {
    problem("");
    const hash = window.location.hash || "#/jobs";
    if (hash.startsWith("#/job/")) jobView(decodeURIComponent(hash.slice(6)));
    else if (hash === "#/machine") machineView();
    else jobsView();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("logout").addEventListener("click", async () => {
      try { await change("/logout"); } catch (error) { /* gone already */ }
      window.location.assign("/console/login");
    });
    window.addEventListener("hashchange", route);
    route();
  });
})();
