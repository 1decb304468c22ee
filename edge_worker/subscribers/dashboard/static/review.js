// Review pages: the heatmap overlays' on/off toggles (the verdict's maps, shown by default;
// research-only maps, hidden until asked for).  Everything else works without script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const [id, layers] of [["heatmap-toggle", ".heatmap"], ["research-heatmap-toggle", ".heatmap-research"]]) {
    const toggle = document.getElementById(id);
    if (!toggle) continue;
    const apply = () => {
      for (const layer of document.querySelectorAll(`#review-image ${layers}`)) {
        layer.setAttribute("visibility", toggle.checked ? "visible" : "hidden");
      }
    };
    toggle.addEventListener("change", apply);
    apply();
  }
});
