// The conversations home: the list (#conversations) is drawn by the server, here and at
// its data-rows-url (/chats/?rows=1, {"html", "total_unread"}, the same row template). When
// live.js reports a change (CustomEvent "p2p:event": a conversation.* kind, or
// presence.changed, since rows show presence) the list is fetched again and replaced:
// debounced, one request at a time. After the stream comes back (or is reset) it is
// fetched once to catch up; while there is no stream it is fetched every 15 s.
(function () {
  "use strict";
  var list = document.getElementById("conversations");
  if (!list || !list.dataset.rowsUrl) return;
  var empty = document.getElementById("conversations-empty");
  var rowsUrl = list.dataset.rowsUrl;

  var DEBOUNCE_MS = 150;
  var POLL_MS = 15000;
  var STREAM_WAIT_MS = 5000;

  // --- times in the reader's time zone (the server writes UTC) ---------------------------
  function formatTime(ms) {
    var d = new Date(ms);
    if (isNaN(d.getTime())) return null;
    var now = new Date();
    if (d.toDateString() === now.toDateString()) {
      return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    var options = { day: "numeric", month: "short" };
    if (d.getFullYear() !== now.getFullYear()) options.year = "numeric";
    return d.toLocaleDateString([], options);
  }

  function localTimes() {
    var times = list.querySelectorAll("time[data-ms]");
    for (var i = 0; i < times.length; i++) {
      var text = formatTime(parseInt(times[i].dataset.ms, 10));
      if (text) {
        times[i].title = times[i].textContent; // the full date and time, on hover
        times[i].textContent = text;
      }
    }
  }

  // --- redrawing the list ----------------------------------------------------------------
  // The list as the browser serialises it, before times are localised: an answer that
  // parses to the same leaves the list (and a screen reader) alone.
  var lastHtml = list.innerHTML;
  function serialised(html) {
    var holder = document.createElement("template"); // parses inert: nothing loads or runs
    holder.innerHTML = html;
    return holder.innerHTML;
  }

  function draw(html) {
    var normal = serialised(html);
    if (normal === lastHtml) return;
    lastHtml = normal;
    var active = document.activeElement;
    var focusedRow = active && list.contains(active) ? active.closest("[data-peer]") : null;
    var focusedPeer = focusedRow ? focusedRow.dataset.peer : null;
    // The server's own template output, every value escaped there.
    list.innerHTML = html;
    list.hidden = !list.children.length;
    if (empty) empty.hidden = !list.hidden;
    localTimes();
    if (focusedPeer !== null) {
      // keep the keyboard where it was: the same conversation's link, wherever it moved
      var rows = list.querySelectorAll("[data-peer]");
      for (var i = 0; i < rows.length; i++) {
        if (rows[i].dataset.peer === focusedPeer) {
          var link = rows[i].querySelector("a");
          if (link) link.focus();
          break;
        }
      }
    }
  }

  var fetching = false;
  var fetchAgain = false;
  function refresh() {
    if (fetching) { fetchAgain = true; return; }
    fetching = true;
    fetch(rowsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data && typeof data.html === "string") draw(data.html); })
      .catch(function () { /* offline for a moment: the next change or tick tries again */ })
      .then(function () {
        fetching = false;
        if (fetchAgain) { fetchAgain = false; refresh(); }
      });
  }

  var debounce = null;
  function soon() {
    if (debounce !== null) clearTimeout(debounce);
    debounce = setTimeout(function () { debounce = null; refresh(); }, DEBOUNCE_MS);
  }

  // --- the stream, or polling without it ---------------------------------------------------
  var poller = null;
  function startPolling() {
    if (poller === null) poller = setInterval(refresh, POLL_MS);
  }
  function stopPolling() {
    if (poller !== null) { clearInterval(poller); poller = null; }
  }

  var streamOpen = document.body.dataset.stream === "open";
  document.addEventListener("p2p:event", function (event) {
    var kind = event.detail && event.detail.kind;
    if (typeof kind !== "string") return;
    if (kind.indexOf("conversation.") === 0 || kind === "presence.changed") soon();
  });
  document.addEventListener("p2p:stream", function (event) {
    var state = event.detail && event.detail.state;
    if (state === "open") {
      // The first open too: something may have changed between this page being drawn
      // and the stream starting.
      if (!streamOpen) soon();
      streamOpen = true;
      stopPolling();
    } else if (state === "closed") {
      streamOpen = false;
      startPolling();
    } else if (state === "reset") {
      soon(); // events were missed
    }
  });
  setTimeout(function () { if (!streamOpen) startPolling(); }, STREAM_WAIT_MS);

  localTimes();
})();
