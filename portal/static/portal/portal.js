/* Progressive enhancement: regions marked data-poll-url refresh themselves from a server-rendered
   fragment every data-poll-seconds (default 3) while the page is visible. Without script the page
   still works: reload it. */
(function () {
  "use strict";
  function poll(region) {
    var url = region.getAttribute("data-poll-url");
    var seconds = parseFloat(region.getAttribute("data-poll-seconds") || "3");
    function tick() {
      if (document.hidden) { return schedule(); }
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html !== null && html !== region.innerHTML) { region.innerHTML = html; }
          schedule();
        })
        .catch(schedule);
    }
    function schedule() { window.setTimeout(tick, seconds * 1000); }
    schedule();
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll-url]").forEach(poll);
  });
})();
