// The gateway's web client (GET /) in a real Chromium, two users in two
// browser contexts: chatting, typing, read receipts, payment / dispute /
// job-update messages, edits and deletions, a gateway killed and started
// again mid-conversation, markup shown as text, search, the contact guard
// (flagged, masked and blocked messages), presence (online, then offline
// with the time last seen), phone width, keyboard use and an axe-core
// accessibility check. Each state is saved as a screenshot
// in tests/browser/screenshots/ (ignored by git).
//
// Runs the real binaries from the Cargo target directory, each test on an
// SQLite file of its own. Needs Chromium (`apt-get install chromium`;
// CHROMIUM overrides the path) and `npm ci` in this folder; scripts/test
// does both.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { stack, until } from "../client/stack.mjs";

const shots = join(import.meta.dirname, "screenshots");
mkdirSync(shots, { recursive: true });
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

async function launch(t) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  t.after(() => browser.close());
  return browser;
}

/**
 * A signed-in page in a browser context of its own. Fails the test on
 * anything the Content Security Policy blocks, any page error, and any
 * dialog (a `<script>` message must never run).
 */
async function person(t, browser, base, token, { viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
  t.after(() => context.close());
  const page = await context.newPage();
  page.problems = [];
  page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) page.problems.push(message.text());
  });
  page.on("pageerror", (error) => page.problems.push(String(error)));
  page.on("dialog", (dialog) => {
    page.problems.push(`dialog: ${dialog.message()}`);
    dialog.dismiss();
  });
  const answer = await page.goto(base);
  assert.match(answer.headers()["content-security-policy"], /script-src 'self'/);
  if (token) {
    await page.fill("#token", token);
    // Keyboard only: from the token field to the button, Enter.
    await page.press("#token", "Tab");
    await page.keyboard.press("Enter");
    await page.waitForSelector("#conn[data-state=connected]");
  }
  return page;
}

const shot = (page, name) => page.screenshot({ path: join(shots, `${name}.png`) });

/** The texts of the text messages on the page, in order. */
const texts = (page) => page.$$eval("#log .msg .text", (nodes) => nodes.map((n) => n.textContent));

