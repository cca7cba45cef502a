// ms admin: toasts from the HX-Trigger "toast" event, and copy buttons. No framework.
document.addEventListener("toast", function (e) {
  var box = document.getElementById("toasts");
  if (!box || !e.detail) return;
  var t = document.createElement("div");
  t.className = "toast " + (e.detail.kind || "ok");
  t.textContent = e.detail.message;
  box.appendChild(t);
  setTimeout(function () { t.remove(); }, 4000);
});
document.addEventListener("click", function (e) {
  var btn = e.target.closest("[data-copy]");
  if (!btn) return;
  var input = document.querySelector(btn.getAttribute("data-copy"));
  if (!input) return;
  input.select();
  var done = function () { btn.textContent = "Скопировано"; setTimeout(function () { btn.textContent = "Копировать"; }, 2000); };
  if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(input.value).then(done, function () { document.execCommand("copy"); done(); }); }
  else { document.execCommand("copy"); done(); }
});
