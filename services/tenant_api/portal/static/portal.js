// C3 portal: optional enhancements only; every page works without this script.
(function () {
  "use strict";
  // Ask before irreversible actions (deactivate a user, revoke a key).
  document.querySelectorAll("form.confirm[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
    });
  });
  // A refused form: move focus to its first invalid field so keyboard and screen reader users land there.
  var invalid = document.querySelector(".invalid input, .invalid select");
  if (invalid) invalid.focus();
  // The new API key: selected, ready to copy.
  var key = document.getElementById("new-key");
  if (key) { key.focus(); key.select(); }
})();
