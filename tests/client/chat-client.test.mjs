// The browser library (gateway/static/chat-client.js) in Node against a
// real chat-core and real gateways: delivery in seq order exactly once,
// local echo confirmed by ack, read cursors and unread counts, typing and
// its expiry, refused sends, token refresh, a gateway killed and started
// again mid-conversation, search, and a send the contact guard blocks
// (final: never sent again).
//
// Node 20 has WebSocket behind a flag, and reads a `.js` file outside any
// package as CommonJS unless told to detect modules: scripts/test runs
// `node --experimental-websocket --experimental-detect-module --test
// tests/client/` (Node 22 needs neither flag). The library takes the
// socket constructor as an option; these tests pass Node's explicitly.

import { test } from "node:test";
import assert from "node:assert/strict";
import { stack, until } from "./stack.mjs";

if (typeof WebSocket !== "function") {
  throw new Error("run with `node --experimental-websocket --experimental-detect-module --test tests/client/`");
}
const { ChatClient, ChatApiError } = await import("../../gateway/static/chat-client.js");

/** A client of `base` as `token`, recording what it emits; closed after the test. */
function client(t, base, token, options = {}) {
  const chat = new ChatClient({
    token, baseUrl: base, WebSocket, fetch,
    reconnectInitialMs: 100, reconnectMaxMs: 1000, ...options,
  });
  const seen = { messages: [], states: [], typing: [], read: [], updated: [], deleted: [], failed: [], acks: [] };
  chat.on("message", (e) => seen.messages.push(e));
  chat.on("connection", (e) => seen.states.push(e));
  chat.on("typing", (e) => seen.typing.push(e));
  chat.on("read", (e) => seen.read.push(e));
  chat.on("message_updated", (e) => seen.updated.push(e));
  chat.on("message_deleted", (e) => seen.deleted.push(e));
  chat.on("send_failed", (e) => seen.failed.push(e));
  chat.on("ack", (e) => seen.acks.push(e));
  t.after(() => chat.close());
  return { chat, seen };
}

/** The `[seq, content]` pairs of what a client delivered in a thread. */
const delivered = (seen, threadId) =>
  seen.messages.filter((e) => e.threadId === threadId).map((e) => [e.message.seq, e.message.content]);

test("messages arrive once each, in seq order, and local echoes are confirmed by their ack", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const alice = client(t, gateway.url, s.token("alice"));
  const bob = client(t, gateway.url, s.token("bob"));
  await Promise.all([alice.chat.connect(), bob.chat.connect()]);
  assert.equal(alice.chat.state, "connected");
  assert.equal(alice.chat.userId, "alice");

  // A thread created after bob's socket opened still reaches it.
  const thread = await alice.chat.createThread({ participants: ["bob"], jobId: "job-7", title: "Logo design" });
  assert.equal(thread.job_id, "job-7");
  const pending = [];
  for (let i = 1; i <= 5; i++) pending.push(alice.chat.send(thread.id, `message ${i}`));
  assert.deepEqual(pending.map((m) => [m.seq, m.pending]), Array(5).fill([null, true]));
  // Until acknowledged they are the thread's pending tail.
  assert.deepEqual(alice.chat.messages(thread.id).map((m) => [m.content, m.pending]),
    [1, 2, 3, 4, 5].map((n) => [`message ${n}`, true]));
  const stored = await Promise.all(pending.map((m) => m.confirmed));
  assert.deepEqual(stored.map((m) => m.seq), [1, 2, 3, 4, 5]);
  assert.deepEqual(stored.map((m) => m.client_msg_id), pending.map((m) => m.client_msg_id));
  assert.equal(alice.chat.unacknowledged, 0);

  const expected = [1, 2, 3, 4, 5].map((n) => [n, `message ${n}`]);
  await until(() => delivered(bob.seen, thread.id).length === 5, "bob's five messages");
  assert.deepEqual(delivered(bob.seen, thread.id), expected);
  await until(() => delivered(alice.seen, thread.id).length === 5, "alice's own five");
  assert.deepEqual(delivered(alice.seen, thread.id), expected);
  assert.deepEqual(alice.seen.acks.map((a) => a.message.seq), [1, 2, 3, 4, 5]);

  // Unread counts follow the events, and agree with the server's.
  await until(() => bob.chat.unread(thread.id) === 5, "bob's unread count");
  assert.equal(bob.chat.totalUnread(), 5);
  assert.equal(alice.chat.unread(thread.id), 0);
  const counted = await s.api(gateway.url, s.token("bob"), "GET", "/unread-count/");
  assert.deepEqual(counted.json, { total: 5, threads: { [thread.id]: 5 } });

  // Bob reads up to 3: his count drops, alice sees the cursor.
  bob.chat.markRead(thread.id, 3);
  assert.equal(bob.chat.unread(thread.id), 2);
  await until(() => alice.seen.read.length === 1, "alice sees bob's read cursor");
  assert.deepEqual(alice.seen.read, [{ threadId: thread.id, userId: "bob", upToSeq: 3 }]);
  await alice.chat.loadMessages(thread.id);
  // Bob's socket is open, so alice hears he is online (a presence frame):
  // what he has not read yet is delivered.
  const statuses = () => alice.chat.messages(thread.id).map((m) => alice.chat.statusOf(thread.id, m));
  await until(() => statuses()[4] === "delivered", "alice hears bob is online");
  assert.deepEqual(statuses(), ["read", "read", "read", "delivered", "delivered"]);
  bob.chat.markRead(thread.id);
  await until(() => alice.seen.read.length === 2, "the second read cursor");
  assert.equal(bob.chat.unread(thread.id), 0);
  const after = await s.api(gateway.url, s.token("bob"), "GET", "/unread-count/");
  assert.deepEqual(after.json, { total: 0, threads: {} });

  // Bob's reply moves bob's own cursor: alice's unread is exactly one.
  await bob.chat.send(thread.id, "thanks").confirmed;
  await until(() => alice.chat.unread(thread.id) === 1, "alice's unread count");
  assert.equal(bob.chat.unread(thread.id), 0);
});

