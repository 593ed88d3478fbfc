// One pushed event stream per tab (GET /events/, server-sent events), shared by the pages.
// Every event is re-dispatched on document as CustomEvent("p2p:event", {detail: {kind,
// data}}); the stream's state as CustomEvent("p2p:stream", {detail: {state}}) with state
// "open", "closed" (the pages fall back to asking the server themselves) or "reset" (some
// events may have been missed: a page reloads what it shows). The browser reconnects by
// itself with Last-Event-ID, so nothing is missed across a short cut.
//
// The tab title starts with the number of unread messages, "(3) …", kept up to date from
// /chat/unread.json whenever a conversation changes; CustomEvent("p2p:unread", {detail:
// {total, by_peer}}) tells the pages (badges on the users list).
//
// Browser notifications: after the person allows them (a button the page shows while the
// permission is "default"), a new message that arrives while this tab is in the background
// shows a notification with the sender's name only, never the text.
(function () {
  "use strict";
  var body = document.body;
  var eventsUrl = body.dataset.eventsUrl;
  if (!eventsUrl) return; // not a logged-in, verified page
  var unreadUrl = body.dataset.unreadUrl;
  var baseTitle = document.title;
  var lastUnread = null;

  function emit(name, detail) {
    if (name === "p2p:stream") body.dataset.stream = detail.state; // for CSS and tests
    document.dispatchEvent(new CustomEvent(name, { detail: detail }));
  }

  // --- unread counts and the tab title ----------------------------------------------------
  var counting = false;
  var countAgain = false;
  function countUnread() {
    if (!unreadUrl) return;
    if (counting) { countAgain = true; return; }
    counting = true;
    fetch(unreadUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        document.title = (data.total ? "(" + data.total + ") " : "") + baseTitle;
        if (lastUnread !== null && data.total > lastUnread) maybeNotify(data);
        lastUnread = data.total;
        body.dataset.unread = String(data.total); // for CSS and tests
        emit("p2p:unread", data);
      })
      .catch(function () { /* offline for a moment: the next change counts again */ })
      .then(function () {
        counting = false;
        if (countAgain) { countAgain = false; countUnread(); }
      });
  }

  // --- notifications ------------------------------------------------------------------------
  var senders = {}; // the last "conversation.new" peers, for the notification's wording
  function maybeNotify() {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (document.visibilityState === "visible") return;
    var names = Object.keys(senders);
    senders = {};
    var who = names.length === 1 ? names[0] : "several people";
    try {
      new Notification("New message", { body: "From " + who, tag: "p2psocial-unread" });
    } catch (e) { /* some browsers allow notifications from a service worker only */ }
  }
  var ask = document.getElementById("notify-ask");
  if (ask && "Notification" in window && Notification.permission === "default") {
    ask.hidden = false;
    ask.addEventListener("click", function () {
      Notification.requestPermission().then(function () { ask.hidden = true; });
    });
  }

  // --- the stream ---------------------------------------------------------------------------
  if (!window.EventSource) { emit("p2p:stream", { state: "closed" }); countUnread(); return; }
  var source = new EventSource(eventsUrl);
  var KINDS = ["conversation.new", "conversation.status", "conversation.file",
               "conversation.read", "conversation.group", "presence.changed"];
  KINDS.forEach(function (kind) {
    source.addEventListener(kind, function (event) {
      var data = {};
      try { data = JSON.parse(event.data); } catch (e) { return; }
      if (kind === "conversation.new" && data.peer) senders[data.peer] = true;
      emit("p2p:event", { kind: kind, data: data });
      if (kind.indexOf("conversation.") === 0) countUnread();
    });
  });
  source.addEventListener("ready", function () { emit("p2p:stream", { state: "open" }); });
  source.addEventListener("reset", function () {
    emit("p2p:stream", { state: "reset" });
    countUnread();
  });
  source.onerror = function () {
    // CLOSED: refused (logged out) or gone for good; otherwise the browser retries
    emit("p2p:stream", { state: "closed" });
  };
  countUnread();
})();
