// Review pages: the heatmap overlay's on/off toggle.  Everything else works without script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const toggle = document.getElementById("heatmap-toggle");
  if (!toggle) return;
  const apply = () => {
    for (const layer of document.querySelectorAll("#review-image .heatmap")) {
      layer.setAttribute("visibility", toggle.checked ? "visible" : "hidden");
    }
  };
  toggle.addEventListener("change", apply);
  apply();
});