test("typing is announced, refreshed, stopped, and expires when its sender vanishes", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const alice = client(t, gateway.url, s.token("alice"), { typingRefreshMs: 1000, typingIdleMs: 60000 });
  const bob = client(t, gateway.url, s.token("bob"));
  await Promise.all([alice.chat.connect(), bob.chat.connect()]);
  const thread = await alice.chat.createThread({ participants: ["bob"] });
  await bob.chat.listThreads();

  alice.chat.typing(thread.id);
  await until(() => bob.chat.thread(thread.id)?.typing.includes("alice"), "bob sees alice typing");
  alice.chat.stopTyping(thread.id);
  await until(() => bob.chat.thread(thread.id).typing.length === 0, "typing stopped");

  // Alice keeps typing for 8 s: refreshed every second, it never lapses.
  const start = Date.now();
  alice.chat.typing(thread.id);
  await until(() => bob.chat.thread(thread.id).typing.includes("alice"), "typing again");
  const lapses = [];
  bob.chat.on("typing", (e) => { if (!e.userIds.includes("alice")) lapses.push(Date.now() - start); });
  while (Date.now() - start < 8000) {
    alice.chat.typing(thread.id);
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.deepEqual(lapses, []);

  // Then alice's client goes away without saying she stopped: within the
  // server's 6 s expiry (and the library's own), bob no longer sees it.
  alice.chat.close();
  const gone = Date.now();
  await until(() => bob.chat.thread(thread.id).typing.length === 0, "typing expired", 9000);
  const waited = Date.now() - gone;
  assert.ok(waited > 4000 && waited < 8000, `typing expired after ${waited} ms`);
});

