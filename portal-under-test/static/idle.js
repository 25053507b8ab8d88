// The idle warning (API.md §6 "Inactivity"): a file, not inline, so the
// Content-Security-Policy needs no 'unsafe-inline'. Loaded at the end of signed-in pages.
(function () {
  var w = document.getElementById("idle-warning");
  var idle = Number(w.dataset.idleSecs), warn = Number(w.dataset.warningSecs), site = w.dataset.site;
  var c = document.getElementById("idle-countdown");
  var t1 = null, t2 = null, left = 0;
  function expire() { window.location.href = "/" + site + "/expired"; }
  function tick() { left -= 1; c.textContent = String(Math.max(left, 0)); if (left <= 0) { clearInterval(t2); expire(); } }
  function warnNow() { w.hidden = false; left = warn; c.textContent = String(left); if (warn <= 0) { expire(); return; } document.getElementById("idle-continue").focus(); t2 = setInterval(tick, 1000); }
  function start() { clearTimeout(t1); clearInterval(t2); w.hidden = true; t1 = setTimeout(warnNow, idle * 1000); }
  document.getElementById("idle-form").addEventListener("submit", function (e) {
    e.preventDefault();
    fetch(this.action, { method: "POST", body: new URLSearchParams(new FormData(this)), credentials: "same-origin" })
      .then(function (r) { if (r.status === 204) { start(); } else { expire(); } }, expire);
  });
  start();
})();