/** Runs axe-core in the page; returns its serious and critical violations. */
async function accessibility(page) {
  // Evaluated through the DevTools protocol, so the page's CSP (rightly)
  // does not apply to the checker, and nothing about the page changes.
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ["violations"] }));
  return result.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join("; ")})`);
}

async function openThread(page, threadId) {
  await page.click(`.thread[data-id="${threadId}"]`);
  await page.waitForSelector("#thread-view:not([hidden])");
  // The log is busy until the thread's messages are loaded and shown.
  await page.waitForSelector("#log:not([aria-busy])");
}

test("two people chat: typing, read receipts, typed messages, edit and delete, markup as text", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const browser = await launch(t);
  const aliceToken = s.token("alice");
  const bobToken = s.token("bob");

  // Sign-in refuses a malformed token in place.
  const alice = await person(t, browser, `${gateway.url}/`, null);
  await shot(alice, "01-sign-in");
  await alice.fill("#token", "not a token");
  await alice.click("#signin-form button");
  assert.match(await alice.textContent("#signin-error"), /not a valid token/);
  await alice.fill("#token", aliceToken);
  await alice.click("#signin-form button");
  await alice.waitForSelector("#conn[data-state=connected]");
  assert.equal(await alice.textContent("#me-name"), "alice");

  // Alice starts a thread about a job.
  await alice.click("#new-thread-box summary");
  await alice.fill("#nt-participants", "bob");
  await alice.fill("#nt-job", "job-42");
  await alice.fill("#nt-title", "Logo design");
  await alice.click("#new-thread button");
  await alice.waitForSelector("#thread-view:not([hidden])");
  assert.equal(await alice.textContent("#thread-title"), "Logo design");
  assert.match(await alice.textContent("#thread-sub"), /With bob · Job job-42/);
  const threadId = await alice.getAttribute(".thread.active", "data-id");
  await alice.fill("#text", "Hi Bob, here is the brief for the logo.");
  await alice.press("#text", "Enter");
  await alice.fill("#text", "<script>alert('x')</script> <b>bold?</b>");
  await alice.press("#text", "Enter");
  await until(async () => (await alice.$$("#log .msg .status.sent, #log .msg .status.delivered")).length === 2, "alice's two stored");

  // Bob's list shows the thread with its job and unread count.
  const bob = await person(t, browser, `${gateway.url}/`, bobToken);
  await bob.waitForSelector(`.thread[data-id="${threadId}"] .unread`);
  assert.equal(await bob.textContent(`.thread[data-id="${threadId}"] .unread`), "2");
  assert.equal(await bob.textContent(`.thread[data-id="${threadId}"] .job-chip`), "Job job-42");
  await shot(bob, "02-thread-list-unread");
  await openThread(bob, threadId);
  assert.deepEqual(await texts(bob), ["Hi Bob, here is the brief for the logo.", "<script>alert('x')</script> <b>bold?</b>"]);
  assert.equal(await bob.$$eval("#log script, #log b", (n) => n.length), 0, "markup arrived as text");
  // Bob read them: alice sees "Read" on both, and bob's badge is gone.
  await alice.waitForFunction(() => document.querySelectorAll("#log .msg.mine .status.read").length === 2);
  await bob.waitForSelector(`.thread[data-id="${threadId}"] .unread`, { state: "detached" });

  // Typing shows on the other side, and goes when bob sends.
  await bob.focus("#text");
  await bob.keyboard.type("Thanks! I'll send drafts by Friday", { delay: 20 });
  await alice.waitForFunction(() => document.getElementById("typing").textContent === "bob is typing…");
  await shot(alice, "03-typing");
  await bob.keyboard.press("Enter");
  await alice.waitForFunction(() => document.getElementById("typing").textContent === "");
  await alice.waitForFunction(() => [...document.querySelectorAll("#log .msg .text")].some((n) => n.textContent.startsWith("Thanks!")));

  // A payment with a mistake: the error shows next to the amount.
  await alice.click("#actions-toggle");
  await alice.fill("#pay-amount", "12.345");
  await alice.click("#pay-form button");
  await alice.waitForSelector("#pay-amount[aria-invalid=true]");
  assert.match(await alice.textContent("#pay-amount-error"), /positive decimal string with at most 2 decimals/);
  await shot(alice, "04-payment-error-in-place");
  await alice.fill("#pay-amount", "250.00");
  await alice.fill("#pay-currency", "eur");
  await alice.click("#pay-form button");
  await alice.waitForSelector("#actions", { state: "hidden" });

  // A dispute and a job update from the integration routes.
  const dispute = await s.api(gateway.url, bobToken, "POST", `/threads/${threadId}/create-dispute/`,
    { reason: "Deadline missed", details: "The first draft was due Monday." });
  assert.equal(dispute.status, 201);
  const update = await s.api(gateway.url, bobToken, "POST", `/threads/${threadId}/job-update/`,
    { job_id: "job-42", status: "completed", note: "Final files delivered" });
  assert.equal(update.status, 201);
  for (const page of [alice, bob]) {
    await page.waitForSelector("#log .card.job-update");
    const cards = await page.$$eval("#log .card", (nodes) => nodes.map((n) => [n.dataset.type, n.querySelector(".card-kind").textContent]));
    assert.deepEqual(cards, [["payment", "Payment requested"], ["dispute", "Dispute opened"], ["job_update", "Job update"]]);
    assert.match(await page.textContent("#log .card.payment .amount"), /250\.00/);
    assert.equal(await page.textContent("#log .card.payment .currency"), "EUR");
    assert.equal(await page.textContent("#log .card.dispute .reason"), "Deadline missed");
    assert.equal(await page.textContent("#log .card.job-update .status-badge"), "completed");
    // They look different from text messages and from each other.
    const colours = await page.$$eval("#log .card", (nodes) => nodes.map((n) => getComputedStyle(n).borderLeftColor));
    assert.equal(new Set(colours).size, 3);
  }
  await shot(bob, "05-typed-messages");

  // Alice edits her first message (Esc cancels, Enter saves), then deletes
  // the markup one; bob sees both.
  const first = alice.locator("#log .msg.mine").first();
  await first.hover();
  await first.getByRole("button", { name: "Edit message" }).click();
  await alice.fill("#edit-text", "never mind");
  await alice.press("#edit-text", "Escape");
  await alice.waitForSelector("#edit-text", { state: "detached" });
  assert.equal((await texts(alice))[0], "Hi Bob, here is the brief for the logo.");
  await first.hover();
  await first.getByRole("button", { name: "Edit message" }).click();
  await alice.fill("#edit-text", "Hi Bob, here is the updated brief.");
  await shot(alice, "06-editing");
  await alice.press("#edit-text", "Enter");
  await bob.waitForFunction(() => document.querySelector("#log .msg .text").textContent === "Hi Bob, here is the updated brief.");
  assert.equal(await bob.textContent("#log .msg .edited"), "edited");
  const second = alice.locator("#log .msg.mine").nth(1);
  await second.hover();
  await second.getByRole("button", { name: "Delete message" }).click();
  await second.getByRole("button", { name: "Delete message" }).click();
  await bob.waitForSelector("#log .bubble.deleted");
  assert.equal(await bob.textContent("#log .bubble.deleted .text"), "This message was deleted");
  assert.deepEqual(await texts(bob), [
    "Hi Bob, here is the updated brief.", "This message was deleted", "Thanks! I'll send drafts by Friday",
  ]);
  await shot(bob, "07-edited-and-deleted");
  await shot(alice, "08-conversation");

  // Nothing serious for axe, in the list and the open thread.
  assert.deepEqual(await accessibility(alice), []);
  await alice.click("#actions-toggle");
  assert.deepEqual(await accessibility(alice), [], "with the action forms open");
  for (const page of [alice, bob]) assert.deepEqual(page.problems, []);
});

test("a gateway restarted mid-conversation: the page shows it, keeps what is typed, and shows every message once", async (t) => {
  const s = await stack(t);
  // Alice's page is served by the gateway that dies; bob's by another.
  const first = await s.gateway();
  const second = await s.gateway();
  const browser = await launch(t);
  const thread = await s.api(first.url, s.token("alice"), "POST", "/threads/", { participants: ["bob"], job_id: "job-9", title: "Bathroom tiles" });
  const threadId = thread.json.id;
  const alice = await person(t, browser, `${first.url}/`, s.token("alice"));
  const bob = await person(t, browser, `${second.url}/`, s.token("bob"));
  await openThread(alice, threadId);
  await alice.fill("#text", "Tiles arrive Tuesday");
  await alice.press("#text", "Enter");
  await bob.waitForSelector(`.thread[data-id="${threadId}"]`);
  await openThread(bob, threadId);
  await bob.waitForSelector("#log .msg .text");

  await first.kill();
  await alice.waitForSelector("#banner:not([hidden])");
  await alice.waitForFunction(() => /^Reconnecting in \d+ s|^Reconnecting…/.test(document.getElementById("conn").textContent));
  // Bob carries on; alice writes while offline (kept, shown as sending).
  for (const text of ["Great, I'll be home", "Can you bring grout too?"]) {
    await bob.fill("#text", text);
    await bob.press("#text", "Enter");
  }
  await alice.fill("#text", "Sure, grout too");
  await alice.press("#text", "Enter");
  await alice.waitForSelector("#log .msg.mine .status.sending");
  await alice.fill("#text", "half-typed draft");
  await shot(alice, "09-reconnecting");

  const restarted = await s.gateway(first.addr);
  assert.equal(restarted.addr, first.addr);
  await alice.waitForSelector("#conn[data-state=connected]", { timeout: 20000 });
  await alice.waitForSelector("#banner", { state: "hidden" });
  const want = ["Tiles arrive Tuesday", "Great, I'll be home", "Can you bring grout too?", "Sure, grout too"];
  await alice.waitForFunction((n) => document.querySelectorAll("#log .msg .status.sending").length === 0
    && document.querySelectorAll("#log .msg .text").length >= n, want.length);
  await bob.waitForFunction((n) => document.querySelectorAll("#log .msg .text").length >= n, want.length);
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(await texts(alice), want, "each message once, in order");
  assert.deepEqual(await texts(bob), want);
  assert.equal(await alice.inputValue("#text"), "half-typed draft", "no input lost");
  await shot(alice, "10-recovered");
  for (const page of [alice, bob]) assert.deepEqual(page.problems, []);
});

test("phone width: list, thread and back, by a link that signs in; no serious accessibility violations", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const browser = await launch(t);
  const aliceToken = s.token("alice");
  const thread = await s.api(gateway.url, aliceToken, "POST", "/threads/", { participants: ["bob"], job_id: "job-7", title: "Garden fence" });
  const bobToken = s.token("bob");
  // Earlier history, more than one page (50): older pages load on scroll.
  for (let i = 1; i <= 50; i++) {
    const sent = await s.api(gateway.url, i % 2 ? bobToken : aliceToken, "POST", `/threads/${thread.json.id}/messages/`, { content: `earlier ${i}` });
    assert.equal(sent.status, 201);
  }
  for (const content of ["Hello! Is the fence quote still valid?", "\u202Egnp.exe", "A much longer message to see how wrapping works on a narrow screen, with enough words to take several lines."]) {
    await s.api(gateway.url, bobToken, "POST", `/threads/${thread.json.id}/messages/`, { content });
  }
  await s.api(gateway.url, bobToken, "POST", `/threads/${thread.json.id}/initiate-payment/`, { amount: "1200.00", currency: "USD", job_id: "job-7" });

  // The link scripts/run prints: the token travels in the fragment.
  const phone = { width: 390, height: 844 };
  const page = await person(t, browser, `${gateway.url}/#token=${aliceToken}`, null, { viewport: phone });
  await page.waitForSelector("#conn[data-state=connected]");
  assert.equal(new URL(page.url()).hash, "", "the token leaves the address bar");
  await page.waitForSelector(`.thread[data-id="${thread.json.id}"] .unread`);
  assert.equal(await page.isVisible("#conversation"), false, "one pane at a time");
  await shot(page, "11-phone-list");
  assert.deepEqual(await accessibility(page), []);

  await openThread(page, thread.json.id);
  assert.equal(await page.isVisible("#sidebar"), false);
  await page.waitForSelector("#log .card.payment");
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= phone.width, `no sideways scrolling (${width}px)`);
  // A right-to-left override stays inside its own message.
  const isolatedText = await page.$$eval("#log .msg .text", (nodes) => nodes.map((n) => [n.dir, getComputedStyle(n).unicodeBidi]));
  assert.deepEqual(isolatedText, Array(isolatedText.length).fill(["auto", "isolate"]));
  assert.equal((await texts(page)).length, 49, "the newest page: 46 earlier, 3 new, the payment");
  assert.equal(await page.textContent("#log .log-note"), "Scroll up for earlier messages");
  // Scrolling to the top pages in the rest, once each, in order.
  await page.$eval("#log", (log) => { log.scrollTop = 0; });
  await page.waitForFunction(() => document.querySelectorAll("#log .msg .text").length === 53);
  const all = await texts(page);
  assert.deepEqual(all.slice(0, 50), Array.from({ length: 50 }, (_, i) => `earlier ${i + 1}`));
  assert.equal(await page.textContent("#log .log-note"), "This is the start of the conversation");
  assert.deepEqual(await page.$$eval("#log .day", (days) => days.map((d) => d.textContent)), ["Today"]);
  await page.$eval("#log", (log) => { log.scrollTop = log.scrollHeight; });
  await page.fill("#text", "Yes, still valid");
  await page.press("#text", "Enter");
  await page.waitForSelector("#log .msg.mine .status.sent, #log .msg.mine .status.read");
  await shot(page, "12-phone-thread");
  assert.deepEqual(await accessibility(page), []);

  await page.click("#back");
  await page.waitForSelector("#sidebar", { state: "visible" });
  assert.equal(await page.isVisible(`.thread[data-id="${thread.json.id}"] .unread`), false, "read on opening");

  // Search at phone width: the results fill the list's pane, a result
  // opens the thread at the message, and back returns to the results.
  await page.fill("#search-q", "fence quo");
  await page.press("#search-q", "Enter");
  await page.waitForSelector("#search-list .hit");
  assert.equal(await page.textContent("#search-status"), "1 message found.");
  assert.deepEqual(await page.$$eval("#search-list mark", (marks) => marks.map((m) => m.textContent)), ["fence", "quote"]);
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth) <= phone.width, "no sideways scrolling");
  await shot(page, "19-phone-search");
  assert.deepEqual(await accessibility(page), []);
  await page.click("#search-list .hit");
  await page.waitForSelector("#log .msg.found");
  assert.equal(await page.isVisible("#sidebar"), false);
  assert.equal(await page.textContent("#log .msg.found .text"), "Hello! Is the fence quote still valid?");
  await page.click("#back");
  await page.waitForSelector("#search-list .hit", { state: "visible" });
  assert.deepEqual(page.problems, []);
});