test("a refused send fails with the server's code; integration and edit errors come back as ChatApiError", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const alice = client(t, gateway.url, s.token("alice"));
  const bob = client(t, gateway.url, s.token("bob"));
  await Promise.all([alice.chat.connect(), bob.chat.connect()]);
  const thread = await alice.chat.createThread({ participants: ["bob"], jobId: "job-1" });

  const tooLong = alice.chat.send(thread.id, "x".repeat(4001));
  await assert.rejects(tooLong.confirmed, (error) => error instanceof ChatApiError && error.code === "invalid_request");
  assert.equal(alice.seen.failed.length, 1);
  assert.equal(alice.seen.failed[0].clientMsgId, tooLong.client_msg_id);
  assert.equal(alice.chat.statusOf(thread.id, alice.chat.messages(thread.id)[0]), "failed");
  alice.chat.discard(tooLong.client_msg_id);
  assert.deepEqual(alice.chat.messages(thread.id), []);

  await assert.rejects(
    alice.chat.initiatePayment(thread.id, { amount: "12.345", currency: "USD" }),
    (error) => error.status === 400 && error.code === "invalid_request" && /^amount: /.test(error.message),
  );
  await assert.rejects(
    alice.chat.postJobUpdate(thread.id, { jobId: "job-1", status: "" }),
    (error) => error.status === 400 && /status/.test(error.message),
  );

  // Typed messages reach the other side live, with their metadata.
  const payment = await alice.chat.initiatePayment(thread.id, { amount: "125.00", currency: "EUR", jobId: "job-1" });
  const dispute = await alice.chat.createDispute(thread.id, { reason: "Late delivery", details: "Two weeks" });
  const update = await alice.chat.postJobUpdate(thread.id, { jobId: "job-1", status: "completed", note: "Shipped" });
  await until(() => delivered(bob.seen, thread.id).length === 3, "bob's three typed messages");
  const kinds = bob.seen.messages.map((e) => [e.message.seq, e.message.message_type, e.message.metadata]);
  assert.deepEqual(kinds, [
    [payment.seq, "payment", { amount: "125.00", currency: "EUR", job_id: "job-1" }],
    [dispute.seq, "dispute", { reason: "Late delivery", details: "Two weeks" }],
    [update.seq, "job_update", { job_id: "job-1", status: "completed", note: "Shipped" }],
  ]);
  // The library delivered its own typed messages once, though it saw both
  // the REST answer and the live event.
  await until(() => delivered(alice.seen, thread.id).length === 3, "alice's own");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(delivered(alice.seen, thread.id).length, 3);

  // Edits and deletions reach the other side.
  const text = await alice.chat.send(thread.id, "first draft").confirmed;
  await bob.chat.loadMessages(thread.id);
  await alice.chat.editMessage(text.id, "final text");
  await until(() => bob.seen.updated.length === 1, "bob sees the edit");
  assert.equal(bob.seen.updated[0].message.content, "final text");
  assert.ok(bob.seen.updated[0].message.edited_at);
  assert.equal(bob.chat.messages(thread.id).at(-1).content, "final text");
  await assert.rejects(bob.chat.editMessage(text.id, "not mine"), (error) => error instanceof ChatApiError);
  await alice.chat.deleteMessage(text.id);
  await until(() => bob.seen.deleted.length === 1, "bob sees the deletion");
  assert.deepEqual(bob.seen.deleted, [{ threadId: thread.id, seq: text.seq, messageId: text.id }]);
  assert.equal(bob.chat.messages(thread.id).at(-1).content, "");
  assert.ok(bob.chat.messages(thread.id).at(-1).deleted_at);
});

test("older pages load on demand, in seq order, with no message twice", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const alice = client(t, gateway.url, s.token("alice"), { pageSize: 10 });
  await alice.chat.connect();
  const thread = await alice.chat.createThread({ participants: ["bob"] });
  const bobToken = s.token("bob");
  for (let i = 1; i <= 25; i++) {
    const sent = await s.api(gateway.url, bobToken, "POST", `/threads/${thread.id}/messages/`, { content: `m${i}` });
    assert.equal(sent.status, 201);
  }
  await until(() => alice.chat.thread(thread.id).last_seq === 25, "25 messages");
  const fresh = client(t, gateway.url, s.token("alice"), { pageSize: 10 });
  await fresh.chat.connect();
  await fresh.chat.loadMessages(thread.id);
  assert.deepEqual(fresh.chat.messages(thread.id).map((m) => m.seq), [16, 17, 18, 19, 20, 21, 22, 23, 24, 25]);
  assert.equal(await fresh.chat.loadOlder(thread.id), true);
  assert.equal(await fresh.chat.loadOlder(thread.id), false);
  assert.deepEqual(fresh.chat.messages(thread.id).map((m) => m.seq), Array.from({ length: 25 }, (_, i) => i + 1));
  assert.deepEqual(fresh.seen.messages, [], "history is paged in, not announced as new");
  assert.equal(fresh.chat.unread(thread.id), 25);
});

