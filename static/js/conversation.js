// Conversation page: read messages.json when the event stream (live.js) says this
// conversation changed (or every ~2 s while there is no stream), add new messages, redraw
// changed ones, mark received messages read once they are actually shown, and send files.
// No inline script (CSP). Bubbles are drawn by the server only (templates/messaging/
// _message.html, sent as HTML by messages.json, autoescaped there); this script inserts
// that HTML and never builds HTML from data: every other text goes through textContent.
//
// Read receipts come only from here: opening the page marks nothing read. A received,
// unread message (data-unread) counts as shown while the tab is visible
// (document.visibilityState) and at least half of it is in view (IntersectionObserver);
// then the id of the lowest such message is posted to data-read-url, which marks the
// conversation read up to it. Without JavaScript nothing is marked read.
//
// Files: chosen with the file input, dropped on the conversation or pasted, they wait in a
// list until sent (Send files, or Send); then they go one per request, one after the other,
// each with a progress bar and a Cancel button; the text typed in the message box goes with
// the first as its caption. A file over the limit is refused here, before any upload.
(function () {
  "use strict";
  var root = document.getElementById("conversation");
  if (!root) return;
  var list = document.getElementById("messages");
  var pollUrl = root.dataset.pollUrl;
  var readUrl = root.dataset.readUrl;
  var latestUrl = root.dataset.latestUrl;
  var live = root.dataset.live === "1";
  var csrfInput = root.querySelector('input[name="csrfmiddlewaretoken"]');
  var lastId = parseInt(root.dataset.lastId || "0", 10);
  var POLL_MS = 2000;
  var RENDER_MAX_IDS = 100; // as queries.RENDER_MAX_IDS
  var each = function (items, fn) { Array.prototype.forEach.call(items, fn); };

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
    each(list.querySelectorAll('[data-unread="1"]'), function (item) {
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

  // --- bubbles, drawn by the server -----------------------------------------------------
  function formatTime(ms) {
    var d = new Date(ms);
    return d.toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
  }

  function localTimes(scope) {
    each(scope.querySelectorAll("time[data-ms]"), function (t) {
      t.textContent = formatTime(parseInt(t.dataset.ms, 10));
    });
  }

  function fromServer(html) {
    // The server's own template output (messages.json "html"); a <template> parses it
    // inert: nothing in it loads or runs before it is put in the page.
    var holder = document.createElement("template");
    holder.innerHTML = html;
    return holder.content.firstElementChild;
  }

  function bubble(id) {
    return list.querySelector('.bubble[data-id="' + id + '"]');
  }

  function part(item, name) {
    return item.querySelector('[data-part="' + name + '"]');
  }

  var PARTS = { status: "status", file: "fileState" }; // part name: its data-* marker

  function redraw(item, html) {
    // Only the parts that changed are replaced: a read receipt must not restart a video.
    var fresh = fromServer(html);
    if (!fresh) return;
    Object.keys(PARTS).forEach(function (name) {
      var old = part(item, name);
      var now = part(fresh, name);
      if (old && now && old.dataset[PARTS[name]] !== now.dataset[PARTS[name]]) {
        var hadFocus = old.contains(document.activeElement);
        old.replaceWith(now);
        if (hadFocus) {
          var focusable = now.querySelector("a, button, audio, video");
          if (focusable) focusable.focus();
        }
      }
    });
  }

  // --- live updates ---------------------------------------------------------------------
  var busy = false;
  var pollAgain = false;
  var stale = new Set(); // ids of shown bubbles whose status or file changed: to redraw
  var scrollToId = null; // one's own upload: shown once its message arrives

  function noteChanges(changes, name) {
    Object.keys(changes || {}).forEach(function (id) {
      var item = bubble(id);
      var shownPart = item && part(item, name);
      if (shownPart && shownPart.dataset[PARTS[name]] !== changes[id]) stale.add(id);
    });
  }

  function apply(data) {
    var empty = document.getElementById("empty");
    (data.messages || []).forEach(function (m) {
      if (m.id > lastId) lastId = m.id;
      if (bubble(m.id)) return;
      var item = fromServer(m.html);
      if (!item) return;
      if (empty) { empty.remove(); empty = null; }
      list.appendChild(item);
      localTimes(item);
      watch(item);
      if (m.id === scrollToId) {
        item.scrollIntoView({ block: "end" });
        scrollToId = null;
      }
    });
    var rendered = data.rendered || {};
    Object.keys(rendered).forEach(function (id) {
      var item = bubble(id);
      if (item) redraw(item, rendered[id]);
    });
    noteChanges(data.statuses, "status");
    noteChanges(data.files, "file");
  }

  function poll() {
    markShown(); // retries a post that failed
    if (busy) { pollAgain = true; return; }
    if (document.hidden) return;
    busy = true;
    var redrawing = Array.from(stale).slice(0, RENDER_MAX_IDS);
    redrawing.forEach(function (id) { stale.delete(id); }); // noted again if still different
    var url = pollUrl + "?after=" + lastId;
    if (redrawing.length) url += "&render=" + redrawing.join(",");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) apply(data); })
      .catch(function () { /* offline for a moment: the next poll tries again */ })
      .then(function () {
        busy = false;
        // Changed bubbles are fetched at once, not a poll later; asked once per tick.
        if (pollAgain || (stale.size && !redrawing.length)) {
          pollAgain = false;
          poll();
        }
      });
  }

  localTimes(list);
  each(list.querySelectorAll('[data-unread="1"]'), watch);
  // Pushed: an event for this conversation reads messages.json at once. The poll stays as
  // the fallback, every POLL_MS while the stream is not open and every SAFETY_POLL_MS
  // while it is (a reconnect catches up by itself: the poll asks for everything after
  // lastId and for the statuses of the latest messages).
  var SAFETY_POLL_MS = 30000;
  // "conversation.group": a group's name or members changed (only a group page's data-peer,
  // "group:<id>", is the peer of such an event; one-to-one pages never see one). The page
  // is drawn again, members and all, unless a message is being written there: that would
  // be lost, and sending it draws the page again anyway; the same while files go up.
  function groupChanged() {
    var box = document.getElementById("compose-text");
    if (box && box.value.trim()) return false;
    // nor while files are chosen or going up: reloading would drop them
    var busyLists = ["attach-staged", "uploads"].map(function (id) {
      return document.getElementById(id);
    });
    if (busyLists.some(function (list) { return list && !list.hidden; })) return false;
    window.location.reload();
    return true;
  }
  var streamOpen = false;
  var sincePoll = 0;
  var peer = root.dataset.peer;
  if (live) {
    list.lastElementChild && list.lastElementChild.scrollIntoView({ block: "end" });
    document.addEventListener("p2p:event", function (event) {
      var detail = event.detail || {};
      if (detail.kind.indexOf("conversation.") === 0 && detail.data && detail.data.peer === peer) {
        if (detail.kind === "conversation.group" && groupChanged()) return;
        sincePoll = 0;
        poll();
      }
    });
    document.addEventListener("p2p:stream", function (event) {
      var state = event.detail && event.detail.state;
      var wasOpen = streamOpen;
      streamOpen = state === "open";
      if ((state === "open" && !wasOpen) || state === "reset") poll(); // catch up
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll(); // what arrived while the tab was in the background
    });
    window.setInterval(function () {
      sincePoll += POLL_MS;
      if (!streamOpen || sincePoll >= SAFETY_POLL_MS) {
        sincePoll = 0;
        poll();
      } else {
        markShown();
      }
    }, POLL_MS);
  } else {
    window.setInterval(markShown, POLL_MS);
  }

  // --- sending files --------------------------------------------------------------------
  var attach = document.getElementById("attach");
  if (!attach || !window.FormData || !window.XMLHttpRequest) return; // the plain form stays

  var input = document.getElementById("attach-file");
  var stagedList = document.getElementById("attach-staged");
  var uploadsList = document.getElementById("uploads");
  var errorBox = document.getElementById("attach-error");
  var statusBox = document.getElementById("attach-status");
  var stagedTemplate = document.getElementById("staged-template");
  var uploadTemplate = document.getElementById("upload-template");
  var composeText = document.getElementById("compose-text");
  var attachToken = attach.querySelector('input[name="csrfmiddlewaretoken"]');
  var maxBytes = parseInt(attach.dataset.maxBytes, 10);
  var maxText = attach.dataset.maxText;
  var staged = []; // files chosen, not sent yet
  var queue = []; // uploads waiting for the one in progress
  var active = null; // the upload in progress
  var sentSome = false;

  input.multiple = true; // one file per request; this script sends several one by one
  attach.classList.add("attach--enhanced"); // the list below shows what is chosen

  function humanSize(bytes) {
    // As Django's filesizeformat, which draws the sizes in bubbles.
    if (bytes < 1024) return bytes + (bytes === 1 ? "\u00a0byte" : "\u00a0bytes");
    var units = ["KB", "MB", "GB", "TB", "PB"];
    var value = bytes / 1024;
    var unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return value.toFixed(1) + "\u00a0" + units[unit];
  }

  function quoted(file) {
    return "\u201c" + file.name + "\u201d";
  }

  function announce(text) {
    statusBox.textContent = text;
  }

  function showErrors(lines) {
    errorBox.textContent = lines.join(" ");
    errorBox.hidden = !lines.length;
  }

  function fromTemplate(template) {
    return template.content.firstElementChild.cloneNode(true);
  }

  // Files waiting to be sent.
  function stage(files) {
    var refused = [];
    var added = 0;
    each(files, function (file) {
      if (file.size > maxBytes) {
        refused.push(
          quoted(file) + " is too large to send (" + humanSize(file.size) + "): a file may be at most " + maxText + "."
        );
      } else if (file.size === 0) {
        refused.push(quoted(file) + " is empty.");
      } else {
        staged.push(file);
        added += 1;
      }
    });
    showErrors(refused);
    drawStaged();
    if (added) {
      announce((added === 1 ? "1 file" : added + " files") + " ready to send: press Send files.");
    }
  }

  function drawStaged() {
    stagedList.textContent = "";
    staged.forEach(function (file, index) {
      var row = fromTemplate(stagedTemplate);
      row.querySelector(".attach__name").textContent = file.name;
      row.querySelector(".attach__size").textContent = humanSize(file.size);
      var remove = row.querySelector(".attach__remove");
      remove.querySelector(".visually-hidden").textContent = " " + file.name;
      remove.addEventListener("click", function () {
        staged.splice(index, 1);
        drawStaged();
        announce(quoted(file) + " removed.");
        var next = stagedList.querySelector(".attach__remove");
        (next || input).focus();
      });
      stagedList.appendChild(row);
    });
    stagedList.hidden = !staged.length;
    // With files waiting, Send sends them and the text is their (optional) caption.
    if (composeText) composeText.required = !staged.length;
  }

  function sendStaged() {
    if (!staged.length) {
      showErrors(["Choose a file to send first."]);
      input.focus();
      return;
    }
    var caption = composeText ? composeText.value : "";
    var batch = { caption: caption.trim() ? caption : null, left: staged.length };
    if (batch.caption !== null) composeText.value = "";
    staged.forEach(function (file) { queue.push(queued(file, batch)); });
    staged = [];
    drawStaged();
    showErrors([]);
    next();
  }

  // Uploads, one at a time.
  function queued(file, batch) {
    var item = fromTemplate(uploadTemplate);
    var upload = { file: file, batch: batch, item: item, xhr: null, done: false };
    item.querySelector(".upload__name").textContent = file.name;
    item.querySelector(".upload__bar").setAttribute("aria-label", "Sending " + file.name);
    var cancel = item.querySelector(".upload__cancel");
    cancel.querySelector(".visually-hidden").textContent = " " + file.name;
    cancel.addEventListener("click", function () { cancelUpload(upload); });
    item.dataset.state = "waiting";
    uploadsList.appendChild(item);
    uploadsList.hidden = false;
    return upload;
  }

  function next() {
    if (active || !queue.length) return;
    active = queue.shift();
    start(active);
  }

  function start(upload) {
    var form = new FormData();
    form.append("file", upload.file, upload.file.name);
    var caption = upload.batch.caption;
    if (caption !== null) form.append("text", caption);
    var xhr = new XMLHttpRequest();
    upload.xhr = xhr;
    xhr.open("POST", attach.action);
    xhr.responseType = "json";
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", attachToken.value);
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) progress(upload, event.loaded / event.total);
    });
    xhr.addEventListener("load", function () {
      var answer = xhr.response;
      if (xhr.status === 201 && answer && answer.message) {
        if (caption !== null) upload.batch.caption = null; // it went with this file
        succeeded(upload, answer.message);
      } else if (answer && answer.error && answer.error.message) {
        failed(upload, answer.error.message);
      } else {
        failed(upload, "The server answered " + xhr.status + ". Reload the page and try again.");
      }
    });
    xhr.addEventListener("error", function () {
      failed(upload, "The connection was lost. Try again.");
    });
    xhr.addEventListener("abort", function () { cancelled(upload); });
    upload.item.dataset.state = "sending";
    progress(upload, 0);
    announce("Sending " + quoted(upload.file) + "\u2026");
    xhr.send(form);
  }

  function progress(upload, fraction) {
    var percent = Math.round(fraction * 100);
    upload.item.querySelector(".upload__bar").value = percent;
    upload.item.querySelector(".upload__percent").textContent = percent + "%";
  }

  function removeItem(upload) {
    var hadFocus = upload.item.contains(document.activeElement);
    upload.item.remove();
    uploadsList.hidden = !uploadsList.children.length;
    if (hadFocus) (uploadsList.querySelector(".upload__cancel") || input).focus();
  }

  function succeeded(upload, message) {
    sentSome = true;
    scrollToId = message.id;
    removeItem(upload);
    announce(quoted(upload.file) + " sent.");
    finished(upload);
    if (live) poll(); // the message appears now, drawn by the server like any other
  }

  function failed(upload, text) {
    upload.item.dataset.state = "failed";
    upload.item.querySelector(".upload__bar").hidden = true;
    upload.item.querySelector(".upload__percent").textContent = "not sent";
    var error = upload.item.querySelector(".upload__error");
    error.textContent = text;
    error.hidden = false;
    var cancel = upload.item.querySelector(".upload__cancel");
    cancel.firstChild.textContent = "Dismiss";
    announce(quoted(upload.file) + " was not sent: " + text);
    finished(upload);
  }

  function cancelled(upload) {
    removeItem(upload);
    announce("Sending " + quoted(upload.file) + " cancelled.");
    finished(upload);
  }

  function cancelUpload(upload) {
    if (upload === active) {
      upload.xhr.abort(); // cancelled() follows
    } else if (upload.done) {
      removeItem(upload); // a failed one, dismissed
    } else {
      queue.splice(queue.indexOf(upload), 1);
      cancelled(upload);
    }
  }

  function finished(upload) {
    upload.done = true;
    upload.batch.left -= 1;
    if (upload === active) active = null;
    if (!upload.batch.left && upload.batch.caption !== null && composeText) {
      // No file of the batch was sent: its caption goes back where it was typed.
      var typed = composeText.value;
      composeText.value = upload.batch.caption + (typed ? "\n" + typed : "");
    }
    if (!active && !queue.length && sentSome && !live) {
      window.location.assign(latestUrl); // an older page does not poll: show the latest
      return;
    }
    next();
  }

  input.addEventListener("change", function () {
    stage(input.files);
    input.value = ""; // the list above holds them now
  });

  attach.addEventListener("submit", function (event) {
    event.preventDefault();
    if (input.files.length) { stage(input.files); input.value = ""; }
    sendStaged();
  });

  if (composeText && composeText.form) {
    composeText.form.addEventListener("submit", function (event) {
      if (!staged.length) return; // a plain text message
      event.preventDefault();
      sendStaged();
    });
  }

  // Dropping files anywhere on the conversation attaches them; elsewhere on the page a
  // dropped file must not replace the page (and any upload in progress).
  function carriesFiles(event) {
    var types = event.dataTransfer && event.dataTransfer.types;
    return !!types && Array.prototype.indexOf.call(types, "Files") !== -1;
  }

  var dragDepth = 0;
  root.addEventListener("dragenter", function (event) {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth += 1;
    root.classList.add("conversation--drop");
  });
  root.addEventListener("dragleave", function (event) {
    if (!carriesFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) root.classList.remove("conversation--drop");
  });
  root.addEventListener("drop", function (event) {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    root.classList.remove("conversation--drop");
    stage(event.dataTransfer.files);
  });
  ["dragover", "drop"].forEach(function (type) {
    window.addEventListener(type, function (event) {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      if (type === "dragover") {
        event.dataTransfer.dropEffect = root.contains(event.target) ? "copy" : "none";
      }
    });
  });

  // Pasting an image (a screenshot) attaches it; a paste that carries text stays a text
  // paste (a spreadsheet's cells come with a picture of them too).
  document.addEventListener("paste", function (event) {
    var data = event.clipboardData;
    if (!data || !data.files || !data.files.length) return;
    if (Array.prototype.indexOf.call(data.types, "text/plain") !== -1) return;
    event.preventDefault();
    stage(data.files);
  });
})();
