// Users page: the table follows presence without a reload. When live.js reports a presence
// change (or the stream comes back after a cut), the rows are read again from
// /users/?rows=1, drawn by the same server code as the first page, and replace the old
// ones. Unread counts from live.js show as a badge beside each person's Chat button.
(function () {
  "use strict";
  var table = document.getElementById("users");
  var rows = document.getElementById("users-rows");
  if (!table || !rows) return;
  var url = table.dataset.rowsUrl;
  var unread = {};
  var busy = false;
  var again = false;
  var timer = null;
  var streamOpen = false;
  var FALLBACK_MS = 15000; // without a stream
  var IDLE_MS = 60000; // with one: people turning "away" by idling send no event
  var since = 0;

  function badges() {
    Array.prototype.forEach.call(rows.querySelectorAll("tr[data-username]"), function (row) {
      var count = unread[row.dataset.username] || 0;
      var badge = row.querySelector(".unread-badge");
      if (!count) { if (badge) badge.remove(); return; }
      if (!badge) {
        badge = document.createElement("span");
        badge.className = "unread-badge";
        var cell = row.lastElementChild;
        cell.appendChild(badge);
      }
      badge.textContent = String(count);
      badge.setAttribute("aria-label", count + " unread");
    });
  }

  function reload() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        rows.innerHTML = data.html; // escaped by the server (peers/views.py _user_rows)
        badges();
      })
      .catch(function () { /* offline for a moment */ })
      .then(function () {
        busy = false;
        if (again) { again = false; reload(); }
      });
  }

  function soon() {
    if (timer) return;
    timer = window.setTimeout(function () { timer = null; reload(); }, 150);
  }

  document.addEventListener("p2p:event", function (event) {
    if (event.detail && event.detail.kind === "presence.changed") soon();
  });
  document.addEventListener("p2p:stream", function (event) {
    var state = event.detail && event.detail.state;
    if ((state === "open" && !streamOpen) || state === "reset") soon();
    streamOpen = state === "open";
  });
  document.addEventListener("p2p:unread", function (event) {
    unread = (event.detail && event.detail.by_peer) || {};
    badges();
  });
  window.setInterval(function () {
    since += FALLBACK_MS;
    if (!streamOpen || since >= IDLE_MS) { since = 0; reload(); }
  }, FALLBACK_MS);
})();
