// The main flows in Debian's Firefox ESR, driven over WebDriver BiDi by puppeteer-core
// (never a downloaded browser). tests/test_firefox.py starts a real network and runs
//
//     node tests/firefox/flows.mjs < input.json
//
// input.json: {"base_url", "username", "password", "code", "peer", "received_text",
// "sent_text", "live_text", "wait_ms", "pushed_ms", "artifacts" (a folder for a screenshot
// when a step fails, or null)}. Secrets come on stdin, never in the command line.
//
// The script logs in through the real forms (password, then the code), checks the
// conversations home (the peer's row with one unread message), opens the conversation,
// sends sent_text through the compose form, then prints {"event": "waiting"} and waits,
// without reloading, for live_text, which the test has the peer send once it reads that
// line. Every line of stdout is one JSON object; the last says "done" (exit 0) or "failed"
// with the step and the error (exit 1). Every wait is bounded by wait_ms (pushed_ms for
// the pushed message).

import { mkdirSync } from "node:fs";
import path from "node:path";

import puppeteer from "puppeteer-core";

const FIREFOX = "/usr/bin/firefox-esr";

function say(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

class FlowError extends Error {}

function check(condition, message) {
  if (!condition) throw new FlowError(message);
}

const input = await readStdin();
const waitMs = input.wait_ms ?? 15000;
const pushedMs = input.pushed_ms ?? 8000;
const base = input.base_url.replace(/\/$/, "");
const facts = { dialogs: [], console_errors: [] };
let step = "launch";
let browser = null;
let page = null;

function pathOf(url) {
  return new URL(url).pathname;
}

// The page's own text, for a clear failure message when a wait ends.
async function mainText() {
  try {
    return (await page.$eval("main", (m) => m.innerText)).slice(0, 500);
  } catch {
    return "(no main element)";
  }
}

async function submitAndWait(buttonSelector) {
  await Promise.all([
    page.waitForNavigation({ waitUntil: "load", timeout: waitMs }),
    page.click(buttonSelector),
  ]);
}

// The pages set data-stream="open" on <body> once the event stream is open (live.js).
async function waitForStream() {
  await page.waitForSelector('body[data-stream="open"]', { timeout: waitMs });
}

async function bubbleWithText(direction, text, timeout) {
  await page.waitForFunction(
    (dir, t) =>
      Array.from(document.querySelectorAll(`.bubble--${dir} .bubble__text`)).some((e) =>
        e.textContent.includes(t),
      ),
    { timeout, polling: 100 },
    direction,
    text,
  );
}

async function run() {
  browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
    timeout: waitMs * 2,
    protocolTimeout: waitMs * 2,
  });
  facts.browser = await browser.version();
  page = await browser.newPage();
  page.setDefaultTimeout(waitMs);
  page.on("dialog", async (dialog) => {
    facts.dialogs.push(dialog.message());
    await dialog.dismiss();
  });
  page.on("console", (message) => {
    if (message.type() === "error") facts.console_errors.push(message.text());
  });

  step = "password";
  const login = await page.goto(`${base}/login/`, { waitUntil: "load", timeout: waitMs });
  check(login && login.status() === 200, `GET /login/ answered ${login && login.status()}`);
  await page.type("#id_username", input.username);
  await page.type("#id_password", input.password);
  await submitAndWait('main button[type="submit"]');
  check(
    pathOf(page.url()) === "/login/code/",
    `the password step led to ${page.url()}: ${await mainText()}`,
  );
  say("step", { name: step });

  step = "code";
  await page.type("#id_code", input.code);
  await submitAndWait('main button[type="submit"]');
  check(
    pathOf(page.url()) === "/chats/",
    `the code step led to ${page.url()}, not the conversations home: ${await mainText()}`,
  );
  say("step", { name: step });

  step = "conversations home";
  const heading = await page.$eval("h1", (h) => h.textContent.trim());
  check(heading === "Conversations", `the home's heading is "${heading}"`);
  const row = `li.chat-row[data-peer="${input.peer}"]`;
  await page.waitForSelector(row, { timeout: waitMs });
  facts.home_row = await page.$eval(row, (li) => ({
    unread: li.dataset.unread,
    last: li.querySelector(".chat-row__last").textContent.trim(),
  }));
  check(facts.home_row.unread === "1", `the peer's row shows ${facts.home_row.unread} unread`);
  check(
    facts.home_row.last.includes(input.received_text),
    `the peer's row shows "${facts.home_row.last}"`,
  );
  await waitForStream();
  say("step", { name: step });

  step = "open the conversation";
  await Promise.all([
    page.waitForNavigation({ waitUntil: "load", timeout: waitMs }),
    page.click(`${row} a.chat-row__link`),
  ]);
  check(
    pathOf(page.url()) === `/chat/${input.peer}/`,
    `the row led to ${page.url()}: ${await mainText()}`,
  );
  await bubbleWithText("in", input.received_text, waitMs);
  await waitForStream();
  say("step", { name: step });

  step = "send";
  await page.type("#compose-text", input.sent_text);
  await submitAndWait('form.compose button[type="submit"]');
  check(
    pathOf(page.url()) === `/chat/${input.peer}/`,
    `sending led to ${page.url()}: ${await mainText()}`,
  );
  await bubbleWithText("out", input.sent_text, waitMs);
  await waitForStream();
  say("step", { name: step });

  step = "live update";
  // A reload would drop this mark: the message must come into this very document.
  await page.evaluate(() => {
    window.p2pFirefoxMark = "unchanged";
  });
  say("waiting", { text: input.live_text });
  const waited = Date.now();
  await bubbleWithText("in", input.live_text, pushedMs);
  facts.live_ms = Date.now() - waited;
  const mark = await page.evaluate(() => window.p2pFirefoxMark);
  check(mark === "unchanged", "the page reloaded instead of showing the message live");
  facts.title = await page.title();
  say("step", { name: step });
}

let ok = false;
try {
  await run();
  ok = facts.dialogs.length === 0;
  if (!ok) say("failed", { step: "dialogs", error: `a dialog opened: ${facts.dialogs[0]}` });
} catch (error) {
  say("failed", { step, error: `${error.name}: ${error.message}`, text: page ? await mainText() : "" });
  if (page && input.artifacts) {
    try {
      mkdirSync(input.artifacts, { recursive: true });
      await page.screenshot({ path: path.join(input.artifacts, "firefox-failed.png") });
    } catch (screenshotError) {
      say("note", { error: `no screenshot: ${screenshotError.message}` });
    }
  }
} finally {
  if (browser) await browser.close().catch(() => {});
}
if (ok) say("done", facts);
process.exit(ok ? 0 : 1);
