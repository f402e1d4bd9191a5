// Counts a pending deadline down every second between the server's refreshes.
function sagaConsoleTick() {
  for (const el of document.querySelectorAll("[data-deadline]")) {
    const left = Math.ceil((Date.parse(el.dataset.deadline) - Date.now()) / 1000);
    const out = el.querySelector(".countdown");
    if (out) out.textContent = left > 0 ? left + " s" : "due";
  }
}
setInterval(sagaConsoleTick, 1000);