test("the token is renewed before it expires, and the socket moves to the new one", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  let renewals = 0;
  const alice = client(t, gateway.url, s.token("alice", { ttl: 4 }), {
    refreshMarginSeconds: 2,
    refreshToken: async () => {
      renewals++;
      return s.token("alice", { ttl: 3600 });
    },
  });
  const bob = client(t, gateway.url, s.token("bob"));
  await Promise.all([alice.chat.connect(), bob.chat.connect()]);
  const thread = await alice.chat.createThread({ participants: ["bob"] });
  // Past the first token's expiry: the socket still works, REST too.
  await new Promise((r) => setTimeout(r, 5000));
  assert.equal(renewals, 1);
  assert.equal(alice.chat.state, "connected");
  const sent = await alice.chat.send(thread.id, "still here").confirmed;
  await until(() => delivered(bob.seen, thread.id).length === 1, "bob gets it");
  assert.deepEqual(delivered(bob.seen, thread.id), [[sent.seq, "still here"]]);
  assert.equal((await alice.chat.listThreads()).results.length, 1);
  assert.ok(!alice.seen.states.some((e) => e.state === "unauthorized"));
});

test("a token the gateway refuses, with no way to renew it, leaves the client unauthorized", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const stranger = client(t, gateway.url, "e30.e30.c2lnbmF0dXJl");
  await assert.rejects(stranger.chat.connect(), (error) => error.status === 401);
  assert.equal(stranger.chat.state, "unauthorized");
});

test("a gateway killed mid-conversation: the client reconnects, resumes each thread, sends what was not acknowledged, each message once", async (t) => {
  const s = await stack(t);
  // Alice is on the gateway that dies; bob on another that stays up.
  const first = await s.gateway();
  const second = await s.gateway();
  const alice = client(t, first.url, s.token("alice"));
  const bob = client(t, second.url, s.token("bob"));
  await Promise.all([alice.chat.connect(), bob.chat.connect()]);
  const thread = await alice.chat.createThread({ participants: ["bob"], title: "Kitchen remodel" });
  const other = await bob.chat.createThread({ participants: ["alice"], jobId: "job-2" });
  for (const text of ["a1", "a2"]) await alice.chat.send(thread.id, text).confirmed;
  await bob.chat.send(thread.id, "b1").confirmed;
  await until(() => delivered(alice.seen, thread.id).length === 3, "the conversation so far");

  // One send in flight as the gateway dies: acknowledged or not, it is
  // stored once.
  const inFlight = alice.chat.send(thread.id, "a3 in flight");
  await first.kill();
  await until(() => alice.chat.state === "reconnecting", "alice notices");
  const reconnecting = alice.seen.states.find((e) => e.state === "reconnecting" && e.retryInMs > 0);
  assert.ok(reconnecting, "the wait before the next attempt is announced");

  // While it is down: alice writes (queued), bob writes in both threads.
  const queued = ["a4 offline", "a5 offline"].map((text) => alice.chat.send(thread.id, text));
  for (const text of ["b2 meanwhile", "b3 meanwhile"]) await bob.chat.send(thread.id, text).confirmed;
  await bob.chat.send(other.id, "other thread meanwhile").confirmed;
  bob.chat.markRead(thread.id);
  await new Promise((r) => setTimeout(r, 300));
  assert.notEqual(alice.chat.state, "connected");
  assert.equal(alice.chat.unacknowledged, 3);

  const restarted = await s.gateway(first.addr);
  assert.equal(restarted.addr, first.addr);
  await until(() => alice.chat.state === "connected", "alice reconnects").catch((error) => {
    throw new Error(`${error.message}: ${JSON.stringify(alice.seen.states)}`);
  });
  const stored = await Promise.all([inFlight, ...queued].map((m) => m.confirmed));
  assert.equal(alice.chat.unacknowledged, 0);

  const want = ["a1", "a2", "b1", "a3 in flight", "b2 meanwhile", "b3 meanwhile", "a4 offline", "a5 offline"];
  await until(() => delivered(alice.seen, thread.id).length >= want.length, "alice catches up");
  await until(() => delivered(bob.seen, thread.id).length >= want.length, "bob gets the queued ones");
  await new Promise((r) => setTimeout(r, 300));
  for (const who of [alice, bob]) {
    const got = delivered(who.seen, thread.id);
    assert.deepEqual(got.map(([seq]) => seq), want.map((_, i) => i + 1), "seq order, no gap, no duplicate");
    // a3 was sent before b2/b3 only if its ack made it; either way each
    // text is there exactly once.
    assert.deepEqual(got.map(([, text]) => text).sort(), [...want].sort());
  }
  assert.deepEqual(stored.map((m) => m.content), ["a3 in flight", "a4 offline", "a5 offline"]);
  const server = await s.api(first.url, s.token("alice"), "GET", `/threads/${thread.id}/messages/`);
  assert.deepEqual(server.json.results.map((m) => m.content), delivered(alice.seen, thread.id).map(([, c]) => c));

  // The other thread's message, sent while alice was away, arrived too.
  assert.deepEqual(delivered(alice.seen, other.id), [[1, "other thread meanwhile"]]);
  assert.equal(alice.chat.unread(other.id), 1);
  // Unread counts agree with the server's, thread by thread.
  const counts = await s.api(first.url, s.token("alice"), "GET", "/unread-count/");
  assert.equal(alice.chat.unread(thread.id), counts.json.threads[thread.id] || 0);
  assert.equal(alice.chat.totalUnread(), counts.json.total);
});

