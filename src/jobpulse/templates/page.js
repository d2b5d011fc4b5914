// The status page's script: filters the table as one types, and every few seconds fetches
// the same page with fragment=1 and swaps in what the server rendered (the elements marked
// data-swap), while the tab is visible. The page works without it.
(function () {
  "use strict";
  var root = document.documentElement;
  var every = Number(root.getAttribute("data-refresh")) || 0;
  var form = document.getElementById("filters");
  var stamp = document.getElementById("refreshed");
  var timer = 0;
  var soon = 0;
  var inflight = null;
  var refreshes = 0;
  var problems = { failed: true, stalled: true, missed: true };

  root.className += " js";

  function query() {
    var params = new URLSearchParams(form ? new FormData(form) : location.search);
    var clean = new URLSearchParams();
    params.forEach(function (value, key) {
      if (value && key !== "fragment") clean.append(key, value);
    });
    return clean;
  }

  function filterRows() {
    if (!form) return;
    var text = form.elements.namedItem("q").value.trim().toLowerCase();
    var state = form.elements.namedItem("state").value;
    var critical = form.elements.namedItem("critical").checked;
    var rows = document.querySelectorAll("#rows tr[data-name]");
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i];
      var rowState = row.getAttribute("data-state");
      var keep =
        (!text || row.getAttribute("data-name").indexOf(text) !== -1) &&
        (!state || (state === "problems" ? problems[rowState] === true : rowState === state)) &&
        (!critical || row.getAttribute("data-critical") === "1");
      if (row.hidden === keep) row.hidden = !keep;
      if (keep) shown++;
    }
    var count = document.getElementById("shown");
    if (count) count.textContent = String(shown);
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var parts = fresh.querySelectorAll("[data-swap]");
    for (var i = 0; i < parts.length; i++) {
      var old = document.getElementById(parts[i].id);
      if (old) old.replaceWith(document.importNode(parts[i], true));
      var title = parts[i].getAttribute("data-title");
      if (title) document.title = title;
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (every > 0 && !document.hidden) timer = setTimeout(refresh, every);
  }

  function refresh() {
    clearTimeout(timer);
    clearTimeout(soon);
    if (document.hidden) return;
    if (inflight) inflight.abort();
    var controller = new AbortController();
    inflight = controller;
    var params = query();
    params.set("fragment", "1");
    fetch("?" + params.toString(), {
      cache: "no-store",
      credentials: "same-origin",
      headers: { Accept: "text/html" },
      signal: controller.signal,
    })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        swap(html);
        filterRows();
        refreshes++;
        root.setAttribute("data-refreshes", String(refreshes));
        stamp.textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function (error) {
        if (error.name !== "AbortError") stamp.textContent = "refresh failed (" + error.message + "); trying again";
      })
      .finally(function () {
        if (inflight === controller) {
          inflight = null;
          schedule();
        }
      });
  }

  if (form) {
    var changed = function () {
      filterRows();
      var params = query().toString();
      history.replaceState(null, "", params ? "?" + params : location.pathname);
      clearTimeout(soon);
      soon = setTimeout(refresh, 300);  // what the server has beyond what is on the page
    };
    form.addEventListener("input", changed);
    form.addEventListener("change", changed);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      changed();
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) clearTimeout(timer);
    else if (every > 0) refresh();
  });
  if (every > 0) stamp.textContent = "refreshes every " + every / 1000 + " s";
  schedule();
})();
