// sdpipe dashboard: live updates. The one place that maps job and batch events to the page.
//
// Events come from the API's event stream (GET /api/events, Server-Sent Events: one JSON object
// per event with "type", "job_id", "batch_id" and "data"). A job event refreshes that job's row
// (its HTML comes from the server, so it is escaped there) or inserts it when it is new and the
// table shows the newest jobs; sampling progress updates the row's progress text in place. Where
// the stream is not available the same events are made by polling GET /api/jobs.
"use strict";
(function () {
  const root = document.querySelector('meta[name="sdpipe-root"]')?.content || "";
  const statusEl = () => document.getElementById("live-status");
  const POLL_MS = 1000;
  const pending = new Map();  // job id -> timer of a row refresh due

  function setStatus(text) {
    const el = statusEl();
    if (el) { el.textContent = "live: " + text; el.dataset.mode = text; }
  }

  function tables() { return Array.from(document.querySelectorAll("[data-live-jobs]")); }

  function accepts(table, event) {
    const batch = table.dataset.batch || "";
    if (batch && event.batch_id !== batch) return false;
    if (table.dataset.q) return false;  // text filters are the server's: new rows come with a reload
    const state = table.dataset.state || "";
    return !state || !event.data || !event.data.state || event.data.state === state;
  }

  async function fetchRow(jobId) {
    const response = await fetch(root + "/fragments/jobs/" + encodeURIComponent(jobId) + "/row",
      { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
    if (!response.ok) return null;
    const template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();
    return template.content.firstElementChild;
  }

  async function refreshRow(jobId, event) {
    const targets = tables().filter((table) =>
      table.querySelector('tr[data-job="' + CSS.escape(jobId) + '"]') ||
      (table.dataset.firstPage === "true" && accepts(table, event)));
    if (!targets.length) return;
    const row = await fetchRow(jobId);
    if (!row) return;
    for (const table of targets) {
      const body = table.querySelector("tbody");
      const old = body.querySelector('tr[data-job="' + CSS.escape(jobId) + '"]');
      const copy = row.cloneNode(true);
      if (old) { old.replaceWith(copy); continue; }
      body.querySelector("tr.empty")?.remove();
      body.prepend(copy);
    }
  }

  function scheduleRow(jobId, event) {
    clearTimeout(pending.get(jobId));
    pending.set(jobId, setTimeout(() => { pending.delete(jobId); refreshRow(jobId, event); }, 100));
  }

  function showProgress(event) {
    const d = event.data || {};
    const step = d.sampling_step ?? d.step, total = d.sampling_steps ?? d.steps;
    if (step == null || !total) return;
    const eta = d.eta_s ?? d.eta_relative;
    const text = "sampling " + step + "/" + total + (eta != null ? ", about " + Math.ceil(eta) + " s left" : "");
    for (const el of document.querySelectorAll(
      '[data-job="' + CSS.escape(event.job_id) + '"] [data-sampling], #job-view[data-job="' +
      CSS.escape(event.job_id) + '"] [data-sampling]')) {
      el.textContent = text;
      el.hidden = false;
    }
  }

  let jobViewTimer = null;
  function refreshJobView(event) {
    const view = document.getElementById("job-view");
    if (!view || view.dataset.job !== event.job_id) return;
    if (event.data && event.data.state && event.data.state === view.dataset.state) return;
    clearTimeout(jobViewTimer);
    jobViewTimer = setTimeout(async () => {  // the page again, swapped in place (no reload)
      const response = await fetch(location.href, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const main = doc.getElementById("main");
      if (main) {
        document.getElementById("main").replaceChildren(...main.childNodes);
        document.dispatchEvent(new CustomEvent("sdpipe:content"));
      }
    }, 150);
  }

  // The mapping of one event to the page.
  function applyEvent(event) {
    if (!event || !event.type) return;
    document.dispatchEvent(new CustomEvent("sdpipe:event", { detail: event }));
    if (!event.job_id) return;
    if (event.type === "job.progress") { showProgress(event); return; }
    if (event.type.startsWith("job.")) { scheduleRow(event.job_id, event); refreshJobView(event); }
  }

  // --- sources -------------------------------------------------------------------------------
  function filterQuery() {
    const view = document.getElementById("job-view");
    if (view) return "?job=" + encodeURIComponent(view.dataset.job);
    const batches = new Set(tables().map((t) => t.dataset.batch || ""));
    return batches.size === 1 && !batches.has("") ? "?batch=" + encodeURIComponent([...batches][0]) : "";
  }

  function startStream() {
    if (!window.EventSource) { startPolling(); return; }
    let opened = false;
    const source = new EventSource(root + "/api/events" + filterQuery(), { withCredentials: true });
    source.onopen = () => { opened = true; setStatus("on"); };
    source.onmessage = (message) => { try { applyEvent(JSON.parse(message.data)); } catch (e) { /* not JSON */ } };
    // The event types of GET /api/events (pipeline/events/model.py); job.preview is not asked for.
    for (const type of ["job.queued", "job.step.started", "job.step.finished", "job.retrying", "job.progress",
      "job.succeeded", "job.failed", "job.cancelled", "batch.completed"]) {
      source.addEventListener(type, (message) => {
        try { applyEvent({ type, ...JSON.parse(message.data) }); } catch (e) { /* not JSON */ }
      });
    }
    source.onerror = () => {
      if (!opened) { source.close(); startPolling(); }  // no stream on this server: poll instead
      else setStatus("reconnecting");  // EventSource reconnects by itself, with Last-Event-ID
    };
  }

  const known = new Map();  // job id -> "state updated_at" last seen
  function startPolling() {
    setStatus("polling");
    const view = document.getElementById("job-view");
    const query = filterQuery().replace("?batch=", "&batch=");
    const url = view ? root + "/api/jobs/" + encodeURIComponent(view.dataset.job)
      : root + "/api/jobs?limit=50" + (query.startsWith("&batch=") ? query : "");
    let first = true;
    async function poll() {
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (response.ok) {
          const body = await response.json();
          for (const job of body.jobs || [body]) {
            const seen = job.state + " " + job.updated_at;
            if (known.get(job.job_id) !== seen) {
              if (!first || view) applyEvent({ type: "job.state", job_id: job.job_id, batch_id: job.batch_id, data: { state: job.state } });
              known.set(job.job_id, seen);
            }
          }
          first = false;
          setStatus("polling");
        } else setStatus("off (" + response.status + ")");
      } catch (e) { setStatus("off"); }
      setTimeout(poll, POLL_MS);
    }
    poll();
  }

  window.sdpipeLive = { applyEvent, refreshRow };
  document.addEventListener("DOMContentLoaded", () => {
    if (tables().length || document.getElementById("job-view") || document.getElementById("overview")) startStream();
    else statusEl()?.setAttribute("hidden", "");
  });
})();
