// sdpipe dashboard: the page behaviours that are not live updates (see live.js for those):
// copy buttons, image zoom, the overview's bars, and submitting the form in place.
"use strict";
(function () {
  const root = document.querySelector('meta[name="sdpipe-root"]')?.content || "";
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); return; }
    const area = document.createElement("textarea");  // http on another host: no Clipboard API
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }

  function enhance() {
    for (const button of document.querySelectorAll("[data-copy]")) {
      if (button.dataset.bound) continue;
      button.dataset.bound = "1";
      button.addEventListener("click", async () => {
        const source = document.querySelector(button.dataset.copy);
        const note = button.parentElement.querySelector(".copied");
        try {
          await copyText(source.textContent);
          if (note) note.textContent = "Copied.";
        } catch (e) { if (note) note.textContent = "Copy failed: select the text below."; }
      });
    }
    for (const zoom of document.querySelectorAll("button.zoom")) {
      if (zoom.dataset.bound) continue;
      zoom.dataset.bound = "1";
      zoom.addEventListener("click", () => {
        const on = zoom.getAttribute("aria-pressed") !== "true";
        zoom.setAttribute("aria-pressed", on ? "true" : "false");
        zoom.classList.toggle("zoomed", on);
      });
    }
    for (const bar of document.querySelectorAll(".bars [data-h]")) bar.style.height = bar.dataset.h + "%";
  }

  function submitInPlace() {
    const form = document.getElementById("submit-form");
    if (!form) return;
    const error = document.getElementById("submit-error");
    const note = document.getElementById("submit-note");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      note.textContent = "Submitting…";
      let response;
      try {
        response = await fetch(form.action, {
          method: "POST", body: new FormData(form), credentials: "same-origin",
          headers: { Accept: "application/json", "X-CSRF-Token": csrf() },
        });
      } catch (e) { note.textContent = ""; error.textContent = "The server did not answer."; error.hidden = false; return; }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        const problem = body.error || {};
        note.textContent = "";
        error.textContent = (problem.message || "refused (" + response.status + ")") + (problem.hint ? " (" + problem.hint + ")" : "");
        error.hidden = false;
        return;
      }
      note.textContent = "Queued " + body.job_ids.length + " job(s) in batch " + body.batch_id.slice(0, 8) + ".";
      for (const jobId of body.job_ids.slice().reverse()) {
        window.sdpipeLive?.refreshRow(jobId, { type: "job.queued", job_id: jobId, batch_id: body.batch_id, data: { state: "queued" } });
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => { enhance(); submitInPlace(); });
  document.addEventListener("sdpipe:content", enhance);
})();