test("search finds a message in another thread and opens it there; the contact guard flags, masks and blocks", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const browser = await launch(t);
  const aliceToken = s.token("alice");
  const bobToken = s.token("bob");
  const service = s.token("jobs", { role: "service" });
  const create = async (body) => (await s.api(gateway.url, aliceToken, "POST", "/threads/", body)).json.id;
  const logo = await create({ participants: ["bob"], job_id: "job-42", title: "Logo design" });
  const kitchen = await create({ participants: ["bob"], job_id: "job-7", title: "Kitchen remodel" });
  const post = async (token, threadId, content) => {
    for (;;) {
      const sent = await s.api(gateway.url, token, "POST", `/threads/${threadId}/messages/`, { content });
      // Faster than the gateway's per-user send rate: wait and go on.
      if (sent.status === 429) {
        await new Promise((r) => setTimeout(r, 250));
        continue;
      }
      assert.equal(sent.status, 201);
      return;
    }
  };
  // The match sits in the logo thread, 60 messages back: more than the
  // first page the page loads.
  await post(bobToken, logo, "The invoice for the first draft is attached");
  for (let i = 1; i <= 60; i++) await post(i % 2 ? aliceToken : bobToken, logo, `logo note ${i}`);
  // 22 matches in the kitchen thread: more than a page of results.
  for (let i = 1; i <= 22; i++) await post(bobToken, kitchen, `Tile sample ${i} is ready`);

  const alice = await person(t, browser, `${gateway.url}/`, aliceToken);
  await openThread(alice, kitchen);
  await alice.waitForSelector("#log .msg .text");

  // Too short: said in place, nothing searched.
  await alice.fill("#search-q", "i");
  await alice.press("#search-q", "Enter");
  assert.equal(await alice.textContent("#search-error"), "Type at least 2 characters to search.");
  assert.equal(await alice.getAttribute("#search-q", "aria-invalid"), "true");
  await shot(alice, "13-search-too-short");

  // A word from another thread, in another case: found, with the
  // thread's title and job, the word marked; clicking opens it there.
  await alice.fill("#search-q", "INVOICE");
  await alice.press("#search-q", "Enter");
  await alice.waitForSelector("#search-list .hit");
  assert.equal(await alice.textContent("#search-error"), "");
  assert.equal(await alice.textContent("#search-status"), "1 message found.");
  assert.equal(await alice.isVisible("#threads"), false, "the results take the list's place");
  const hit = alice.locator("#search-list .hit");
  assert.equal(await hit.locator(".name").textContent(), "Logo design");
  assert.equal(await hit.locator(".job-chip").textContent(), "Job job-42");
  assert.equal(await hit.locator(".hit-body").textContent(), "bob: The invoice for the first draft is attached");
  assert.deepEqual(await hit.locator("mark").allTextContents(), ["invoice"]);
  await shot(alice, "14-search-results");
  assert.deepEqual(await accessibility(alice), [], "with search results");
  // Keyboard: Tab from the box to the result, Enter opens it.
  await alice.focus("#search-q");
  let focused = "";
  for (let i = 0; i < 4 && focused !== "hit"; i++) {
    await alice.keyboard.press("Tab");
    focused = await alice.evaluate(() => document.activeElement.className);
  }
  assert.equal(focused, "hit");
  await alice.keyboard.press("Enter");
  await alice.waitForSelector("#log .msg.found");
  assert.equal(await alice.textContent("#thread-title"), "Logo design");
  assert.equal(await alice.textContent("#log .msg.found .text"), "The invoice for the first draft is attached");
  assert.equal(await alice.evaluate(() => document.activeElement.classList.contains("found")), true, "focus is on it");
  const inView = await alice.$eval("#log .msg.found", (row) => {
    const box = row.getBoundingClientRect();
    const log = document.getElementById("log").getBoundingClientRect();
    return box.top >= log.top && box.bottom <= log.bottom;
  });
  assert.equal(inView, true, "scrolled into view");
  assert.equal((await texts(alice)).length, 61, "the older pages were loaded to reach it");
  await shot(alice, "15-search-opened");

  // More results than a page: "More results" loads the rest.
  await alice.fill("#search-q", "tile sam");
  await alice.press("#search-q", "Enter");
  await alice.waitForFunction(() => document.getElementById("search-status").textContent === "20 messages found, more available.");
  await alice.click("#search-more");
  await alice.waitForFunction(() => document.getElementById("search-status").textContent === "22 messages found.");
  const samples = await alice.$$eval("#search-list .hit-text", (nodes) => nodes.map((n) => n.textContent));
  assert.deepEqual(samples, Array.from({ length: 22 }, (_, i) => `Tile sample ${22 - i} is ready`));
  assert.equal(await alice.isVisible("#search-more"), false);
  // Escape clears it and the thread list is back.
  await alice.press("#search-q", "Escape");
  await alice.waitForSelector("#threads", { state: "visible" });
  assert.equal(await alice.inputValue("#search-q"), "");

  // The contact guard. Flag (the default): shown as sent, with a warning.
  const bob = await person(t, browser, `${gateway.url}/`, bobToken);
  await openThread(bob, logo);
  await openThread(alice, logo);
  await bob.fill("#text", "Mail me at bob.builder@example.com");
  await bob.press("#text", "Enter");
  await alice.waitForFunction(() => [...document.querySelectorAll("#log .msg")].at(-1)?.querySelector(".text")?.textContent === "Mail me at bob.builder@example.com");
  assert.equal(await alice.locator("#log .msg").last().locator(".flag").textContent(), "⚠Contact details detected: email address");
  await bob.waitForFunction(() => [...document.querySelectorAll("#log .msg.mine")].at(-1)?.querySelector(".flag"));
  await shot(alice, "16-contact-flagged");

  // Mask, set by a service: the other side sees a placeholder, as text.
  const set = async (policy) => {
    const answer = await s.api(gateway.url, service, "PUT", `/threads/${logo}/contact-policy/`, { policy });
    assert.equal(answer.status, 200);
  };
  await set("mask");
  await bob.fill("#text", "Or call +1 415 555 0134 <b>today</b>");
  await bob.press("#text", "Enter");
  await alice.waitForFunction(() => [...document.querySelectorAll("#log .msg")].at(-1)?.querySelector(".masked"));
  assert.equal(await alice.locator("#log .msg").last().locator(".text").textContent(), "Or call [contact hidden] <b>today</b>");
  assert.deepEqual(await alice.locator("#log .msg").last().locator(".text *").evaluateAll((nodes) => nodes.map((n) => [n.tagName, n.className, n.textContent])),
    [["SPAN", "masked", "[contact hidden]"]]);
  assert.equal(await alice.locator("#log .msg").last().locator(".flag").textContent(), "⚠Contact details hidden: phone number");
  // On opening the thread again its policy is shown.
  await openThread(alice, kitchen);
  await openThread(alice, logo);
  await alice.waitForFunction(() => document.getElementById("thread-policy").textContent === "Contact details are hidden in this conversation.");
  await shot(alice, "17-contact-masked");

  // Block: the sender's message is refused in place, and nothing arrives.
  await set("block");
  await bob.fill("#text", "Text me: bob.builder@example.com");
  await bob.press("#text", "Enter");
  await bob.waitForSelector("#log .msg.blocked");
  assert.equal(await bob.textContent("#log .msg.blocked .send-error"),
    "This message was not sent: it contains contact details (email address).");
  assert.equal(await bob.textContent("#log .msg.blocked .status"), "! Not sent");
  assert.match(await bob.textContent("#composer-error"), /^Your message was not sent: it contains contact details \(email address\)\.$/);
  await bob.waitForFunction(() => document.getElementById("thread-policy").textContent === "Messages with contact details are not sent in this conversation.");
  await shot(bob, "18-contact-blocked");
  assert.deepEqual(await accessibility(bob), [], "with a blocked message");
  // Edit puts the text back in the composer; the refused echo goes.
  await bob.locator("#log .msg.blocked").getByRole("button", { name: "Edit and send again" }).click();
  await bob.waitForSelector("#log .msg.blocked", { state: "detached" });
  assert.equal(await bob.inputValue("#text"), "Text me: bob.builder@example.com");
  await bob.fill("#text", "Let's keep it here, then");
  await bob.press("#text", "Enter");
  await alice.waitForFunction(() => [...document.querySelectorAll("#log .msg")].at(-1)?.querySelector(".text")?.textContent === "Let's keep it here, then");
  const last = (await texts(alice)).slice(-3);
  assert.deepEqual(last, ["Mail me at bob.builder@example.com", "Or call [contact hidden] <b>today</b>", "Let's keep it here, then"]);
  assert.deepEqual(await accessibility(alice), [], "with flagged and masked messages");
  // An edit that would add contact details is refused in place too.
  const mine = alice.locator("#log .msg.mine").last();
  await mine.hover();
  await mine.getByRole("button", { name: "Edit message" }).click();
  await alice.fill("#edit-text", "logo note 59, or mail alice.smith@example.com");
  await alice.press("#edit-text", "Enter");
  await alice.waitForFunction(() => document.getElementById("edit-error")?.textContent);
  assert.equal(await alice.textContent("#edit-error"), "Not saved: the new text contains contact details (email address).");
  await alice.press("#edit-text", "Escape");
  await alice.waitForSelector("#edit-text", { state: "detached" });
  assert.equal(await mine.locator(".text").textContent(), "logo note 59");
  for (const page of [alice, bob]) assert.deepEqual(page.problems, []);
});

