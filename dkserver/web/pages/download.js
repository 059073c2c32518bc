// Detect the visitor's platform and put its install command first.
(function () {
  "use strict";
  function detect() {
    var data = navigator.userAgentData;
    var hint = (data && data.platform) || navigator.platform || "";
    var text = (hint + " " + navigator.userAgent).toLowerCase();
    if (text.indexOf("win") !== -1) return "windows";
    if (text.indexOf("mac") !== -1 || text.indexOf("darwin") !== -1) return "darwin";
    if (text.indexOf("iphone") !== -1 || text.indexOf("ipad") !== -1) return "darwin";
    if (text.indexOf("linux") !== -1 || text.indexOf("x11") !== -1) return "linux";
    return "unknown";
  }
  var names = { linux: "Linux", darwin: "macOS", windows: "Windows" };
  var platform = detect();
  var detected = document.getElementById("detected");
  detected.setAttribute("data-platform", platform);
  if (names[platform]) {
    detected.textContent = "Detected platform: " + names[platform] + ". Run this:";
    var section = document.getElementById("platform-" + platform);
    section.classList.add("detected");
    section.parentNode.insertBefore(section, detected.nextSibling.nextSibling);
  }
})();
