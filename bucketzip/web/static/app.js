// bucketzip dashboard: every element with data-live="URL" is refreshed from that URL (a server-rendered,
// autoescaped fragment) every few hundred ms while the tab is visible. A fragment that carries data-final (a
// job that ended) stops its refresh. The period comes from <body data-refresh="ms">. No framework, no build.
"use strict";
(function () {
  const REFRESH = Number(document.body.getAttribute("data-refresh")) || 1000;

  function live(el) {
    const url = el.getAttribute("data-live");
    let timer = null;
    async function tick() {
      timer = null;
      if (!document.hidden) {
        try {
          const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
          if (r.redirected || r.status === 401) { window.location.reload(); return; }
          if (r.ok) {
            const html = await r.text();
            const fresh = document.createElement("template");
            fresh.innerHTML = html; // server-rendered with autoescaping: markup from us, text from users
            el.replaceChildren(fresh.content);
            el.setAttribute("data-refreshed", String(Date.now()));
            if (el.querySelector("[data-final]")) return;
          }
        } catch (e) {
          // the server is restarting or the network dropped: try again on the next tick
        }
      }
      timer = setTimeout(tick, REFRESH);
    }
    timer = setTimeout(tick, REFRESH);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(live);
  });
})();
