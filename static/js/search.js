// The search page: searching as one types. The box's input, debounced, asks the same view
// for its results (?rows=1: {"html", "more_url", "count"}, drawn by the same row template
// as the page) and puts them in the list as they are: the server escaped every value.
// Only the answer to the latest input is drawn (older requests are aborted). The address
// bar follows (history.replaceState), so Back and a reload show the same search. Without
// JavaScript the form submits and the page draws the same rows.
(function () {
  "use strict";
  var form = document.querySelector(".page--search .search-form");
  var list = document.getElementById("search-results");
  var status = document.getElementById("search-status");
  var more = document.getElementById("search-more");
  if (!form || !list || !window.fetch) return;
  var input = form.querySelector('input[name="q"]');
  var withInput = form.querySelector('input[name="with"]');
  var rowsUrl = form.dataset.rowsUrl;

  var DEBOUNCE_MS = 200;
  var timer = null;
  var controller = null;
  var lastAsked = input.value;

  function formatTime(ms) {
    var d = new Date(ms);
    if (isNaN(d.getTime())) return null;
    var options = { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
    if (d.getFullYear() !== new Date().getFullYear()) options.year = "numeric";
    return d.toLocaleString([], options);
  }

  function localTimes() {
    var times = list.querySelectorAll("time[data-ms]");
    for (var i = 0; i < times.length; i++) {
      var text = formatTime(parseInt(times[i].dataset.ms, 10));
      if (text) {
        times[i].title = times[i].textContent; // the server's UTC time, on hover
        times[i].textContent = text;
      }
    }
  }

  function params(q) {
    var p = new URLSearchParams();
    if (withInput) p.set("with", withInput.value);
    p.set("q", q);
    return p;
  }

  function draw(answer, q) {
    // The server's own template output, every value escaped there.
    list.innerHTML = answer.html;
    list.hidden = answer.count === 0;
    localTimes();
    if (answer.more_url) {
      more.href = answer.more_url;
      more.hidden = false;
    } else {
      more.hidden = true;
      more.removeAttribute("href");
    }
    if (!q.trim()) status.textContent = "";
    else if (answer.count === 0) status.textContent = "No messages match.";
    else status.textContent = answer.count + (answer.more_url ? "+" : "") + (answer.count === 1 ? " message found." : " messages found.");
    history.replaceState(null, "", "?" + params(q).toString());
  }

  function ask() {
    var q = input.value;
    if (q === lastAsked) return;
    lastAsked = q;
    if (controller) controller.abort();
    controller = new AbortController();
    var p = params(q);
    p.set("rows", "1");
    fetch(rowsUrl + "?" + p.toString(), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      signal: controller.signal,
    })
      .then(function (response) {
        if (response.status === 401 || response.redirected) {
          throw new Error("logged out");
        }
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (answer) {
        if (input.value === q) draw(answer, q);
      })
      .catch(function (error) {
        if (error.name === "AbortError") return;
        lastAsked = null; // ask again on the next keystroke
        status.textContent = error.message === "logged out"
          ? "Your session has ended: reload the page to log in again."
          : "Search is not available right now; press Enter to try again.";
      });
  }

  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(ask, DEBOUNCE_MS);
  });
  localTimes();
  // Typing continues where it was: the cursor at the end of the box.
  if (document.activeElement !== input && !location.hash) {
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }
})();