test("search finds the caller's messages in every thread of theirs, newest first, page by page; a short query is refused", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  const alice = client(t, gateway.url, s.token("alice"));
  await alice.chat.connect();
  const logo = await alice.chat.createThread({ participants: ["bob"], title: "Logo" });
  const kitchen = await alice.chat.createThread({ participants: ["carol"], title: "Kitchen" });
  const bobToken = s.token("bob");
  const carolToken = s.token("carol");
  const elsewhere = await s.api(gateway.url, bobToken, "POST", "/threads/", { participants: ["carol"] });
  const post = async (token, threadId, content) => {
    const sent = await s.api(gateway.url, token, "POST", `/threads/${threadId}/messages/`, { content });
    assert.equal(sent.status, 201);
    return sent.json;
  };
  await post(s.token("alice"), logo.id, "The invoice is attached");
  await post(bobToken, logo.id, "Thanks for the Invoice");
  await post(carolToken, kitchen.id, "Invoices are late again");
  await post(bobToken, elsewhere.json.id, "an invoice alice must not see");
  const gone = await post(s.token("alice"), logo.id, "a deleted invoice");
  assert.equal((await s.api(gateway.url, s.token("alice"), "DELETE", `/messages/${gone.id}/`)).status, 204);
  await post(carolToken, kitchen.id, "Café opens at nine");

  const hits = (page) => page.results.map((r) => [r.thread_id, r.message.content]);
  const all = await alice.chat.search("invoice");
  assert.deepEqual(hits(all), [
    [kitchen.id, "Invoices are late again"],
    [logo.id, "Thanks for the Invoice"],
    [logo.id, "The invoice is attached"],
  ]);
  assert.equal(all.next_cursor, null);
  assert.deepEqual(all.results[0].message.flags, []);

  const first = await alice.chat.search("invoice", { limit: 2 });
  assert.deepEqual(hits(first), hits(all).slice(0, 2));
  assert.equal(typeof first.next_cursor, "string");
  const second = await alice.chat.search("invoice", { limit: 2, cursor: first.next_cursor });
  assert.deepEqual(hits(second), hits(all).slice(2));
  assert.equal(second.next_cursor, null);

  assert.deepEqual(hits(await alice.chat.search("INVOICE", { threadId: logo.id })), hits(all).slice(1));
  assert.deepEqual(hits(await alice.chat.search("cafe op")), [[kitchen.id, "Café opens at nine"]]);
  assert.deepEqual(hits(await alice.chat.search("invoice late attached")), []);

  await assert.rejects(alice.chat.search("x"),
    (error) => error instanceof ChatApiError && error.status === 400 && error.code === "invalid_request");
  await assert.rejects(alice.chat.search("invoice", { threadId: elsewhere.json.id }),
    (error) => error instanceof ChatApiError && error.status === 404);
});