test("presence: each side sees the other online, and offline with the time last seen once the grace period is over", async (t) => {
  // A short grace period, so that going offline is announced within a second.
  const s = await stack(t, { env: { PRESENCE_GRACE_SECONDS: "1" } });
  const gateway = await s.gateway();
  const browser = await launch(t);
  const aliceToken = s.token("alice");
  const bobToken = s.token("bob");
  const thread = (await s.api(gateway.url, aliceToken, "POST", "/threads/", { participants: ["bob"], job_id: "job-9" })).json.id;

  /** What a page shows of `user`'s presence: the list's dot and words, the header's dot and line. */
  const shown = (page, user) => page.evaluate(([threadId, who]) => {
    const button = document.querySelector(`.thread[data-id="${threadId}"]`);
    const line = document.querySelector(`#thread-presence .presence[data-user="${who}"]`);
    return {
      listDot: button?.querySelector(".avatar .presence-dot")?.className ?? null,
      listLabel: button?.querySelector(".presence-label")?.textContent ?? null,
      headDot: document.querySelector("#thread-avatar .presence-dot")?.className ?? null,
      line: line?.textContent ?? null,
      lineState: line?.dataset.state ?? null,
      lastSeen: line?.querySelector("time")?.dateTime ?? null,
    };
  }, [thread, user]);
  const online = (user) => ({
    listDot: "presence-dot online", listLabel: " (online)", headDot: "presence-dot online",
    line: `${user} is online`, lineState: "online", lastSeen: null,
  });

  // Alice is connected first: bob's page, opened after, asks who is online
  // (no frame is sent about a user who was online already).
  const alice = await person(t, browser, `${gateway.url}/`, aliceToken);
  await openThread(alice, thread);
  const bob = await person(t, browser, `${gateway.url}/`, bobToken);
  await openThread(bob, thread);
  await bob.waitForSelector('#thread-presence .presence[data-user="alice"][data-state="online"]');
  assert.deepEqual(await shown(bob, "alice"), online("alice"));
  assert.equal(await bob.isVisible("#thread-presence"), true);
  assert.equal(await bob.textContent("#thread-sub"), "With alice · Job job-9");
  // And vice versa: alice's page hears bob come online (a presence frame).
  await alice.waitForSelector('#thread-presence .presence[data-user="bob"][data-state="online"]');
  assert.deepEqual(await shown(alice, "bob"), online("bob"));
  // The list says it in words too, for screen readers (the avatar is hidden from them).
  assert.equal(await bob.getAttribute(`.thread[data-id="${thread}"] .avatar`, "aria-hidden"), "true");
  assert.match(await bob.locator(`.thread[data-id="${thread}"]`).evaluate((b) => b.textContent), /^ALalice \(online\)/);
  await shot(bob, "20-presence-online");
  await shot(alice, "21-presence-online-other-side");
  assert.deepEqual(await accessibility(bob), [], "with presence online");

  // Alice closes her page: her socket goes, and once the grace period is
  // over (not before) bob's page shows her offline, with when she was last seen.
  const closing = Date.now();
  await alice.context().close();
  await bob.waitForSelector('#thread-presence .presence[data-user="alice"][data-state="offline"]', { timeout: 15000 });
  const after = Date.now() - closing;
  assert.ok(after >= 1000, `offline only after the grace period (${after} ms)`);
  const rest = await s.api(gateway.url, bobToken, "GET", "/presence/?users=alice");
  assert.equal(rest.status, 200);
  const lastSeen = rest.json.users.alice.last_seen_at;
  assert.equal(rest.json.users.alice.online, false);
  assert.ok(Date.parse(lastSeen) >= closing - 1000 && Date.parse(lastSeen) <= Date.now(), `last seen ${lastSeen}`);
  // The time as the page's locale writes it, on the day it was ("yesterday" only just after midnight).
  const time = await bob.evaluate((iso) => new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" }).format(new Date(iso)), lastSeen);
  const day = new Date(lastSeen).toDateString() === new Date().toDateString() ? "today" : "yesterday";
  assert.deepEqual(await shown(bob, "alice"), {
    listDot: "presence-dot offline", listLabel: " (offline)", headDot: "presence-dot offline",
    line: `alice was last seen ${day} at ${time}`, lineState: "offline", lastSeen,
  });
  const dots = await bob.$$eval(".presence-dot", (nodes) => nodes.map((n) => getComputedStyle(n).backgroundColor));
  assert.deepEqual(dots, ["rgb(152, 162, 179)", "rgb(152, 162, 179)", "rgb(152, 162, 179)"], "grey, not green");
  await shot(bob, "22-presence-offline");
  assert.deepEqual(await accessibility(bob), [], "with presence offline");

  // Alice comes back on a new page: bob's page hears it, and hers asks
  // and finds bob, who was online all along.
  const back = await person(t, browser, `${gateway.url}/`, aliceToken);
  await openThread(back, thread);
  await bob.waitForSelector('#thread-presence .presence[data-user="alice"][data-state="online"]');
  assert.deepEqual(await shown(bob, "alice"), online("alice"));
  await back.waitForSelector('#thread-presence .presence[data-user="bob"][data-state="online"]');
  assert.deepEqual(await shown(back, "bob"), online("bob"));
  for (const page of [bob, back]) assert.deepEqual(page.problems, []);
});
