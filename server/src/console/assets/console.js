// The Stoa console's own script. Pages work without it; it adds local
// times (UTC on hover), copy buttons, confirmations, and the live timeline
// (server-sent events). No framework, no build step.
(function () {
  "use strict";

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  // <time datetime="...Z">: shown in the browser's zone, UTC on hover.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]:not([data-local])").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) { return; }
      var utc = t.textContent;
      t.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      t.title = utc + " (" + Intl.DateTimeFormat().resolvedOptions().timeZone + " shown)";
      t.setAttribute("data-local", "");
    });
  }

  function copyButtons(root) {
    root.querySelectorAll("button.copy[data-copy]:not([data-ready])").forEach(function (b) {
      b.setAttribute("data-ready", "");
      b.addEventListener("click", function () {
        if (navigator.clipboard) {
          navigator.clipboard.writeText(b.getAttribute("data-copy")).then(function () {
            b.textContent = "copied";
            setTimeout(function () { b.textContent = "copy"; }, 1200);
          });
        }
      });
    });
  }

  function confirmations(root) {
    root.querySelectorAll("form[data-confirm]:not([data-ready])").forEach(function (f) {
      f.setAttribute("data-ready", "");
      f.addEventListener("submit", function (ev) {
        if (!window.confirm(f.getAttribute("data-confirm"))) { ev.preventDefault(); }
      });
    });
  }

  // #timeline[data-live]: new turns and entries as they commit.
  function liveTimeline(root) {
    var box = root.querySelector("#timeline[data-live]");
    if (!box || box.hasAttribute("data-streaming") || !window.EventSource) { return; }
    box.setAttribute("data-streaming", "");
    var src = new EventSource(box.getAttribute("data-live"));
    var leaving = false;
    // A form sent from this page (cancel, assert) navigates: no reload then.
    document.addEventListener("submit", function (ev) {
      if (!ev.defaultPrevented) { leaving = true; src.close(); }
    });
    function fragment(html) {
      var t = document.createElement("template");
      t.innerHTML = html;
      localTimes(t.content);
      return t.content;
    }
    src.addEventListener("turn", function (ev) { box.appendChild(fragment(ev.data)); });
    src.addEventListener("entry", function (ev) {
      var lists = box.querySelectorAll("ol.entries");
      if (lists.length) { lists[lists.length - 1].appendChild(fragment(ev.data)); }
      else { box.appendChild(fragment(ev.data)); }
    });
    src.addEventListener("end", function () {
      src.close();
      // Finished: show its final state (status, facts, result).
      if (!leaving) { window.location.reload(); }
    });
  }

  function init(root) {
    localTimes(root);
    copyButtons(root);
    confirmations(root);
    liveTimeline(root);
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); });
  // Content htmx swapped in (filters, the packs page's progress).
  document.addEventListener("htmx:afterSettle", function (ev) { init(ev.target || document); });
})();
