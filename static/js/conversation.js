// Conversation page: poll messages.json every ~2 s, append new messages, update ticks, and
// mark received messages read once they are actually shown.
// No inline script (CSP); every text goes through textContent, never innerHTML.
//
// Read receipts come only from here: opening the page marks nothing read. A received,
// unread message (data-unread) counts as shown while the tab is visible
// (document.visibilityState) and at least half of it is in view (IntersectionObserver);
// then the id of the lowest such message is posted to data-read-url, which marks the
// conversation read up to it. Without JavaScript nothing is marked read.
(function () {
  "use strict";
  var root = document.getElementById("conversation");
  if (!root) return;
  var list = document.getElementById("messages");
  var pollUrl = root.dataset.pollUrl;
  var readUrl = root.dataset.readUrl;
  var live = root.dataset.live === "1";
  var csrfInput = root.querySelector('input[name="csrfmiddlewaretoken"]');
  var lastId = parseInt(root.dataset.lastId || "0", 10);
  var LABELS = { queued: "queued", delivered: "delivered ✓", read: "read ✓✓", failed: "failed" };
  var POLL_MS = 2000;
  var busy = false;

  // --- marking read ---------------------------------------------------------------------
  var inView = new Set(); // unread received messages at least half on screen
  var posting = false;
  var observer = null;
  if ("IntersectionObserver" in window) {
    observer = new IntersectionObserver(onIntersect, { threshold: [0, 0.5, 1] });
  } // else: no way to know what is on screen, so nothing is marked read

  function shown(entry) {
    if (!entry.isIntersecting) return false;
    // A message taller than half the window counts once it fills half the window.
    return entry.intersectionRatio >= 0.5 || entry.intersectionRect.height >= window.innerHeight / 2;
  }

  function onIntersect(entries) {
    entries.forEach(function (entry) {
      if (shown(entry)) inView.add(entry.target);
      else inView.delete(entry.target);
    });
    markShown();
  }

  function watch(item) {
    if (observer && item.dataset.unread === "1") observer.observe(item);
  }

  function lowestInView() {
    var lowest = null;
    inView.forEach(function (item) {
      if (!lowest || lowest.compareDocumentPosition(item) & Node.DOCUMENT_POSITION_FOLLOWING) {
        lowest = item;
      }
    });
    return lowest;
  }

  function settle(answer) {
    // Stop watching what the server now holds read. It reads by conversation order (the
    // sender's time), which may differ from the order arrivals were added here, so it
    // says which messages are still unread: those stay watched (and are posted next).
    var unread = new Set((answer.unread_ids || []).map(String));
    Array.prototype.forEach.call(list.querySelectorAll('[data-unread="1"]'), function (item) {
      if (!unread.has(item.dataset.id)) {
        delete item.dataset.unread;
        inView.delete(item);
        if (observer) observer.unobserve(item);
      }
    });
    markShown();
  }

  function markShown() {
    if (posting || !inView.size || !csrfInput || document.visibilityState !== "visible") return;
    var upTo = lowestInView();
    posting = true;
    fetch(readUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        Accept: "application/json",
        "Content-Type": "application/x-www-form-urlencoded",
        "X-CSRFToken": csrfInput.value,
      },
      body: "up_to=" + encodeURIComponent(upTo.dataset.id),
    })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (answer) {
        posting = false;
        if (answer) settle(answer);
      })
      .catch(function () { posting = false; /* offline for a moment: the next tick tries again */ });
  }

  document.addEventListener("visibilitychange", markShown);

  // --- live updates ---------------------------------------------------------------------
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
    if (m.direction === "in" && m.status !== "read") li.dataset.unread = "1";
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
      var item = render(m);
      list.appendChild(item);
      watch(item);
      if (m.id > lastId) lastId = m.id;
    });
    var statuses = data.statuses || {};
    Object.keys(statuses).forEach(function (id) {
      var item = list.querySelector('[data-id="' + id + '"]');
      if (item) setStatus(item, statuses[id]);
    });
  }

  function poll() {
    markShown(); // retries a post that failed
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
  Array.prototype.forEach.call(list.querySelectorAll('[data-unread="1"]'), watch);
  if (live) {
    list.lastElementChild && list.lastElementChild.scrollIntoView({ block: "end" });
    window.setInterval(poll, POLL_MS);
  } else {
    window.setInterval(markShown, POLL_MS);
  }
})();