test("a send the contact guard blocks fails for good: nothing stored, and it is not sent again after a reconnect", async (t) => {
  const s = await stack(t);
  const gateway = await s.gateway();
  // The service and bob use a second gateway, which stays up.
  const other = await s.gateway();
  const alice = client(t, gateway.url, s.token("alice"));
  const bob = client(t, other.url, s.token("bob"));
  await Promise.all([alice.chat.connect(), bob.chat.connect()]);
  const thread = await alice.chat.createThread({ participants: ["bob"], jobId: "job-5" });
  const service = s.token("jobs", { role: "service" });
  const policy = async (value) => {
    const set = await s.api(other.url, service, "PUT", `/threads/${thread.id}/contact-policy/`, { policy: value });
    assert.equal(set.status, 200);
    assert.equal(set.json.contact_policy, value);
  };
  await policy("block");
  const errors = [];
  alice.chat.on("frame", (frame) => {
    if (frame.type === "error") errors.push(frame);
  });

  const blocked = alice.chat.send(thread.id, "mail me at alice.smith@example.com");
  await assert.rejects(blocked.confirmed, (error) => error instanceof ChatApiError
    && error.code === "contact_blocked" && JSON.stringify(error.kinds) === '["email"]');
  const refusal = "message blocked: it contains contact details (email)";
  assert.deepEqual(alice.seen.failed, [{
    threadId: thread.id, clientMsgId: blocked.client_msg_id, code: "contact_blocked",
    message: refusal, kinds: ["email"], final: true,
  }]);
  // The frame names the kinds in a field of its own: the library reads them there.
  assert.deepEqual(errors, [{
    type: "error", code: "contact_blocked", message: refusal,
    client_msg_id: blocked.client_msg_id, kinds: ["email"],
  }]);
  const [echo] = alice.chat.messages(thread.id);
  assert.equal(echo.client_msg_id, blocked.client_msg_id);
  assert.deepEqual(echo.failed, { code: "contact_blocked", message: refusal, kinds: ["email"] });
  assert.equal(alice.chat.statusOf(thread.id, echo), "failed");
  assert.equal(alice.chat.unacknowledged, 0);
  // Over REST the same text is refused with 422.
  const rest = await s.api(gateway.url, s.token("alice"), "POST", `/threads/${thread.id}/messages/`,
    { content: "mail me at alice.smith@example.com" });
  assert.equal(rest.status, 422);
  assert.deepEqual(rest.json, { error: { code: "contact_blocked", message: refusal, kinds: ["email"] } });

  // The gateway goes away and comes back; meanwhile the thread's policy
  // becomes `mask`, so a re-send of the blocked text would now be stored.
  await gateway.kill();
  await until(() => alice.chat.state !== "connected", "alice notices");
  await policy("mask");
  await s.gateway(gateway.addr);
  await until(() => alice.chat.state === "connected", "alice reconnects", 20000);
  const next = await alice.chat.send(thread.id, "or write to alice.smith@example.com").confirmed;
  assert.equal(next.seq, 1);
  assert.equal(next.content, "or write to [contact hidden]");
  assert.deepEqual(next.flags, ["email"]);
  await until(() => delivered(bob.seen, thread.id).length === 1, "bob gets the masked one");
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(delivered(bob.seen, thread.id), [[1, "or write to [contact hidden]"]]);
  assert.deepEqual(bob.seen.messages[0].message.flags, ["email"]);
  assert.equal(errors.length, 1, "the blocked send was not sent again");
  assert.equal(alice.seen.failed.length, 1);
  const stored = await s.api(gateway.url, s.token("alice"), "GET", `/threads/${thread.id}/messages/`);
  assert.deepEqual(stored.json.results.map((m) => [m.seq, m.content]), [[1, "or write to [contact hidden]"]]);
  // A service reads what was written.
  const original = await s.api(gateway.url, service, "GET", `/threads/${thread.id}/messages/`);
  assert.deepEqual(original.json.results.map((m) => m.content), ["or write to alice.smith@example.com"]);

  // The failed echo stays, after what is stored, until the user gives up on it.
  await alice.chat.loadMessages(thread.id);
  assert.deepEqual(alice.chat.messages(thread.id).map((m) => [m.seq, m.content]),
    [[1, "or write to [contact hidden]"], [null, "mail me at alice.smith@example.com"]]);
  alice.chat.discard(blocked.client_msg_id);
  assert.deepEqual(alice.chat.messages(thread.id).map((m) => m.seq), [1]);

  // Blocked again: an edit the guard refuses (over REST) rejects with the kinds too.
  await policy("block");
  await assert.rejects(alice.chat.editMessage(next.id, "or pay at example.com/pay, ring +1 415 555 0134"),
    (error) => error instanceof ChatApiError && error.status === 422 && error.code === "contact_blocked"
      && JSON.stringify(error.kinds) === '["phone","link"]');
});
