// Swagger UI for /docs, served from the package (no CDN); an external script so the page's CSP needs no inline one.
"use strict";
window.addEventListener("load", function () {
  const el = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({ url: el.getAttribute("data-openapi"), dom_id: "#swagger-ui", deepLinking: true });
});
