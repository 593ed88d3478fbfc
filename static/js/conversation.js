// Conversation page: poll messages.json every ~2 s, append new messages, update ticks.
// No inline script (CSP); every text goes through textContent, never innerHTML.
(function () {
  "use strict";
  var root = document.getElementById("conversation");
  if (!root || root.dataset.live !== "1") return;
  var list = document.getElementById("messages");
  var pollUrl = root.dataset.pollUrl;
  var lastId = parseInt(root.dataset.lastId || "0", 10);
  var LABELS = { queued: "queued", delivered: "delivered ✓", read: "read ✓✓", failed: "failed" };
  var POLL_MS = 2000;
  var busy = false;

  function formatTime(ms) {
    var d = new Date(ms);
    return d.toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
  }

  function setStatus(item, status) {
    var span = item.querySelector("[data-status]");
    if (!span || span.dataset.status === status) return;
    span.dataset.status = status;
    span.className = "status status--" + status;
    span.textContent = LABELS[status] || status;
    if (status === "failed") window.location.reload(); // shows the Retry form with its token
  }

  function render(m) {
    var li = document.createElement("li");
    li.className = "bubble bubble--" + m.direction;
    li.dataset.id = String(m.id);
    var text = document.createElement("p");
    text.className = "bubble__text";
    text.setAttribute("dir", "auto");
    text.textContent = m.text;
    var meta = document.createElement("p");
    meta.className = "bubble__meta muted";
    var time = document.createElement("time");
    time.dataset.ms = String(m.created_ms);
    time.textContent = formatTime(m.created_ms);
    meta.appendChild(time);
    if (m.direction === "out") {
      var span = document.createElement("span");
      span.dataset.status = m.status;
      span.className = "status status--" + m.status;
      span.textContent = LABELS[m.status] || m.status;
      meta.appendChild(document.createTextNode(" "));
      meta.appendChild(span);
    }
    li.appendChild(text);
    li.appendChild(meta);
    return li;
  }

  function apply(data) {
    var empty = document.getElementById("empty");
    (data.messages || []).forEach(function (m) {
      if (list.querySelector('[data-id="' + m.id + '"]')) return;
      if (empty) { empty.remove(); empty = null; }
      list.appendChild(render(m));
      if (m.id > lastId) lastId = m.id;
    });
    var statuses = data.statuses || {};
    Object.keys(statuses).forEach(function (id) {
      var item = list.querySelector('[data-id="' + id + '"]');
      if (item) setStatus(item, statuses[id]);
    });
  }

  function poll() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(pollUrl + "?after=" + lastId, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) apply(data); })
      .catch(function () { /* offline for a moment: the next poll tries again */ })
      .then(function () { busy = false; });
  }

  Array.prototype.forEach.call(list.querySelectorAll("time[data-ms]"), function (t) {
    t.textContent = formatTime(parseInt(t.dataset.ms, 10));
  });
  list.lastElementChild && list.lastElementChild.scrollIntoView({ block: "end" });
  window.setInterval(poll, POLL_MS);
})();
