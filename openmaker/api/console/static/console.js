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
  const ENDPOINT_STATUSES = ["OutOfService", "Creating", "Updating", "SystemUpdating",
    "RollingBack", "InService", "Deleting", "Failed", "UpdateRollbackFailed"];
  // The kinds of job the jobs table shows, each with its own tab, view and JSON route.
  const KINDS = {
    training: {title: "Training", path: "/jobs", page: "#/job/", start: "TrainingStartTime",
      sorts: ["Name", "Status", "CreationTime"], command: "openmaker train …",
      create: "CreateTrainingJob"},
    processing: {title: "Processing", path: "/kinds/processing", page: "#/processing/",
      sorts: ["Name", "Status", "CreationTime"], create: "CreateProcessingJob"},
    transform: {title: "Batch transform", path: "/kinds/transform", page: "#/transform/",
      sorts: ["Name", "Status", "CreationTime"], create: "CreateTransformJob"},
  };
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

  async function change(path, json) {
    if (csrf === null) csrf = (await call("/session")).csrf;
    const headers = {"X-CSRF-Token": csrf};
    if (json === undefined) return call(path, {method: "POST", headers: headers});
    headers["Content-Type"] = "application/json";
    return call(path, {method: "POST", headers: headers, body: JSON.stringify(json)});
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
    const known = STATUSES.includes(status) || ENDPOINT_STATUSES.includes(status) ? status : "";
    return el("span", {class: "status " + known}, status);
  }

  function jobLink(name, kind) {
    return el("a", {href: KINDS[kind || "training"].page + encodeURIComponent(name)}, name);
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
  const table = {kind: "training", name: "", status: "", sort: "CreationTime", order: "desc",
    tokens: [null]};

  function jobsView(kind) {
    if (kind !== table.kind) {
      Object.assign(table, {kind: kind, sort: "CreationTime", order: "desc", tokens: [null]});
    }
    const about = KINDS[kind];
    const tabs = el("nav", {class: "tabs", id: "kinds"}, Object.entries(KINDS).map(([k, v]) =>
      el("a", {href: "#/jobs" + (k === "training" ? "" : "/" + k), "data-kind": k,
        class: k === kind ? "current" : null}, v.title)));
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
      if (!key || !about.sorts.includes(key)) return el("th", {}, label);
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
      show(el("h1", {}, "Jobs"), tabs,
        el("div", {class: "toolbar"}, filter, status),
        el("table", {id: "jobs", "data-kind": kind}, el("thead", {}, el("tr", {},
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
        const data = await call(about.path + "?" + query.toString());
        if (mine !== generation) return;
        body.replaceChildren(...data.jobs.map((row) => el("tr", {"data-job": row.name},
          el("td", {class: "name"}, jobLink(row.name, kind)),
          el("td", {}, badge(row.status)),
          el("td", {}, row.secondary || ""),
          el("td", {}, (row.instanceType || "") + " × " + (row.instanceCount || 1)),
          el("td", {}, duration(row)),
          el("td", {}, when(row.created)))));
        if (!data.jobs.length) {
          const noun = about.title.toLowerCase() + " job";
          body.replaceChildren(el("tr", {}, el("td", {colspan: 6}, (table.name || table.status)
            ? empty("No " + noun + " matches these filters.")
            : empty("No " + noun + "s yet.",
              "Start one with " + (about.command ? "'" + about.command + "', or " : "") +
              about.create + " from boto3 or the sagemaker SDK after " +
              "eval \"$(openmaker env)\"."))));
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

  // ---- a log tail (processing and transform jobs, endpoints) -----------------------------
  // The log box with its host filter and search; `step()` reads the lines after the last
  // one shown (from `path`, which answers {events, last}) and appends them.
  function logPanel(path) {
    const hostPick = el("select", {}, el("option", {value: ""}, "All streams"));
    const search = el("input", {type: "search", placeholder: "Search the log"});
    const follow = el("input", {type: "checkbox", checked: true});
    const logBox = el("pre", {class: "logs", id: "log"});
    const lines = [];
    const hosts = new Set();
    let after = 0;
    const lineNode = (e) => el("span", {class: "line"}, el("span", {class: "host"}, e.host), e.message);
    const visible = (e) => (!hostPick.value || e.host === hostPick.value) &&
      (!search.value || e.message.toLowerCase().includes(search.value.toLowerCase()));
    const redraw = () => {
      logBox.replaceChildren(...lines.filter(visible).map(lineNode));
      if (follow.checked) logBox.scrollTop = logBox.scrollHeight;
    };
    hostPick.addEventListener("change", redraw);
    search.addEventListener("input", redraw);
    const nodes = [el("h2", {}, "Logs"),
      el("div", {class: "toolbar"}, hostPick, search, el("label", {}, follow, " Follow")), logBox];
    const step = async () => {
      for (let batch = 0; batch < LOG_BATCHES; batch += 1) {
        const got = await call(path + "?after=" + after);
        after = got.last;
        for (const e of got.events) {
          if (!hosts.has(e.host)) {
            hosts.add(e.host);
            hostPick.appendChild(el("option", {value: e.host}, e.host));
          }
        }
        lines.push(...got.events);
        if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
        append(logBox, got.events.filter(visible).map(lineNode));
        if (got.events.length && follow.checked) logBox.scrollTop = logBox.scrollHeight;
        if (got.events.length < LOG_BATCH) break;
      }
    };
    return {nodes: nodes, step: step};
  }

  function failureBox(reason) {
    return reason
      ? [el("h2", {}, "Why it failed"), el("div", {class: "failure", id: "failure"}, reason)]
      : [];
  }

  function channelsCard(title, rows) {
    return el("div", {class: "card"}, el("h2", {}, title), rows.length
      ? el("table", {}, el("tbody", {}, rows.map(([n, where]) =>
        el("tr", {}, el("td", {}, n), el("td", {class: "mono"}, where)))))
      : el("p", {class: "muted"}, "None."));
  }

  // ---- a processing or transform job -----------------------------------------------------
  function kindRequest(kind, job) {
    const stop = job.StoppingCondition || {};
    if (kind === "processing") {
      const cluster = (job.ProcessingResources || {}).ClusterConfig || {};
      const app = job.AppSpecification || {};
      const inputs = (job.ProcessingInputs || []).map((i) => [i.InputName,
        ((i.S3Input || {}).S3Uri || "") + " → " + ((i.S3Input || {}).LocalPath || "")]);
      const outputs = ((job.ProcessingOutputConfig || {}).Outputs || []).map((o) => [o.OutputName,
        ((o.S3Output || {}).LocalPath || "") + " → " + ((o.S3Output || {}).S3Uri || "")]);
      return [
        el("div", {class: "card"}, el("h2", {}, "Request"), kv([
          ["Image", app.ImageUri], ["Entrypoint", app.ContainerEntrypoint],
          ["Arguments", app.ContainerArguments], ["Instance type", cluster.InstanceType],
          ["Instance count", cluster.InstanceCount], ["Volume (GB)", cluster.VolumeSizeInGB],
          ["Max runtime (s)", stop.MaxRuntimeInSeconds], ["Exit message", job.ExitMessage],
          ["Environment", job.Environment],
        ])),
        channelsCard("Inputs", inputs), channelsCard("Outputs", outputs),
      ];
    }
    const resources = job.TransformResources || {};
    const input = job.TransformInput || {};
    const source = (input.DataSource || {}).S3DataSource || {};
    const output = job.TransformOutput || {};
    return [el("div", {class: "card"}, el("h2", {}, "Request"), kv([
      ["Model", job.ModelName], ["Instance type", resources.InstanceType],
      ["Instance count", resources.InstanceCount], ["Input", source.S3Uri],
      ["Content type", input.ContentType], ["Split", input.SplitType],
      ["Batch strategy", job.BatchStrategy], ["Max payload (MB)", job.MaxPayloadInMB],
      ["Concurrent transforms", job.MaxConcurrentTransforms], ["Output", output.S3OutputPath],
      ["Assemble with", output.AssembleWith], ["Environment", job.Environment],
    ]))];
  }

  function kindTimeline(prefix, job) {
    const status = job[prefix + "JobStatus"];
    const steps = [["Created", job.CreationTime], ["Started", job[prefix + "StartTime"]],
      [["Completed", "Failed", "Stopped"].includes(status) ? status : "Ended",
        job[prefix + "EndTime"]], ["Last modified", job.LastModifiedTime]].filter((s) => s[1]);
    return el("div", {class: "card"}, el("h2", {}, "Timeline"), el("ol", {class: "timeline"},
      steps.map(([what, at], i) => el("li", {class: i === steps.length - 1 ? "last" : null},
        el("strong", {}, what), " ", el("span", {class: "muted"}, when(at))))));
  }

  function kindJobView(kind, name) {
    generation += 1;
    window.clearTimeout(timer);
    const mine = generation;
    const prefix = kind === "processing" ? "Processing" : "Transform";
    const path = KINDS[kind].path + "/" + encodeURIComponent(name);
    const head = el("div");
    const failure = el("div");
    const details = el("div", {class: "grid"});
    const logs = logPanel(path + "/logs");
    show(head, failure, details, logs.nodes);
    let lastState = "";
    poll(async () => {
      const [data] = await Promise.all([call(path), logs.step()]);
      if (mine !== generation) return;
      const job = data.job;
      const state = JSON.stringify(job);
      if (state === lastState) return;
      lastState = state;
      const noun = kind === "processing" ? "processing job" : "transform job";
      const stop = el("button", {type: "button", class: "danger", id: "stop",
        disabled: job[prefix + "JobStatus"] !== "InProgress",
        onclick: async () => {
          if (!window.confirm("Stop " + noun + " " + name + "?")) return;
          stop.disabled = true;
          try { await change(path + "/stop"); }
          catch (error) { problem(error.message); stop.disabled = false; }
        }}, "Stop");
      head.replaceChildren(el("div", {class: "toolbar"}, el("h1", {}, name),
        badge(job[prefix + "JobStatus"]), el("span", {class: "muted"}, KINDS[kind].title + " job"),
        stop),
      kv([["ARN", job[prefix + "JobArn"]]]));
      failure.replaceChildren(...failureBox(job.FailureReason));
      details.replaceChildren(...kindRequest(kind, job), kindTimeline(prefix, job));
    });
  }

  // ---- endpoints ---------------------------------------------------------------------------
  const endpointTable = {name: "", status: "", sort: "CreationTime", order: "desc", tokens: [null]};

  function endpointsView() {
    const t = endpointTable;
    const filter = el("input", {type: "search", placeholder: "Name contains", value: t.name});
    const status = el("select", {}, el("option", {value: ""}, "Any status"),
      ENDPOINT_STATUSES.map((s) => el("option", {value: s, selected: s === t.status}, s)));
    const body = el("tbody");
    const pager = el("div", {class: "pager"});
    const refilter = () => {
      t.name = filter.value;
      t.status = status.value;
      t.tokens = [null];
      draw();
    };
    filter.addEventListener("change", refilter);
    status.addEventListener("change", refilter);
    const header = (label, key) => {
      if (!key) return el("th", {}, label);
      const mark = t.sort === key ? (t.order === "desc" ? " ▼" : " ▲") : "";
      return el("th", {class: "sortable", onclick: () => {
        t.order = t.sort === key && t.order === "desc" ? "asc" : "desc";
        t.sort = key;
        t.tokens = [null];
        draw();
      }}, label + mark);
    };
    const draw = () => {
      generation += 1;
      window.clearTimeout(timer);
      show(el("h1", {}, "Endpoints"), el("div", {class: "toolbar"}, filter, status),
        el("table", {id: "endpoints"}, el("thead", {}, el("tr", {},
          header("Name", "Name"), el("th", {}, "Status"), el("th", {}, "Variants"),
          el("th", {}, "Instances"), header("Created", "CreationTime"), el("th", {}, "Modified"))),
        body), pager);
      poll(async (mine) => {
        const query = new URLSearchParams({sort: t.sort, order: t.order, limit: "25"});
        if (t.name) query.set("name", t.name);
        if (t.status) query.set("status", t.status);
        const page = t.tokens[t.tokens.length - 1];
        if (page) query.set("token", page);
        const data = await call("/endpoints?" + query.toString());
        if (mine !== generation) return;
        body.replaceChildren(...data.endpoints.map((row) => el("tr", {"data-endpoint": row.name},
          el("td", {class: "name"}, el("a", {href: "#/endpoint/" + encodeURIComponent(row.name)},
            row.name)),
          el("td", {}, badge(row.status)),
          el("td", {}, row.variants.join(", ")),
          el("td", {}, row.instances + " / " + row.desiredInstances),
          el("td", {}, when(row.created)),
          el("td", {}, when(row.modified)))));
        if (!data.endpoints.length) {
          body.replaceChildren(el("tr", {}, el("td", {colspan: 6}, (t.name || t.status)
            ? empty("No endpoint matches these filters.")
            : empty("No endpoints yet.",
              "Deploy one with CreateModel, CreateEndpointConfig and CreateEndpoint from " +
              "boto3, or the sagemaker SDK's Model(...).deploy(), after " +
              "eval \"$(openmaker env)\"."))));
        }
        pager.replaceChildren(
          el("button", {type: "button", disabled: t.tokens.length < 2,
            onclick: () => { t.tokens.pop(); draw(); }}, "Previous"),
          el("span", {class: "muted"}, "Page " + t.tokens.length),
          el("button", {type: "button", disabled: !data.next,
            onclick: () => { t.tokens.push(data.next); draw(); }}, "Next"));
      });
    };
    draw();
  }

  function variantsCard(endpoint) {
    const variants = endpoint.ProductionVariants || [];
    return el("div", {class: "card wide"}, el("h2", {}, "Variants"), el("table", {id: "variants"},
      el("thead", {}, el("tr", {}, el("th", {}, "Variant"), el("th", {}, "Instances (now / desired)"),
        el("th", {}, "Weight (now / desired)"), el("th", {}, "Image"))),
      el("tbody", {}, variants.map((v) => el("tr", {"data-variant": v.VariantName},
        el("td", {}, v.VariantName),
        el("td", {}, (v.CurrentInstanceCount ?? "–") + " / " + (v.DesiredInstanceCount ?? "–")),
        el("td", {}, (v.CurrentWeight ?? "–") + " / " + (v.DesiredWeight ?? "–")),
        el("td", {class: "mono"}, ((v.DeployedImages || [])[0] || {}).SpecifiedImage || ""))))));
  }

  function instancesCard(instances) {
    return el("div", {class: "card"}, el("h2", {}, "Instances"), instances.length
      ? el("table", {id: "instances"}, el("thead", {}, el("tr", {}, el("th", {}, "Variant"),
        el("th", {}, "Instance"), el("th", {}, "Health"))),
      el("tbody", {}, instances.map((i) => el("tr", {}, el("td", {}, i.variant),
        el("td", {class: "mono"}, i.id),
        el("td", {}, el("span", {class: "status " + (i.healthy ? "InService" : "Failed")},
          i.healthy ? "Healthy" : "Not answering"))))))
      : el("p", {class: "muted"}, "No instance runs now."));
  }

  // The invocation form: the answer is put on the page as text, whatever its content type.
  function invokeCard(name) {
    const body = el("textarea", {id: "invoke-body", rows: 5, spellcheck: "false"});
    const type = el("input", {id: "invoke-type", value: "application/json"});
    const accept = el("input", {id: "invoke-accept", placeholder: "Accept (optional)"});
    const about = el("p", {class: "muted", id: "answer-about"});
    const answer = el("pre", {class: "answer", id: "answer"});
    const send = el("button", {type: "submit", id: "invoke"}, "Invoke");
    const form = el("form", {class: "invoke", onsubmit: async (event) => {
      event.preventDefault();
      send.disabled = true;
      about.textContent = "Waiting for the answer…";
      answer.textContent = "";
      answer.classList.remove("failure");
      try {
        const got = await change("/endpoints/" + encodeURIComponent(name) + "/invoke",
          {body: body.value, contentType: type.value, accept: accept.value});
        if (got.ok) {
          about.textContent = got.variant + " answered " + got.bytes + " bytes of " +
            got.contentType + (got.truncated ? " (the beginning shown)" : "") + ".";
          answer.textContent = got.body;
        } else {
          about.textContent = got.error;
          answer.textContent = got.message;
          answer.classList.add("failure");
        }
      } catch (error) {
        about.textContent = "";
        problem(error.message);
      } finally {
        send.disabled = false;
      }
    }}, el("label", {}, "Body", body),
    el("div", {class: "toolbar"}, el("label", {}, "Content type ", type), accept, send));
    return el("div", {class: "card"}, el("h2", {}, "Invoke"), form, about, answer);
  }

  function endpointView(name) {
    generation += 1;
    window.clearTimeout(timer);
    const mine = generation;
    const path = "/endpoints/" + encodeURIComponent(name);
    const head = el("div");
    const failure = el("div");
    const state = el("div", {class: "grid"});
    const logs = logPanel(path + "/logs");
    const charts = el("div", {class: "grid", id: "invocation-charts"});
    const usage = el("div", {class: "grid", id: "usage-charts"});
    show(head, failure, state, el("div", {class: "grid"}, invokeCard(name)),
      el("h2", {}, "Invocations and latency"), charts,
      el("h2", {}, "Instance utilization"), usage, logs.nodes);
    let lastState = "", lastCharts = "";
    poll(async () => {
      const [data] = await Promise.all([call(path), logs.step()]);
      if (mine !== generation) return;
      // Charts are drawn again only when their values changed (a redraw ends a zoom).
      const metrics = data.invocationMetrics;
      const charted = JSON.stringify([metrics, data.usageMetrics]);
      if (charted !== lastCharts) {
        lastCharts = charted;
        const used = data.usageMetrics;
        usage.replaceChildren(...Object.keys(used).filter((t) => Object.keys(used[t]).length)
          .map((t) => chart(t, used[t])));
        const titles = Object.keys(metrics).filter((t) => Object.keys(metrics[t]).length);
        charts.replaceChildren(...(titles.length
          ? titles.map((t) => chart(t, metrics[t]))
          : [el("p", {class: "muted", id: "no-metrics"}, "No invocation in the last 30 " +
            "minutes: invoke the endpoint (the form above, boto3's invoke_endpoint or " +
            "`openmaker endpoints invoke`) to chart its invocations and latency here.")]));
      }
      const drawn = JSON.stringify([data.endpoint, data.instances]);
      if (drawn === lastState) return;
      lastState = drawn;
      const e = data.endpoint;
      head.replaceChildren(el("div", {class: "toolbar"}, el("h1", {}, name),
        badge(e.EndpointStatus)), kv([["Configuration", e.EndpointConfigName],
        ["Created", when(e.CreationTime)], ["Modified", when(e.LastModifiedTime)],
        ["ARN", e.EndpointArn],
        ["Update under way", e.PendingDeploymentSummary
          ? e.PendingDeploymentSummary.EndpointConfigName : null]]));
      failure.replaceChildren(...failureBox(e.FailureReason));
      state.replaceChildren(variantsCard(e), instancesCard(data.instances));
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

  // "used of offered" while a node is alive; what it offered for one that is not.
  function used(offered, free) {
    return free === null ? String(offered)
      : (Math.round((offered - free) * 100) / 100) + " of " + offered;
  }

  function amount(node, key) {
    return used(node.offers[key], node.free ? node.free[key] : null);
  }

  function hostLinks(hosts) {
    return hosts.map((host) => {
      const at = host.lastIndexOf("/");
      return el("div", {class: "host"}, jobLink(host.slice(0, at)), host.slice(at));
    });
  }

  // An endpoint's instance as "<endpoint>/<variant>/<id>", a transform job's as "<job>/<id>",
  // each linked to its page, with what it holds on its node.
  function instanceLinks(instances) {
    return instances.map((i) => i.kind === "endpoint"
      ? el("div", {class: "host"}, el("a", {href: "#/endpoint/" + encodeURIComponent(i.name)},
        i.name), (i.variant ? "/" + i.variant : "") + "/" + i.id, " ",
        el("span", {class: "muted"}, i.holds))
      : el("div", {class: "host"}, jobLink(i.name, "transform"), "/" + i.id, " ",
        el("span", {class: "muted"}, i.holds)));
  }

  function clusterNodes(data) {
    if (data.problem) return el("p", {class: "problem", role: "alert"}, data.problem);
    if (!data.nodes.length) return empty("The cluster has no nodes.");
    const titles = ["Node", "Alive", "CPUs used", "Memory used (GiB)", "GPUs used",
      "Instance types used", "Hosts", "Instances"];
    return el("table", {id: "nodes"},
      el("thead", {}, el("tr", {}, titles.map((title) => el("th", {}, title)))),
      el("tbody", {}, data.nodes.map((node) => el("tr", {"data-node": node.address},
        el("td", {class: "name"}, node.address, el("div", {class: "muted mono"}, node.nodeId)),
        el("td", {}, node.alive ? "yes" : "no"),
        el("td", {class: "cpus"}, amount(node, "cpus")),
        el("td", {}, amount(node, "memoryGiB")),
        el("td", {}, amount(node, "gpus")),
        el("td", {class: "types"},
          node.other.map((o) => el("div", {}, used(o.offers, o.free) + " × " + o.name))),
        el("td", {class: "hosts"}, hostLinks(node.hosts)),
        el("td", {class: "instances"}, instanceLinks(node.instances))))));
  }

  function machineView() {
    generation += 1;
    window.clearTimeout(timer);
    const capacity = el("div", {class: "card"});
    const cluster = el("div", {id: "cluster", hidden: true});
    const running = el("div");
    const pending = el("div");
    show(el("h1", {}, "Machine"), capacity, cluster, el("h2", {}, "Running"), running,
      el("h2", {}, "Waiting (Pending)"), pending);
    let asking = false;  // the cluster is asked on a poll of its own: it may answer slowly
    poll(async () => {
      const data = await call("/machine");
      const c = data.capacity;
      capacity.replaceChildren(kv([["Capacity policy", c.policy], ["CPUs", c.cpus],
        ["Memory (GiB)", c.memoryGiB], ["GPUs", c.gpus]]));
      running.replaceChildren(jobRows(data.running, "Nothing runs now."));
      pending.replaceChildren(jobRows(data.pending, "No job waits for capacity."));
      if (data.executor === "ray" && !asking) {
        asking = true;
        cluster.hidden = false;
        cluster.replaceChildren(el("h2", {}, "Ray cluster"), el("p", {class: "muted"},
          "Asking the cluster…"));
        poll(async () => {
          const nodes = await call("/cluster");
          cluster.replaceChildren(el("h2", {}, "Ray cluster at " + nodes.address),
            clusterNodes(nodes));
        });
      }
    });
  }

  function route() {
    problem("");
    const hash = window.location.hash || "#/jobs";
    const after = (prefix) => decodeURIComponent(hash.slice(prefix.length));
    if (hash.startsWith("#/job/")) jobView(after("#/job/"));
    else if (hash.startsWith("#/processing/")) kindJobView("processing", after("#/processing/"));
    else if (hash.startsWith("#/transform/")) kindJobView("transform", after("#/transform/"));
    else if (hash.startsWith("#/endpoint/")) endpointView(after("#/endpoint/"));
    else if (hash === "#/endpoints") endpointsView();
    else if (hash === "#/machine") machineView();
    else if (hash === "#/jobs/processing") jobsView("processing");
    else if (hash === "#/jobs/transform") jobsView("transform");
    else jobsView("training");
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
