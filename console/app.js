// The sparkplane console: one page, hash routes, the Databricks REST API with the pasted token.
// Every value from the API is put in the page as text (never as HTML).

const TOKEN_KEY = "sparkplane.token";
const REFRESH_MS = 2000;
const EVENTS_PAGE = 10;
const ACTIVE = new Set(["RUNNING", "RESIZING"]);

let timer = null;
let eventsOffset = 0;

// ------------------------------------------------------------------ helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c !== undefined && c !== null) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

function showError(message) {
  const el = $("error");
  el.textContent = message || "";
  el.hidden = !message;
}

export class ApiError extends Error {}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const init = { method, headers: { Authorization: `Bearer ${token}` } };
  let url = path;
  if (method === "GET" && body) url += "?" + new URLSearchParams(body);
  else if (body) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (e) {
    throw new ApiError(`The control plane is unreachable (${e.message}).`);
  }
  const text = await resp.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!resp.ok) {
    const err = new ApiError(data.message || data.error_code || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleString() : "—";
}

function fmtDuration(ms) {
  if (!ms || ms < 0) return "—";
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  return mm ? `${mm}m ${s % 60}s` : `${s}s`;
}

function stateBadge(state) {
  return h("span", { class: `state ${state || ""}`, "data-state": state || "" }, state || "—");
}

function size(c) {
  // An autoscale cluster's body has no num_workers: its size is the workers it has now.
  if (c.autoscale) {
    const now = c.executors?.length ?? c.num_workers ?? 0;
    return `${now} (autoscale ${c.autoscale.min_workers}–${c.autoscale.max_workers})`;
  }
  return String(c.num_workers ?? 0);
}

function uptime(c) {
  if (!ACTIVE.has(c.state)) return "—";
  return fmtDuration(Date.now() - (c.last_restarted_time || c.start_time));
}

function table(headers, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

function dl(pairs) {
  return h("dl", {}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// Runs `fn` now and every REFRESH_MS while the view is shown; errors show as the API's message.
function live(fn) {
  const tick = async () => {
    try {
      await fn();
      showError("");
    } catch (e) {
      handle(e);
    }
  };
  tick();
  timer = setInterval(tick, REFRESH_MS);
}

function handle(e) {
  if (e.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    route();
  }
  showError(e.message);
}

// Runs an action; the page reflects it on the next refresh, an error shows as the API said it.
function action(fn) {
  return async (ev) => {
    ev?.preventDefault?.();
    try {
      showError("");
      await fn();
    } catch (e) {
      handle(e);
    }
  };
}

// ------------------------------------------------------------------ clusters

async function clustersView(view) {
  view.append(
    h("h1", {}, "Clusters"),
    h("div", { class: "toolbar" }, h("a", { class: "button", href: "#/create", id: "create-cluster" }, "Create cluster")),
    h("div", { id: "clusters" }),
  );
  live(async () => {
    const { clusters = [] } = await api("GET", "/api/2.1/clusters/list");
    const rows = clusters.map((c) => h("tr", { "data-cluster-id": c.cluster_id },
      h("td", {}, h("a", { href: `#/clusters/${encodeURIComponent(c.cluster_id)}` }, c.cluster_name || c.cluster_id)),
      h("td", {}, stateBadge(c.state)),
      h("td", {}, size(c)),
      h("td", {}, c.node_type_id),
      h("td", {}, c.spark_version),
      h("td", {}, uptime(c)),
    ));
    $("clusters").replaceChildren(table(["Name", "State", "Workers", "Node type", "Version", "Uptime"], rows,
      "No clusters yet."));
  });
}

function eventDetails(e) {
  const d = e.details || {};
  const parts = [];
  if (d.target_num_workers !== undefined) parts.push(`workers ${d.current_num_workers ?? 0} → ${d.target_num_workers}`);
  else if (d.current_num_workers !== undefined) parts.push(`${d.current_num_workers} workers`);
  const params = d.reason?.parameters || {};
  for (const [k, v] of Object.entries(params)) parts.push(`${k}: ${v}`);
  if (d.reason?.code && !Object.keys(params).length) parts.push(`reason ${d.reason.code}`);
  if (d.cause) parts.push(`cause ${d.cause}`);
  if (d.user) parts.push(`by ${d.user}`);
  return parts.join(" · ");
}

async function clusterView(view, id) {
  eventsOffset = 0;
  const actions = h("div", { class: "toolbar" },
    h("button", { id: "start", class: "secondary", onclick: action(() => api("POST", "/api/2.1/clusters/start", { cluster_id: id })) }, "Start"),
    h("button", { id: "terminate", class: "secondary", onclick: action(async () => {
      if (confirm("Terminate this cluster?")) await api("POST", "/api/2.1/clusters/delete", { cluster_id: id });
    }) }, "Terminate"),
    h("button", { id: "delete", class: "danger", onclick: action(async () => {
      if (!confirm("Delete this cluster permanently?")) return;
      await api("POST", "/api/2.1/clusters/permanent-delete", { cluster_id: id });
      location.hash = "#/clusters";
    }) }, "Delete"),
  );
  const resize = h("form", { class: "toolbar", id: "resize-form" },
    h("span", {}, "Resize:"),
    h("input", { id: "resize-workers", type: "number", min: 0, placeholder: "workers" }),
    h("span", { class: "muted" }, "or autoscale"),
    h("input", { id: "resize-min", type: "number", min: 0, placeholder: "min" }),
    h("input", { id: "resize-max", type: "number", min: 0, placeholder: "max" }),
    h("button", { type: "submit", class: "secondary" }, "Resize"));
  resize.addEventListener("submit", action(async () => {
    const body = { cluster_id: id };
    if ($("resize-min").value || $("resize-max").value) {
      body.autoscale = { min_workers: Number($("resize-min").value), max_workers: Number($("resize-max").value) };
    } else body.num_workers = Number($("resize-workers").value);
    await api("POST", "/api/2.1/clusters/resize", body);
  }));
  const pager = h("div", { class: "toolbar" },
    h("button", { id: "events-newer", class: "secondary", onclick: () => { eventsOffset = Math.max(0, eventsOffset - EVENTS_PAGE); refreshEvents(id); } }, "Newer"),
    h("button", { id: "events-older", class: "secondary", onclick: () => { eventsOffset += EVENTS_PAGE; refreshEvents(id); } }, "Older"),
    h("span", { id: "events-page", class: "muted" }));
  view.append(
    h("p", {}, h("a", { href: "#/clusters" }, "← Clusters")),
    h("h1", { id: "cluster-title" }, id),
    actions, resize,
    h("div", { id: "cluster-summary" }),
    h("h2", {}, "Endpoints"), h("div", { id: "cluster-endpoints" }),
    h("h2", {}, "Event log"), pager, h("div", { id: "events" }),
    h("h2", {}, "Configuration"), h("pre", { id: "cluster-config" }),
  );
  live(async () => {
    const c = await api("GET", "/api/2.1/clusters/get", { cluster_id: id });
    $("cluster-title").textContent = c.cluster_name || c.cluster_id;
    $("cluster-summary").replaceChildren(dl([
      ["State", stateBadge(c.state)],
      ["Message", c.state_message],
      ["Workers", size(c)],
      ["Node types", `${c.driver_node_type_id || c.node_type_id} driver, ${c.node_type_id} workers`],
      ["Spark version", c.spark_version],
      ["Uptime", uptime(c)],
      ["Auto-termination", c.autotermination_minutes ? `${c.autotermination_minutes} min idle` : "never"],
      ["Termination reason", c.termination_reason ? `${c.termination_reason.code} (${c.termination_reason.type || ""})` : ""],
      ["Cluster id", c.cluster_id],
    ]));
    $("start").disabled = c.state !== "TERMINATED";
    $("terminate").disabled = ["TERMINATED", "TERMINATING"].includes(c.state);
    const shown = JSON.stringify(endpointUrls(c));
    if ($("cluster-endpoints").dataset.shown !== shown) {  // keeps the copy button's feedback
      $("cluster-endpoints").dataset.shown = shown;
      $("cluster-endpoints").replaceChildren(endpoints(c));
    }
    $("cluster-config").textContent = JSON.stringify(c.spec || c, null, 2);
    await refreshEvents(id);
  });
}

function endpointUrls(c) {
  const d = c.driver || {};
  const tags = c.default_tags || {};
  return {
    sparkUi: d.spark_ui_url || tags.SparkUiUrl,
    masterUi: d.master_ui_url || tags.SparkMasterUiUrl,
    connect: d.connect_url || tags.SparkConnectUrl,
  };
}

function endpoints(c) {
  const { sparkUi, masterUi, connect } = endpointUrls(c);
  const link = (url) => (url ? h("a", { href: url, target: "_blank", rel: "noopener" }, url) : "—");
  const copy = h("button", { class: "secondary", id: "copy-connect", type: "button", onclick: async () => {
    try {
      await navigator.clipboard.writeText(connect);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy";
    }
  } }, "Copy");
  return dl([
    ["Spark UI", link(sparkUi)],
    ["Master UI", link(masterUi)],
    ["Spark Connect", connect ? h("span", {}, h("code", { id: "connect-url" }, connect), " ", copy) : "—"],
  ]);
}

async function refreshEvents(id) {
  const page = await api("POST", "/api/2.1/clusters/events", {
    cluster_id: id, order: "DESC", limit: EVENTS_PAGE, offset: eventsOffset,
  });
  const events = page.events || [];
  const rows = events.map((e) => h("tr", { "data-event-type": e.type },
    h("td", {}, fmtTime(e.timestamp)), h("td", {}, e.type), h("td", {}, eventDetails(e))));
  $("events").replaceChildren(table(["Time", "Type", "Details"], rows, "No events."));
  const total = page.total_count ?? events.length;
  $("events-page").textContent = total ? `${eventsOffset + 1}–${eventsOffset + events.length} of ${total}` : "";
  $("events-newer").disabled = eventsOffset === 0;
  $("events-older").disabled = !page.next_page_token && !page.next_page;
}

async function createView(view) {
  const [versions, types] = await Promise.all([
    api("GET", "/api/2.1/clusters/spark-versions"),
    api("GET", "/api/2.1/clusters/list-node-types"),
  ]);
  const opts = (items, value, label) => items.map((i) => h("option", { value: i[value] }, i[label]));
  const nodeTypes = types.node_types || [];
  const nodeLabel = nodeTypes.map((n) => ({ ...n, label: `${n.node_type_id} (${n.num_cores} cores, ${n.memory_mb} MB)` }));
  const form = h("form", { class: "grid", id: "create-form" },
    h("label", {}, "Name", h("input", { id: "f-name", required: true, value: "my-cluster" })),
    h("label", {}, "Spark version", h("select", { id: "f-version" }, opts(versions.versions || [], "key", "name"))),
    h("label", {}, "Worker type", h("select", { id: "f-node" }, opts(nodeLabel, "node_type_id", "label"))),
    h("label", {}, "Driver type", h("select", { id: "f-driver" }, h("option", { value: "" }, "Same as workers"), opts(nodeLabel, "node_type_id", "label"))),
    h("label", {}, "Autoscale", h("input", { id: "f-autoscale", type: "checkbox" })),
    h("label", {}, "Workers", h("input", { id: "f-workers", type: "number", min: 0, value: 1 })),
    h("label", {}, "Min workers", h("input", { id: "f-min", type: "number", min: 0, value: 1 })),
    h("label", {}, "Max workers", h("input", { id: "f-max", type: "number", min: 1, value: 3 })),
    h("label", {}, "Terminate after (minutes idle, 0 = never)", h("input", { id: "f-idle", type: "number", min: 0, value: 60 })),
    h("span"), h("button", { type: "submit", id: "f-submit" }, "Create cluster"),
  );
  form.addEventListener("submit", action(async () => {
    const body = {
      cluster_name: $("f-name").value,
      spark_version: $("f-version").value,
      node_type_id: $("f-node").value,
      autotermination_minutes: Number($("f-idle").value),
    };
    if ($("f-driver").value) body.driver_node_type_id = $("f-driver").value;
    if ($("f-autoscale").checked) body.autoscale = { min_workers: Number($("f-min").value), max_workers: Number($("f-max").value) };
    else body.num_workers = Number($("f-workers").value);
    const { cluster_id } = await api("POST", "/api/2.1/clusters/create", body);
    location.hash = `#/clusters/${encodeURIComponent(cluster_id)}`;
  }));
  view.append(h("p", {}, h("a", { href: "#/clusters" }, "← Clusters")), h("h1", {}, "Create cluster"), form);
}

// ------------------------------------------------------------------ jobs and runs

function runState(s = {}) {
  return stateBadge(s.result_state || s.life_cycle_state);
}

async function jobsView(view) {
  view.append(h("h1", {}, "Jobs"), h("div", { id: "jobs" }), h("h2", {}, "Recent runs"), h("div", { id: "runs" }));
  live(async () => {
    const [{ jobs = [] }, { runs = [] }] = await Promise.all([
      api("GET", "/api/2.2/jobs/list", { limit: 25 }),
      api("GET", "/api/2.2/jobs/runs/list", { limit: 25 }),
    ]);
    $("jobs").replaceChildren(table(["Name", "Job id", "Schedule", ""], jobs.map((j) => h("tr", {},
      h("td", {}, j.settings?.name || "—"),
      h("td", {}, j.job_id),
      h("td", {}, j.settings?.schedule?.quartz_cron_expression || "—"),
      h("td", {}, h("button", { class: "secondary", onclick: action(async () => {
        const { run_id } = await api("POST", "/api/2.2/jobs/run-now", { job_id: j.job_id });
        location.hash = `#/runs/${run_id}`;
      }) }, "Run now")),
    )), "No jobs yet."));
    $("runs").replaceChildren(table(["Run", "Name", "State", "Started", "Duration"], runs.map((r) => h("tr", {},
      h("td", {}, h("a", { href: `#/runs/${r.run_id}` }, r.run_id)),
      h("td", {}, r.run_name || "—"),
      h("td", {}, runState(r.state)),
      h("td", {}, fmtTime(r.start_time)),
      h("td", {}, fmtDuration((r.end_time || Date.now()) - r.start_time)),
    )), "No runs yet."));
  });
}

async function runView(view, id) {
  const cancel = h("button", { id: "cancel-run", class: "danger", onclick: action(() => api("POST", "/api/2.2/jobs/runs/cancel", { run_id: Number(id) })) }, "Cancel run");
  view.append(h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), h("h1", { id: "run-title" }, `Run ${id}`),
    h("div", { class: "toolbar" }, cancel), h("div", { id: "run-summary" }), h("h2", {}, "Tasks"), h("div", { id: "tasks" }));
  const outputs = new Map();
  live(async () => {
    const r = await api("GET", "/api/2.2/jobs/runs/get", { run_id: id });
    $("run-title").textContent = `${r.run_name || "Run"} (${r.run_id})`;
    const done = r.state?.life_cycle_state === "TERMINATED" || r.state?.life_cycle_state === "INTERNAL_ERROR" || r.state?.life_cycle_state === "SKIPPED";
    cancel.disabled = done;
    $("run-summary").replaceChildren(dl([
      ["State", runState(r.state)], ["Message", r.state?.state_message],
      ["Started", fmtTime(r.start_time)], ["Ended", fmtTime(r.end_time)],
      ["Duration", fmtDuration((r.end_time || Date.now()) - r.start_time)],
      ["Job", r.job_id],
      ["Cluster", r.cluster_instance?.cluster_id && h("a", { href: `#/clusters/${encodeURIComponent(r.cluster_instance.cluster_id)}` }, r.cluster_instance.cluster_id)],
    ]));
    const tasks = r.tasks || [];
    for (const t of tasks) {
      const finished = t.state?.life_cycle_state === "TERMINATED";
      if (finished && !outputs.has(t.run_id)) {
        outputs.set(t.run_id, await api("GET", "/api/2.2/jobs/runs/get-output", { run_id: t.run_id }).catch((e) => ({ error: e.message })));
      }
    }
    $("tasks").replaceChildren(table(["Task", "State", "Started", "Ended", "Output"], tasks.map((t) => {
      const o = outputs.get(t.run_id) || {};
      const text = [o.error, o.error_trace, o.logs, o.notebook_output?.result].filter(Boolean).join("\n");
      return h("tr", {}, h("td", {}, t.task_key), h("td", {}, runState(t.state)),
        h("td", {}, fmtTime(t.start_time)), h("td", {}, fmtTime(t.end_time)),
        h("td", {}, text ? h("pre", {}, text) : h("span", { class: "muted" }, "—")));
    }), "No tasks."));
  });
}

// ------------------------------------------------------------------ pools and files

async function poolsView(view) {
  view.append(h("h1", {}, "Instance pools"), h("div", { id: "pools" }));
  live(async () => {
    const { instance_pools = [] } = await api("GET", "/api/2.0/instance-pools/list");
    $("pools").replaceChildren(table(["Name", "Node type", "Idle", "Used", "Pending", "Min idle", "Max"], instance_pools.map((p) => {
      const s = p.stats || {};
      return h("tr", {}, h("td", {}, p.instance_pool_name), h("td", {}, p.node_type_id),
        h("td", {}, s.idle_count ?? 0), h("td", {}, s.used_count ?? 0),
        h("td", {}, (s.pending_idle_count ?? 0) + (s.pending_used_count ?? 0)),
        h("td", {}, p.min_idle_instances ?? 0), h("td", {}, p.max_capacity ?? "—"));
    }), "No pools yet."));
  });
}

async function filesView(view, path) {
  const { files = [] } = await api("GET", "/api/2.0/dbfs/list", { path });
  const parts = path.split("/").filter(Boolean);
  const crumbs = [h("a", { href: "#/files" }, "dbfs:/")];
  parts.forEach((p, i) => crumbs.push(h("a", { href: `#/files${encodeURI("/" + parts.slice(0, i + 1).join("/"))}` }, p), "/"));
  const sorted = [...files].sort((a, b) => (b.is_dir - a.is_dir) || a.path.localeCompare(b.path));
  view.append(h("h1", {}, "Files"), h("p", { id: "breadcrumbs" }, crumbs),
    table(["Name", "Size", "Modified"], sorted.map((f) => {
      const name = f.path.split("/").pop();
      return h("tr", {}, h("td", {}, f.is_dir ? h("a", { href: `#/files${encodeURI(f.path)}` }, name + "/") : name),
        h("td", {}, f.is_dir ? "—" : `${f.file_size} B`), h("td", {}, fmtTime(f.modification_time)));
    }), "This folder is empty."));
}

// ------------------------------------------------------------------ routing and sign-in

const ROUTES = [
  [/^#\/clusters\/(.+)$/, (v, m) => clusterView(v, decodeURIComponent(m[1]))],
  [/^#\/create$/, (v) => createView(v)],
  [/^#\/jobs$/, (v) => jobsView(v)],
  [/^#\/runs\/(\d+)$/, (v, m) => runView(v, m[1])],
  [/^#\/pools$/, (v) => poolsView(v)],
  [/^#\/files(\/.*)?$/, (v, m) => filesView(v, decodeURI(m[1] || "/"))],
  [/^/, (v) => clustersView(v)],
];

async function route() {
  clearInterval(timer);
  const signedIn = Boolean(sessionStorage.getItem(TOKEN_KEY));
  $("signin").hidden = signedIn;
  $("nav").hidden = !signedIn;
  const view = $("view");
  view.replaceChildren();
  if (!signedIn) return;
  const hash = location.hash || "#/clusters";
  for (const [re, render] of ROUTES) {
    const m = hash.match(re);
    if (m) {
      try {
        showError("");
        await render(view, m);
      } catch (e) {
        handle(e);
      }
      return;
    }
  }
}

async function signIn(ev) {
  ev.preventDefault();
  const token = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("GET", "/api/2.1/clusters/list");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    showError(`Sign-in failed: ${e.message}`);
    return;
  }
  $("token").value = "";
  showError("");
  route();
}

$("signin-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showError("");
  route();
});
window.addEventListener("hashchange", route);
route();
