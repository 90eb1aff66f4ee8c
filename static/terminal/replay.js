// Replays a recorded terminal session (asciicast v2) with the vendored asciinema-player.
(function () {
  "use strict";
  function start() {
    var element = document.querySelector("[data-replay]");
    if (!element || !window.AsciinemaPlayer) return;
    window.panelReplay = window.AsciinemaPlayer.create(element.dataset.castUrl, element, {
      autoPlay: true, speed: 2, idleTimeLimit: 1, fit: "width",
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
