// dask-batch jobs page: keeps the server-rendered pages up to date from the
// JSON API. Text from storage is only ever set with textContent.
"use strict";

const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "LOST"]);
const xsrf = document.querySelector('meta[name="xsrf"]').content;
// "/" or a hub service's prefix, such as "/services/dask-batch/".
const base = document.body.dataset.base;

async function api(path, options = {}) {
  const response = await fetch(base + path, { credentials: "same-origin", ...options });
  if (!response.ok) {
    throw new Error((await response.json()).error || response.statusText);
  }
  return response;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

function setState(element, state) {
  element.textContent = state;
  element.className = `state state-${state}`;
}

// -- jobs page ------------------------------------------------------------------
function jobRow(job) {
  const row = document.createElement("tr");
  row.dataset.id = job.id;
  const cell = () => row.appendChild(document.createElement("td"));
  const link = cell().appendChild(document.createElement("a"));
  link.href = `${base}jobs/${encodeURIComponent(job.id)}`;
  link.textContent = job.name;
  link.parentElement.className = "name";
  const id = cell().appendChild(document.createElement("code"));
  id.textContent = job.id;
  id.parentElement.className = "id";
  setState(cell().appendChild(document.createElement("span")), job.state);
  cell().textContent = job.kind;
  cell().textContent = (job.submitted || "").slice(0, 19).replace("T", " ");
  const time = cell();
  time.className = "duration";
  time.textContent = duration(job.duration_seconds);
  const progress = cell();
  progress.className = "progress";
  const bar = progress.appendChild(document.createElement("progress"));
  bar.max = 1;
  bar.value = job.progress || 0;
  const note = progress.appendChild(document.createElement("span"));
  note.className = "message";
  note.textContent = " " + (job.progress_message || job.message || "");
  return row;
}

async function refreshJobs(table) {
  const query = new URLSearchParams(window.location.search);
  query.set("offset", table.dataset.offset);
  query.set("limit", table.dataset.limit);
  const page = await (await api(`api/v1/jobs?${query}`)).json();
  const body = table.querySelector("tbody");
  body.replaceChildren(...page.jobs.map(jobRow));
}

// -- job page -------------------------------------------------------------------
function showJob(job) {
  const text = (id, value) => { document.getElementById(id).textContent = value || ""; };
  setState(document.getElementById("state"), job.state);
  document.getElementById("progress").value = job.progress || 0;
  text("progress-message", [
    job.progress === null ? "" : `${Math.round(job.progress * 100)}%`,
    job.progress_message,
  ].filter(Boolean).join(" "));
  text("started", (job.started || "").slice(0, 19).replace("T", " "));
  text("finished", (job.finished || "").slice(0, 19).replace("T", " "));
  text("duration", duration(job.duration_seconds));
  text("attempt", `${job.attempt} of ${job.retries + 1}`);
  text("cluster", job.cluster_name);
  text("message", job.message);
  const dashboard = document.getElementById("dashboard");
  document.getElementById("dashboard-line").hidden = !job.dashboard_link;
  if (job.dashboard_link) dashboard.href = job.dashboard_link;
  if (job.error) {
    document.getElementById("error-box").hidden = false;
    text("error-type", job.error.type);
    text("error-text", job.error.message);
    text("traceback", job.error.traceback);
  }
  if (job.state === "SUCCEEDED") {
    document.getElementById("result-box").hidden = false;
    if (document.getElementById("result-type")) {
      text("result-type", job.result_type);
      text("result-bytes", String(job.result_bytes || 0));
    }
  }
  const cancel = document.getElementById("cancel");
  if (cancel && TERMINAL.has(job.state)) cancel.remove();
  if (job.tasks) showTasks(job);
}

// The steps of a pipeline, or the elements of an array, as the record says.
function showTasks(job) {
  const counts = document.getElementById("task-counts");
  if (counts) {
    counts.replaceChildren(...Object.entries(job.task_counts || {}).map(([state, n]) => {
      const badge = document.createElement("span");
      setState(badge, state);
      badge.textContent = `${n} ${state}`;
      badge.dataset.count = state;
      return badge;
    }));
  }
  for (const task of job.tasks) {
    const node = document.querySelector(`.dag-node[data-task="${CSS.escape(task.name)}"]`);
    if (node) {
      node.className = `dag-node node-${task.state}${task.reused_from ? " node-reused" : ""}`;
      node.querySelector(".node-state").textContent =
        task.state + (task.reused_from ? " \u00b7 reused" : "");
    }
    const row = document.querySelector(`#tasks tr[data-task="${CSS.escape(task.name)}"]`);
    if (!row) continue;
    setState(row.querySelector(".state"), task.state);
    row.querySelector(".attempt").textContent = task.attempt || "";
    const seconds = task.started
      ? ((task.finished ? Date.parse(task.finished) : Date.now()) - Date.parse(task.started)) / 1000
      : null;
    row.querySelector(".duration").textContent = duration(seconds);
    const progress = task.progress === null ? "" : `${Math.round(task.progress * 100)}% `;
    const note = task.state === "RUNNING"
      ? task.progress_message
      : task.message || (task.error && task.error.message) || "";
    row.querySelector(".note").textContent = progress + (note || "");
  }
}

// -- schedules page -------------------------------------------------------------
function watchSchedules(table) {
  table.addEventListener("click", async (event) => {
    const button = event.target.closest("button.toggle");
    if (!button) return;
    const row = button.closest("tr");
    const action = button.dataset.action;
    const response = await api(`api/v1/schedules/${row.dataset.id}/${action}`, {
      method: "POST", headers: { "X-XSRFToken": xsrf },
    });
    const schedule = await response.json();
    row.dataset.paused = schedule.paused ? "1" : "0";
    row.querySelector(".schedule-state").textContent = schedule.paused ? "paused" : "active";
    row.querySelector(".next-run").textContent =
      (schedule.next_run || "").slice(0, 19).replace("T", " ");
    button.dataset.action = schedule.paused ? "resume" : "pause";
    button.textContent = schedule.paused ? "Resume" : "Pause";
  });
}

async function showArtifacts(id) {
  const { artifacts } = await (await api(`api/v1/jobs/${id}/artifacts`)).json();
  const list = document.getElementById("artifacts");
  list.replaceChildren(...Object.entries(artifacts).map(([name, size]) => {
    const item = document.createElement("li");
    const link = item.appendChild(document.createElement("a"));
    link.href = `${base}api/v1/jobs/${id}/artifacts/${name.split("/").map(encodeURIComponent).join("/")}`;
    link.download = "";
    link.textContent = name;
    const note = item.appendChild(document.createElement("span"));
    note.className = "muted";
    note.textContent = ` ${size} bytes`;
    return item;
  }));
  const none = document.getElementById("no-artifacts");
  if (none) none.hidden = Object.keys(artifacts).length > 0;
}

async function followJob(section) {
  const id = section.dataset.id;
  const log = document.getElementById("log");
  let chunk = 0;
  let ended = false;
  const cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      if (!window.confirm("Cancel this job and stop its cluster?")) return;
      const response = await api(`api/v1/jobs/${id}/cancel`, {
        method: "POST", headers: { "X-XSRFToken": xsrf },
      });
      showJob(await response.json());
    });
  }
  for (;;) {
    try {
      // An array's page of elements (?offset=, ?state=) is polled as shown.
      const page = new URLSearchParams(window.location.search);
      const job = await (await api(`api/v1/jobs/${id}?${page}`)).json();
      // The log after the state: the runner stores the last output first.
      const response = await api(`api/v1/jobs/${id}/logs?chunk=${chunk}`);
      chunk = Number(response.headers.get("X-Next-Chunk"));
      const text = await response.text();
      if (text) {
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(document.createTextNode(text));
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
      showJob(job);
      if (ended) break;
      ended = TERMINAL.has(job.state);
      if (ended) await showArtifacts(id);
    } catch (error) {
      console.warn("dask-batch:", error);  // a hiccup: the next round retries
    }
    await new Promise((resolve) => setTimeout(resolve, ended ? 0 : 500));
  }
}

async function every(seconds, task) {
  for (;;) {
    try {
      await task();
    } catch (error) {
      console.warn("dask-batch:", error);
    }
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  }
}

const jobsTable = document.getElementById("jobs");
if (jobsTable) every(2, () => refreshJobs(jobsTable));
const schedulesTable = document.getElementById("schedules");
if (schedulesTable) watchSchedules(schedulesTable);
const jobSection = document.getElementById("job");
if (jobSection) followJob(jobSection).catch((error) => console.warn("dask-batch:", error));
