// The gateway's web client (GET /) in a real Chromium: two users sign in,
// one starts a thread, they chat, and each sees the other's messages live,
// rendered as text (never as HTML).
//
// Runs the real binaries from the Cargo target directory on the embedded
// default. Needs Chromium (`apt-get install chromium`; CHROMIUM overrides
// the path) and `npm ci` in this folder; scripts/test does both.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const target = process.env.CARGO_TARGET_DIR || resolve(import.meta.dirname, "../../target");
const bin = (name) => join(target, "debug", name);

/** Starts `command` and resolves with the address it logs after `key=`. */
function start(command, env, cwd, key) {
  const child = spawn(command, [], { cwd, env: { PATH: process.env.PATH, ...env } });
  return new Promise((resolveStart, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`${command} did not start:\n${log}`)), 30000);
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const match = log.match(new RegExp(`${key}=([0-9.:]+)`));
      if (match) {
        clearTimeout(timer);
        resolveStart({ child, addr: match[1] });
      }
    });
    child.on("exit", (code) => reject(new Error(`${command} exited (${code}):\n${log}`)));
  });
}

test("two people chat through the web client", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "chat-browser-"));
  const token = (sub) => execFileSync(bin("chat-core"), ["token", "--sub", sub], { cwd: dir }).toString().trim();
  const alice = token("alice");
  const bob = token("bob");
  const secret = readFileSync(join(dir, "data/jwt-secret"), "utf8").trim();
  const core = await start(bin("chat-core"), {
    CHAT_CORE_GRPC_ADDR: "127.0.0.1:0", CHAT_CORE_HTTP_ADDR: "127.0.0.1:0",
  }, dir, "grpc");
  t.after(() => core.child.kill());
  const gateway = await start(bin("chat-gateway"), {
    JWT_SECRET: secret, CHAT_CORE_URL: `http://${core.addr}`, GATEWAY_ADDR: "127.0.0.1:0",
  }, dir, "addr");
  t.after(() => gateway.child.kill());

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  t.after(() => browser.close());
  const base = `http://${gateway.addr}/`;

  // The page runs under its Content Security Policy: anything it blocks
  // (an inline script, a connection elsewhere) fails the test.
  const violations = [];
  const watch = (page) => page.on("console", (message) => {
    if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
  });

  const alicePage = await browser.newPage();
  watch(alicePage);
  const answer = await alicePage.goto(base);
  assert.match(answer.headers()["content-security-policy"], /connect-src 'self'/);
  await alicePage.fill("#token", alice);
  await alicePage.click("#connect");
  await alicePage.waitForSelector("text=signed in as alice");
  await alicePage.fill("#participant", "bob");
  await alicePage.click("#new-thread button");
  await alicePage.waitForSelector("#text:not([disabled])");
  await alicePage.fill("#text", "<b>hello</b> bob");
  await alicePage.press("#text", "Enter");
  await alicePage.waitForSelector(".message");

  const bobPage = await browser.newPage();
  watch(bobPage);
  await bobPage.goto(base);
  await bobPage.fill("#token", bob);
  await bobPage.click("#connect");
  await bobPage.waitForSelector(".thread .unread");
  assert.equal(await bobPage.textContent(".thread .unread"), "1");
  await bobPage.click(".thread");
  await bobPage.waitForSelector("#text:not([disabled])");
  await bobPage.fill("#text", "hi alice");
  await bobPage.press("#text", "Enter");

  const seen = (page, count) => page.waitForFunction(
    (n) => document.querySelectorAll(".message").length >= n, count);
  await seen(alicePage, 2);
  await seen(bobPage, 2);
  const expected = ["alice<b>hello</b> bob", "bobhi alice"];
  for (const page of [alicePage, bobPage]) {
    const messages = await page.$$eval(".message", (ms) => ms.map((m) => m.textContent));
    assert.deepEqual(messages, expected);
    // The markup arrived as text: no <b> element was made from it.
    assert.equal(await page.$$eval("#log b", (bs) => bs.length), 0);
  }

  // A right-to-left override stays inside its own message.
  await alicePage.fill("#text", "\u202Egnp.exe");
  await alicePage.press("#text", "Enter");
  await seen(bobPage, 3);
  const isolated = await bobPage.$$eval(".message .text", (spans) => spans.map((span) =>
    [span.dir, getComputedStyle(span).unicodeBidi]));
  assert.deepEqual(isolated, Array(3).fill(["auto", "isolate"]));
  assert.deepEqual(violations, []);
});
