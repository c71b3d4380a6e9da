// chat-client.js: the browser library of the marketplace chat gateway.
//
// One ES module with no dependencies. It owns what every front-end would
// otherwise get wrong: the token goes in the first frame (never in a URL),
// one socket carries every thread of the user, a dropped socket comes back
// with back-off and jitter, each thread resumes after the last seq it
// delivered (nothing missed, nothing shown twice), every send carries a
// client_msg_id and is sent again after a reconnect until acknowledged,
// typing is refreshed and expires, read cursors and unread counts follow
// the events, and the token is renewed through a callback before it expires.
//
// Usage (see the README for the full list of events):
//
//   import { ChatClient } from "/static/chat-client.js";
//   const chat = new ChatClient({ token, refreshToken: () => fetchNewToken() });
//   chat.on("message", ({ threadId, message }) => render(threadId, message));
//   chat.on("connection", ({ state, retryInMs }) => showState(state, retryInMs));
//   await chat.connect();
//   chat.send(threadId, "hello");

/**
 * An error answered by the server: `status`, `code` and `message` as it gave
 * them, and for `contact_blocked` the `kinds` of contact detail it found
 * (`["email", "phone"]`; `[]` for any other error).
 */
export class ChatApiError extends Error {
  constructor(status, code, message, retryAfterSeconds = null, kinds = []) {
    super(message);
    this.name = "ChatApiError";
    this.status = status;
    this.code = code;
    this.retryAfterSeconds = retryAfterSeconds;
    this.kinds = kinds;
  }
}

/** Frame error codes after which a send is tried again with the same client_msg_id. */
const RETRYABLE = new Set(["unavailable", "rate_limited", "internal"]);

const DEFAULTS = {
  reconnectInitialMs: 500,
  reconnectMaxMs: 15000,
  authTimeoutMs: 10000,
  pingEveryMs: 20000,
  pongTimeoutMs: 10000,
  refreshMarginSeconds: 60,
  typingRefreshMs: 3000,
  typingIdleMs: 4000,
  typingExpiryMs: 6500,
  pageSize: 50,
};

/** The claims of a JWT, read without checking it (the server checks it). */
export function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

function uuid() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const b = globalThis.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * A signed-in user's connection to the chat: REST calls, one user-wide
 * WebSocket, and the state of every thread the user has seen.
 *
 * Options: `token` (required), `refreshToken` (async () => new token;
 * called `refreshMarginSeconds` before expiry and after a 401/4401),
 * `baseUrl` (default: the page's origin), `WebSocket` and `fetch` (default:
 * the browser's), and the timings in DEFAULTS.
 */
export class ChatClient {
  #opts;
  #token;
  #WebSocket;
  #fetch;
  #base;
  #listeners = new Map();
  #threads = new Map();
  #outbox = new Map();
  #socket = null;
  #gen = 0;
  #state = "idle";
  #attempt = 0;
  #stopped = true;
  #everConnected = false;
  #timers = { reconnect: null, refresh: null, ping: null, pong: null, auth: null };
  #ready = null;
  #refreshing = null;
  #presence = new Map();
  /** Per user, the number of the last presence frame about them (see fetchPresence). */
  #presenceFrameAt = new Map();
  #presenceFrames = 0;
  /** Users whose presence is to be asked for, in one request, soon. */
  #presenceWanted = new Set();
  #presenceTimer = null;
  /** While a resume runs, presence is asked for once, at its end. */
  #presenceHeld = false;
  #resumedOnce = false;
  #moveNow = false;

  /** The cursor of the thread list's next page after the first connect (for listThreads), or null. */
  threadsCursor = null;

  constructor(options) {
    if (!options?.token) throw new TypeError("ChatClient: a token is required");
    this.#opts = { ...DEFAULTS, ...options };
    this.#token = options.token;
    this.#WebSocket = options.WebSocket || globalThis.WebSocket;
    this.#fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.#base = (options.baseUrl || globalThis.location?.origin || "").replace(/\/$/, "");
    this.userId = tokenClaims(this.#token).sub || null;
  }

  // ---- events ----------------------------------------------------------

  /**
   * Listens to `type`; returns a function that stops listening. Types:
   * `connection`, `threads`, `thread`, `message`, `pending`, `ack`,
   * `send_failed`, `message_updated`, `message_deleted`, `typing`, `read`,
   * `unread`, `presence`, `error`, `token`, and `frame` (every server frame,
   * including types this library does not know).
   */
  on(type, listener) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(listener);
    return () => this.#listeners.get(type)?.delete(listener);
  }

  #emit(type, detail) {
    for (const listener of this.#listeners.get(type) || []) {
      try {
        listener(detail);
      } catch (error) {
        console.error(`chat-client: a "${type}" listener threw`, error);
      }
    }
  }

  // ---- connection ------------------------------------------------------

  /** The connection state: `idle`, `connecting`, `connected`, `reconnecting`, `offline`, `unauthorized` or `closed`. */
  get state() {
    return this.#state;
  }

  /** The current token (after any refresh). */
  get token() {
    return this.#token;
  }

  /** Opens the socket; resolves once connected and the thread list is loaded. */
  connect() {
    if (!this.#stopped) return this.#ready.promise;
    this.#stopped = false;
    this.#ready = deferred();
    this.#scheduleRefresh();
    if (globalThis.addEventListener && "onLine" in (globalThis.navigator || {})) {
      this.#onlineListener = () => this.reconnectNow();
      this.#offlineListener = () => this.#socket?.close();
      globalThis.addEventListener("online", this.#onlineListener);
      globalThis.addEventListener("offline", this.#offlineListener);
    }
    this.#open();
    return this.#ready.promise;
  }

  #onlineListener = null;
  #offlineListener = null;

  /** Closes the socket for good and stops every timer. */
  close() {
    this.#stopped = true;
    this.#gen++;
    for (const key of Object.keys(this.#timers)) this.#clear(key);
    clearTimeout(this.#presenceTimer);
    this.#presenceTimer = null;
    this.#presenceWanted.clear();
    for (const thread of this.#threads.values()) {
      clearTimeout(thread.myTypingTimer);
      for (const timer of thread.typing.values()) clearTimeout(timer);
      thread.typing.clear();
    }
    if (this.#onlineListener) {
      globalThis.removeEventListener("online", this.#onlineListener);
      globalThis.removeEventListener("offline", this.#offlineListener);
    }
    const socket = this.#socket;
    this.#socket = null;
    socket?.close(1000, "bye");
    this.#setState("closed");
  }

  /** Skips the back-off wait and reconnects now (e.g. a "retry" button). */
  reconnectNow() {
    if (this.#stopped) return;
    if (this.#state === "connected" || this.#state === "connecting") return;
    this.#clear("reconnect");
    this.#open();
  }

  #clear(key) {
    clearTimeout(this.#timers[key]);
    this.#timers[key] = null;
  }

  #setState(state, extra = {}) {
    this.#state = state;
    this.#emit("connection", { state, attempt: this.#attempt, ...extra });
  }

  #wsUrl() {
    const base = this.#base.replace(/^http/, "ws");
    return `${base}/ws/chat/`;
  }

  #open() {
    const gen = ++this.#gen;
    this.#setState(this.#everConnected ? "reconnecting" : "connecting", { retryInMs: 0 });
    let socket;
    try {
      socket = new this.#WebSocket(this.#wsUrl());
    } catch (error) {
      this.#onClose(gen, 1006, String(error));
      return;
    }
    this.#socket = socket;
    socket.onopen = () => {
      if (gen !== this.#gen) return;
      // The token travels in the first frame, never in the URL.
      socket.send(JSON.stringify({ type: "auth", token: this.#token }));
    };
    socket.onmessage = (event) => {
      if (gen !== this.#gen) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.#onFrame(frame);
    };
    let ended = false;
    const end = (code, reason) => {
      if (ended) return;
      ended = true;
      this.#onClose(gen, code, reason);
    };
    socket.onclose = (event) => end(event.code, event.reason);
    // Browsers follow a failed connection's error with a close; some
    // runtimes (Node 20) send the error alone.
    socket.onerror = () => setTimeout(() => end(1006, "connection failed"), 100);
    this.#timers.auth = setTimeout(() => {
      if (gen === this.#gen && this.#state !== "connected") socket.close(4000, "no auth_ok");
    }, this.#opts.authTimeoutMs);
  }

  #send(frame) {
    if (this.#state !== "connected" || !this.#socket) return false;
    try {
      this.#socket.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  async #onClose(gen, code, reason) {
    if (gen !== this.#gen) return;
    this.#socket = null;
    this.#clear("ping");
    this.#clear("pong");
    this.#clear("auth");
    if (this.#stopped) return;
    for (const thread of this.#threads.values()) {
      // Nobody is typing as far as we can know until we are back.
      for (const timer of thread.typing.values()) clearTimeout(timer);
      if (thread.typing.size) {
        thread.typing.clear();
        this.#emit("typing", { threadId: thread.id, userIds: [] });
      }
    }
    if (code === 4401) {
      if (!this.#opts.refreshToken) {
        this.#setState("unauthorized", { code, reason });
        this.#ready?.reject(new ChatApiError(401, "unauthenticated", reason || "invalid token"));
        return;
      }
      try {
        await this.#refreshNow();
      } catch {
        this.#setState("unauthorized", { code, reason });
        return;
      }
    }
    if (gen !== this.#gen || this.#stopped) return;
    if (this.#moveNow) {
      // Closed on purpose to move to a new token: straight back.
      this.#moveNow = false;
      this.#open();
      return;
    }
    const offline = globalThis.navigator && globalThis.navigator.onLine === false;
    this.#attempt++;
    const ceiling = Math.min(
      this.#opts.reconnectMaxMs,
      this.#opts.reconnectInitialMs * 2 ** Math.min(this.#attempt - 1, 16),
    );
    // Full back-off with jitter: between half and all of the ceiling, so a
    // gateway restart is not met by every browser at the same instant.
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.#setState(offline ? "offline" : "reconnecting", {
      code,
      reason,
      retryInMs: delay,
      retryAt: Date.now() + delay,
    });
    this.#timers.reconnect = setTimeout(() => {
      this.#timers.reconnect = null;
      if (!this.#stopped && gen === this.#gen) this.#open();
    }, delay);
  }

  #onFrame(frame) {
    this.#emit("frame", frame);
    this.#clear("pong");
    switch (frame.type) {
      case "auth_ok":
        return this.#onAuthOk(frame);
      case "chat_message":
        return this.#accept(frame.thread_id, frame.message);
      case "ack":
        return this.#onAck(frame);
      case "message_updated":
        return this.#applyUpdate(frame.message);
      case "message_deleted":
        return this.#onDeleted(frame);
      case "messages_read":
        return this.#onRead(frame.thread_id, frame.user_id, frame.up_to_seq);
      case "typing_indicator":
        return this.#onTyping(frame.thread_id, frame.user_id, frame.is_typing);
      case "error":
        return this.#onError(frame);
      case "presence":
        this.#presenceFrameAt.set(frame.user_id, ++this.#presenceFrames);
        return this.#setPresence(frame.user_id, frame);
      case "pong":
        return undefined;
      default:
        // A frame type this version does not know: its listeners get it.
        return this.#emit(frame.type, frame);
    }
  }

  #onAuthOk(frame) {
    this.#clear("auth");
    this.userId = frame.user_id || this.userId;
    this.#attempt = 0;
    this.#everConnected = true;
    this.#setState("connected");
    this.#schedulePing();
    // Un-acknowledged sends go again, with their original client_msg_id.
    for (const entry of this.#outbox.values()) {
      if (!entry.failed) this.#transmit(entry);
    }
    for (const thread of this.#threads.values()) {
      if (thread.readDirty) this.#sendRead(thread);
    }
    const gen = this.#gen;
    this.#resume(gen).then(
      () => this.#ready?.resolve(),
      (error) => {
        // The socket is up but REST is not (yet): the next reconnect retries.
        if (gen === this.#gen) this.#socket?.close(4000, "resume failed");
        this.#emit("error", { code: error.code || "resume_failed", message: error.message });
      },
    );
  }

  #schedulePing() {
    this.#clear("ping");
    const gen = this.#gen;
    this.#timers.ping = setTimeout(() => {
      if (gen !== this.#gen || this.#state !== "connected") return;
      this.#send({ type: "ping" });
      // Any frame clears this; silence means the connection is dead even
      // if the browser has not noticed.
      this.#timers.pong = setTimeout(() => {
        if (gen === this.#gen) this.#socket?.close(4000, "no pong");
      }, this.#opts.pongTimeoutMs);
      this.#schedulePing();
    }, this.#opts.pingEveryMs);
  }

  // ---- token refresh ---------------------------------------------------

  #scheduleRefresh() {
    this.#clear("refresh");
    if (!this.#opts.refreshToken || this.#stopped) return;
    const exp = tokenClaims(this.#token).exp;
    if (!exp) return;
    const wait = Math.max(0, exp * 1000 - Date.now() - this.#opts.refreshMarginSeconds * 1000);
    this.#timers.refresh = setTimeout(async () => {
      try {
        await this.#refreshNow();
        // The socket was authenticated with the old token, which the
        // gateway will close at its expiry: move to the new one now.
        if (this.#state === "connected" && this.#socket) {
          this.#moveNow = true;
          this.#socket.close(4000, "token refreshed");
        }
      } catch (error) {
        this.#emit("error", { code: "token_refresh_failed", message: String(error?.message || error) });
        this.#timers.refresh = setTimeout(() => this.#scheduleRefresh(), 5000);
      }
    }, Math.min(wait, 2 ** 31 - 1));
  }

  #refreshNow() {
    if (!this.#refreshing) {
      this.#refreshing = (async () => {
        const token = await this.#opts.refreshToken();
        if (!token) throw new Error("refreshToken gave no token");
        this.#token = token;
        this.#emit("token", { token });
        this.#scheduleRefresh();
        return token;
      })().finally(() => {
        this.#refreshing = null;
      });
    }
    return this.#refreshing;
  }

  // ---- REST ------------------------------------------------------------

  async #api(method, path, body) {
    for (let attempt = 0; ; attempt++) {
      const response = await this.#fetch(`${this.#base}/api/chat${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.#token}`,
          ...(body === undefined ? {} : { "content-type": "application/json" }),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (response.status === 401 && attempt === 0 && this.#opts.refreshToken) {
        await this.#refreshNow();
        continue;
      }
      const data = response.status === 204 ? null : await response.json().catch(() => null);
      if (!response.ok) {
        const retry = Number(response.headers.get("retry-after")) || null;
        throw new ChatApiError(
          response.status,
          data?.error?.code || `http_${response.status}`,
          data?.error?.message || response.statusText || "request failed",
          retry,
          refusedKinds(data?.error),
        );
      }
      return data;
    }
  }

  /** One page of the caller's threads (`{results, next_cursor}`), most recent activity first; tracked from then on. */
  async listThreads({ limit = 20, cursor = null, jobId = null } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set("cursor", cursor);
    if (jobId) query.set("job_id", jobId);
    const page = await this.#api("GET", `/threads/?${query}`);
    for (const thread of page.results) this.#mergeThread(thread);
    return page;
  }

  /** Starts (or finds) a thread with `participants` (the caller is added). */
  async createThread({ participants, jobId, title } = {}) {
    const body = { participants };
    if (jobId) body.job_id = jobId;
    if (title) body.title = title;
    const thread = await this.#api("POST", "/threads/", body);
    this.#mergeThread(thread);
    this.#emit("threads", { threads: this.threads() });
    return this.thread(thread.id);
  }

  /** Changes a thread's title. */
  async renameThread(threadId, title) {
    const thread = await this.#api("PATCH", `/threads/${enc(threadId)}/`, { title });
    this.#mergeThread(thread);
    return this.thread(threadId);
  }

  /**
   * Loads the newest page of a thread's messages (once); later calls
   * return what is loaded. Messages then stay in `messages(threadId)`.
   */
  async loadMessages(threadId) {
    const thread = this.#thread(threadId);
    if (thread.loaded) return this.messages(threadId);
    if (!thread.loading) {
      thread.loading = (async () => {
        if (!thread.info) await this.#fetchThread(threadId);
        const page = await this.#api(
          "GET",
          `/threads/${enc(threadId)}/messages/?limit=${this.#opts.pageSize}`,
        );
        this.#storePage(thread, page.results);
        thread.hasOlder = page.has_more;
        thread.loaded = true;
      })().finally(() => {
        thread.loading = null;
      });
    }
    await thread.loading;
    return this.messages(threadId);
  }

  /** Loads the page before the oldest loaded message; resolves to whether older ones remain. */
  async loadOlder(threadId) {
    const thread = this.#thread(threadId);
    if (!thread.loaded) {
      await this.loadMessages(threadId);
      return thread.hasOlder;
    }
    if (!thread.hasOlder) return false;
    if (!thread.loadingOlder) {
      thread.loadingOlder = (async () => {
        const oldest = Math.min(...thread.messages.keys());
        const page = await this.#api(
          "GET",
          `/threads/${enc(threadId)}/messages/?before_seq=${oldest}&limit=${this.#opts.pageSize}`,
        );
        this.#storePage(thread, page.results);
        thread.hasOlder = page.has_more;
      })().finally(() => {
        thread.loadingOlder = null;
      });
    }
    await thread.loadingOlder;
    return thread.hasOlder;
  }

  /**
   * Loads older pages until message `seq` of a thread is loaded (to show a
   * search result in place); resolves to whether it is.
   */
  async loadUntil(threadId, seq) {
    const thread = this.#thread(threadId);
    await this.loadMessages(threadId);
    while (thread.hasOlder && Math.min(...thread.messages.keys()) > seq) {
      const oldest = Math.min(...thread.messages.keys());
      // Big pages: the way back to an old message can be long.
      const page = await this.#api("GET", `/threads/${enc(threadId)}/messages/?before_seq=${oldest}&limit=200`);
      this.#storePage(thread, page.results);
      thread.hasOlder = page.has_more;
      if (!page.results.length) break;
    }
    return thread.messages.has(seq);
  }

  /** Reads a thread again from the server (its title, participants, `contact_policy`, …). */
  async refreshThread(threadId) {
    await this.#fetchThread(threadId);
    return this.thread(threadId);
  }

  #storePage(thread, results) {
    for (const message of results) {
      if (message.seq <= thread.lastSeq) thread.messages.set(message.seq, message);
      else this.#accept(thread.id, message);
    }
  }

  /** Edits one of the caller's messages. */
  async editMessage(messageId, content) {
    const message = await this.#api("PATCH", `/messages/${enc(messageId)}/`, { content });
    this.#applyUpdate(message);
    return message;
  }

  /** Deletes one of the caller's messages (its content is hidden from users). */
  async deleteMessage(messageId) {
    await this.#api("DELETE", `/messages/${enc(messageId)}/`);
    for (const thread of this.#threads.values()) {
      for (const message of thread.messages.values()) {
        if (message.id === messageId) this.#onDeleted({ thread_id: thread.id, seq: message.seq, message_id: messageId });
      }
    }
  }

  /** Opens a dispute in a thread: `{reason, details?}`; resolves to the dispute message. */
  async createDispute(threadId, { reason, details } = {}) {
    const body = { reason };
    if (details) body.details = details;
    return this.#integration(threadId, "create-dispute", body);
  }

  /** Initiates a payment: `{amount: "125.00", currency: "USD", jobId?}`; resolves to the payment message. */
  async initiatePayment(threadId, { amount, currency, jobId } = {}) {
    const body = { amount, currency };
    if (jobId) body.job_id = jobId;
    return this.#integration(threadId, "initiate-payment", body);
  }

  /** Posts a job update: `{jobId, status, note?}`; resolves to the job-update message. */
  async postJobUpdate(threadId, { jobId, status, note } = {}) {
    const body = { job_id: jobId, status };
    if (note) body.note = note;
    return this.#integration(threadId, "job-update", body);
  }

  async #integration(threadId, route, body) {
    const message = await this.#api("POST", `/threads/${enc(threadId)}/${route}/`, body);
    this.#accept(threadId, message);
    return message;
  }

  /**
   * Searches the caller's messages: every word of `q` (2 to 200
   * characters) must occur, the last one also as the start of a word.
   * Resolves to `{results: [{thread_id, message}], next_cursor}`, newest
   * first; pass `next_cursor` back as `cursor` for the next page. A query
   * out of bounds rejects with a ChatApiError (400, `invalid_request`).
   */
  async search(q, { threadId, limit, cursor } = {}) {
    const query = new URLSearchParams({ q });
    if (threadId) query.set("thread_id", threadId);
    if (limit) query.set("limit", String(limit));
    if (cursor) query.set("cursor", cursor);
    return this.#api("GET", `/search/?${query}`);
  }

  /**
   * Asks the server for the presence of users who share a thread with the
   * caller (the others are left out of the answer); resolves to `{userId:
   * {online, last_seen_at}}`. The library does this by itself for the
   * people of every thread it knows, on each (re)connect and when a thread
   * turns up; `presence` frames keep it current in between.
   */
  async fetchPresence(userIds) {
    const asked = [...new Set(userIds)];
    const users = {};
    // The server answers at most 100 users per request.
    for (let i = 0; i < asked.length; i += 100) {
      const framesBefore = this.#presenceFrames;
      const answer = await this.#api("GET", `/presence/?users=${asked.slice(i, i + 100).map(enc).join(",")}`);
      for (const [userId, state] of Object.entries(answer.users || {})) {
        users[userId] = state;
        // A frame that came while the answer was on its way is newer.
        if ((this.#presenceFrameAt.get(userId) || 0) > framesBefore) continue;
        this.#setPresence(userId, state);
      }
    }
    return users;
  }

  /** The last known presence of a user (`{online, last_seen_at}`), or null. */
  presence(userId) {
    return this.#presence.get(userId) || null;
  }

  #setPresence(userId, { online, last_seen_at: lastSeenAt = null }) {
    const known = this.#presence.get(userId);
    if (known && known.online === online && known.last_seen_at === lastSeenAt) return;
    this.#presence.set(userId, { online, last_seen_at: lastSeenAt });
    this.#emit("presence", { userId, online, lastSeenAt });
  }

  /** Asks for the presence of `userIds` (the caller aside) soon, batched with other asks. */
  #askPresence(userIds) {
    for (const userId of userIds) if (userId !== this.userId) this.#presenceWanted.add(userId);
    if (this.#presenceHeld || this.#presenceTimer || !this.#presenceWanted.size || this.#stopped) return;
    this.#presenceTimer = setTimeout(() => {
      this.#presenceTimer = null;
      const users = [...this.#presenceWanted];
      this.#presenceWanted.clear();
      // Not fatal: frames still come, and the next reconnect asks again.
      this.fetchPresence(users).catch(() => {});
    }, 0);
  }

  // ---- threads ---------------------------------------------------------

  #thread(threadId) {
    let thread = this.#threads.get(threadId);
    if (!thread) {
      thread = {
        id: threadId,
        info: null,
        lastSeq: 0,
        maxSeq: 0,
        myReadSeq: 0,
        readBy: new Map(),
        typing: new Map(),
        typingSince: new Map(),
        messages: new Map(),
        buffer: new Map(),
        filling: null,
        loaded: false,
        loading: null,
        loadingOlder: null,
        hasOlder: false,
        readDirty: false,
        myTypingAt: 0,
        myTypingTimer: null,
        baselineKnown: false,
        fetchingInfo: null,
        refill: false,
      };
      this.#threads.set(threadId, thread);
    }
    return thread;
  }

  async #fetchThread(threadId) {
    const info = await this.#api("GET", `/threads/${enc(threadId)}/`);
    this.#mergeThread(info);
    this.#emit("threads", { threads: this.threads() });
  }

  /**
   * Merges a thread object from the server; returns whether messages are
   * missing after the last delivered seq. `missedWhileAway`: the thread
   * turned up on a resume, so its unread messages arrived while the client
   * was away and are delivered as new.
   */
  #mergeThread(info, { missedWhileAway = false } = {}) {
    const thread = this.#thread(info.id);
    const before = this.unread(info.id);
    // Whoever is already online in a thread first seen now sends no frame
    // about it: ask.
    if (!thread.info) this.#askPresence((info.participants || []).filter((p) => !this.#presence.has(p)));
    thread.info = { ...thread.info, ...info, last_message: info.last_message ?? thread.info?.last_message ?? null };
    if (!thread.baselineKnown) {
      // A thread first seen now starts after its newest message (history
      // is paged in by loadMessages, never replayed as new messages), or,
      // on a resume, after what the caller has read (at most 200 back).
      thread.baselineKnown = true;
      const baseline = missedWhileAway
        ? Math.max(info.last_read_seq ?? info.last_seq, info.last_seq - 200)
        : info.last_seq;
      thread.lastSeq = Math.max(thread.lastSeq, baseline);
    }
    thread.maxSeq = Math.max(thread.maxSeq, info.last_seq, thread.lastSeq);
    if (info.last_read_seq != null) thread.myReadSeq = Math.max(thread.myReadSeq, info.last_read_seq);
    if (info.last_message?.sender_id && info.last_message.sender_id !== this.userId) {
      // A sender's own cursor moves to each message they send.
      const seen = thread.readBy.get(info.last_message.sender_id) || 0;
      thread.readBy.set(info.last_message.sender_id, Math.max(seen, info.last_message.seq));
    }
    this.#emit("thread", { threadId: info.id, thread: this.thread(info.id) });
    this.#emitUnread(thread, before);
    return thread.maxSeq > thread.lastSeq;
  }

  /** Known threads, most recent activity first. */
  threads() {
    return [...this.#threads.values()]
      .filter((t) => t.info)
      .map((t) => this.thread(t.id))
      .sort((a, b) => (b.activity_at || "").localeCompare(a.activity_at || ""));
  }

  /** One thread as the server describes it, with `unread_count`, `typing` (user ids) and `read_by` ({user: seq}) kept live. */
  thread(threadId) {
    const t = this.#threads.get(threadId);
    if (!t?.info) return null;
    return {
      ...t.info,
      last_seq: Math.max(t.info.last_seq, t.maxSeq),
      last_read_seq: t.myReadSeq,
      unread_count: this.unread(threadId),
      typing: [...t.typing.keys()],
      read_by: Object.fromEntries(t.readBy),
      has_older: t.hasOlder,
      loaded: t.loaded,
      activity_at: t.info.last_message_at || t.info.created_at,
    };
  }

  /** The loaded messages of a thread in seq order, then the caller's sends still on their way (`pending: true`). */
  messages(threadId) {
    const t = this.#threads.get(threadId);
    if (!t) return [];
    const stored = [...t.messages.values()].sort((a, b) => a.seq - b.seq);
    const ids = new Set(stored.map((m) => m.client_msg_id).filter(Boolean));
    const pending = [...this.#outbox.values()]
      .filter((e) => e.threadId === threadId && !ids.has(e.local.client_msg_id))
      .map((e) => e.local);
    return [...stored, ...pending];
  }

  /** The caller's unread count in a thread: its last seq less the caller's read cursor. */
  unread(threadId) {
    const t = this.#threads.get(threadId);
    if (!t) return 0;
    return Math.max(0, Math.max(t.maxSeq, t.lastSeq) - t.myReadSeq);
  }

  /** The caller's unread messages over every known thread. */
  totalUnread() {
    let total = 0;
    for (const id of this.#threads.keys()) total += this.unread(id);
    return total;
  }

  #emitUnread(thread, before) {
    const count = this.unread(thread.id);
    if (count !== before) this.#emit("unread", { threadId: thread.id, count, total: this.totalUnread() });
  }

  /**
   * Where one of the caller's messages stands: `sending`, `failed`, `sent`
   * (stored), `delivered` (every other participant online or active in
   * the thread since) or `read` (every other participant's read cursor is
   * at or past it). Null for other people's messages.
   */
  statusOf(threadId, message) {
    if (message.sender_id !== this.userId) return null;
    const entry = message.client_msg_id && this.#outbox.get(message.client_msg_id);
    if (message.seq == null) return entry?.failed ? "failed" : "sending";
    const t = this.#threads.get(threadId);
    const others = (t?.info?.participants || []).filter((p) => p !== this.userId);
    if (!others.length) return "sent";
    if (others.every((p) => (t.readBy.get(p) || 0) >= message.seq)) return "read";
    const here = (p) => this.#presence.get(p)?.online || (t.typingSince.get(p) || 0) >= message.seq;
    if (others.every(here)) return "delivered";
    return "sent";
  }

  // ---- delivery: each message once, in seq order ------------------------

  #accept(threadId, message) {
    if (!message || message.seq == null) return;
    const thread = this.#thread(threadId);
    if (!thread.info) {
      // A thread joined after the socket opened: learn what it is.
      thread.baselineKnown = true;
      thread.lastSeq = Math.max(thread.lastSeq, message.seq - 1);
      if (!thread.fetchingInfo) {
        thread.fetchingInfo = this.#fetchThread(threadId)
          .catch(() => {})
          .finally(() => {
            thread.fetchingInfo = null;
          });
      }
    }
    if (message.seq <= thread.lastSeq) {
      // Seen already; keep the fuller copy if it is loaded.
      return;
    }
    if (message.seq > thread.lastSeq + 1) {
      thread.buffer.set(message.seq, message);
      this.#fillGap(thread);
      return;
    }
    this.#deliver(thread, message);
    while (thread.buffer.has(thread.lastSeq + 1)) {
      const next = thread.buffer.get(thread.lastSeq + 1);
      thread.buffer.delete(next.seq);
      this.#deliver(thread, next);
    }
    for (const seq of thread.buffer.keys()) if (seq <= thread.lastSeq) thread.buffer.delete(seq);
  }

  #deliver(thread, message) {
    const before = this.unread(thread.id);
    thread.lastSeq = message.seq;
    thread.maxSeq = Math.max(thread.maxSeq, message.seq);
    if (thread.info) {
      thread.info.last_seq = Math.max(thread.info.last_seq, message.seq);
      thread.info.last_message = message;
      thread.info.last_message_at = message.created_at;
    }
    if (message.sender_id === this.userId) {
      thread.myReadSeq = Math.max(thread.myReadSeq, message.seq);
      const entry = message.client_msg_id && this.#outbox.get(message.client_msg_id);
      if (entry) {
        this.#outbox.delete(message.client_msg_id);
        entry.resolve(message);
      }
    } else if (message.sender_id) {
      thread.readBy.set(message.sender_id, Math.max(thread.readBy.get(message.sender_id) || 0, message.seq));
      this.#clearTyping(thread, message.sender_id);
    }
    if (thread.loaded || thread.loading) thread.messages.set(message.seq, message);
    this.#emit("message", { threadId: thread.id, message });
    this.#emitUnread(thread, before);
  }

  /** Reads what is missing after the last delivered seq, page by page. */
  #fillGap(thread) {
    if (thread.filling) {
      thread.refill = true;
      return thread.filling;
    }
    thread.filling = (async () => {
      do {
        thread.refill = false;
        let more = true;
        while (more) {
          const from = thread.lastSeq;
          const page = await this.#api(
            "GET",
            `/threads/${enc(thread.id)}/messages/?after_seq=${from}&limit=200`,
          );
          for (const message of page.results) this.#accept(thread.id, message);
          more = page.has_more && thread.lastSeq > from;
        }
      } while (thread.refill);
    })()
      .catch((error) => {
        this.#emit("error", { code: error.code || "catch_up_failed", message: error.message });
      })
      .finally(() => {
        thread.filling = null;
      });
    return thread.filling;
  }

  /** After (re)connecting: learn every thread's newest seq and read what was missed. */
  async #resume(gen) {
    this.#presenceHeld = true;
    try {
      await this.#resumeThreads(gen);
    } finally {
      this.#presenceHeld = false;
    }
    if (gen !== this.#gen) return;
    // Presence may have changed while the socket was down, and frames
    // only tell changes: ask again about everyone known, in one go.
    for (const thread of this.#threads.values()) this.#askPresence(thread.info?.participants || []);
  }

  async #resumeThreads(gen) {
    let cursor = null;
    const fills = [];
    for (;;) {
      const query = new URLSearchParams({ limit: "100" });
      if (cursor) query.set("cursor", cursor);
      const page = await this.#api("GET", `/threads/?${query}`);
      if (gen !== this.#gen) return;
      let anyBehind = false;
      for (const info of page.results) {
        const behind = this.#mergeThread(info, { missedWhileAway: this.#resumedOnce });
        if (behind) {
          fills.push(this.#fillGap(this.#thread(info.id)));
          anyBehind = true;
        }
      }
      cursor = page.next_cursor;
      if (!this.#resumedOnce) this.threadsCursor = cursor;
      // Threads come most recent activity first: once a page holds no
      // thread with missed messages, the older ones hold none either (and
      // on the first connect one page is the list; listThreads pages on).
      if (!cursor || !anyBehind) break;
    }
    // Edits and deletions made while away, in what is on screen.
    for (const thread of this.#threads.values()) {
      if (!thread.loaded || !thread.messages.size) continue;
      const oldest = Math.max(Math.min(...thread.messages.keys()), thread.lastSeq - 200);
      fills.push(
        this.#api("GET", `/threads/${enc(thread.id)}/messages/?after_seq=${Math.max(0, oldest - 1)}&limit=200`)
          .then((page) => page.results.forEach((m) => (m.seq <= thread.lastSeq ? this.#applyUpdate(m) : null)))
          .catch(() => {}),
      );
    }
    await Promise.all(fills);
    this.#resumedOnce = true;
    this.#emit("threads", { threads: this.threads() });
  }

  #applyUpdate(message) {
    if (!message) return;
    const thread = this.#threads.get(message.thread_id);
    if (!thread) return;
    const old = thread.messages.get(message.seq);
    if (thread.info?.last_message?.seq === message.seq) thread.info.last_message = message;
    if (!old) {
      if (message.seq > thread.lastSeq) this.#accept(message.thread_id, message);
      return;
    }
    if (old.content === message.content && old.edited_at === message.edited_at && old.deleted_at === message.deleted_at
      && JSON.stringify(old.flags) === JSON.stringify(message.flags)) return;
    thread.messages.set(message.seq, message);
    this.#emit("message_updated", { threadId: thread.id, message });
  }

  #onDeleted({ thread_id: threadId, seq, message_id: messageId }) {
    const thread = this.#threads.get(threadId);
    const old = thread?.messages.get(seq);
    if (old && !old.deleted_at) {
      thread.messages.set(seq, { ...old, content: "", deleted_at: new Date().toISOString() });
    } else if (old) {
      return;
    }
    if (thread?.info?.last_message?.seq === seq) {
      thread.info.last_message = { ...thread.info.last_message, content: "", deleted_at: new Date().toISOString() };
    }
    this.#emit("message_deleted", { threadId, seq, messageId });
  }

  // ---- sending ---------------------------------------------------------

  /**
   * Sends a text message. Returns the local echo at once (`pending: true`,
   * no seq); its `confirmed` promise resolves to the stored message when
   * acknowledged, however many reconnects that takes, and rejects with a
   * ChatApiError when the server refuses it.
   */
  send(threadId, content, { metadata } = {}) {
    const clientMsgId = uuid();
    const local = {
      id: null,
      thread_id: threadId,
      seq: null,
      sender_id: this.userId,
      message_type: "text",
      content,
      metadata: metadata || {},
      client_msg_id: clientMsgId,
      created_at: new Date().toISOString(),
      edited_at: null,
      deleted_at: null,
      pending: true,
    };
    const entry = { threadId, content, metadata, local, failed: null, retryTimer: null };
    const confirmed = new Promise((resolve, reject) => {
      entry.resolve = (message) => {
        clearTimeout(entry.retryTimer);
        this.#emit("ack", { threadId, clientMsgId, message });
        resolve(message);
      };
      entry.reject = reject;
    });
    confirmed.catch(() => {});
    local.confirmed = confirmed;
    this.#outbox.set(clientMsgId, entry);
    this.stopTyping(threadId);
    this.#emit("pending", { threadId, message: local });
    this.#transmit(entry);
    return local;
  }

  /** Sends a failed message again (same client_msg_id). */
  retry(clientMsgId) {
    const entry = this.#outbox.get(clientMsgId);
    if (!entry) return;
    entry.failed = null;
    this.#emit("pending", { threadId: entry.threadId, message: entry.local });
    this.#transmit(entry);
  }

  /** Gives up on a send that has not been stored. */
  discard(clientMsgId) {
    const entry = this.#outbox.get(clientMsgId);
    if (!entry) return;
    clearTimeout(entry.retryTimer);
    this.#outbox.delete(clientMsgId);
    entry.reject(new ChatApiError(0, "discarded", "discarded"));
    this.#emit("send_failed", { threadId: entry.threadId, clientMsgId, code: "discarded", message: "discarded", final: true });
  }

  /** How many sends wait for their acknowledgement. */
  get unacknowledged() {
    return [...this.#outbox.values()].filter((e) => !e.failed).length;
  }

  #transmit(entry) {
    const frame = {
      type: "chat_message",
      thread_id: entry.threadId,
      content: entry.content,
      client_msg_id: entry.local.client_msg_id,
    };
    if (entry.metadata) frame.metadata = entry.metadata;
    // When not connected the entry waits in the outbox for auth_ok.
    this.#send(frame);
  }

  #onAck(frame) {
    const entry = frame.client_msg_id && this.#outbox.get(frame.client_msg_id);
    if (frame.message) this.#accept(frame.message.thread_id, frame.message);
    // #accept resolved the entry if it delivered the message now; when it
    // was delivered before (or is buffered behind a gap), settle it here.
    if (entry && this.#outbox.has(frame.client_msg_id) && frame.message) {
      const thread = this.#thread(frame.message.thread_id);
      if (frame.message.seq <= thread.lastSeq) {
        this.#outbox.delete(frame.client_msg_id);
        entry.resolve(frame.message);
      }
    }
  }

  #onError(frame) {
    const entry = frame.client_msg_id && this.#outbox.get(frame.client_msg_id);
    if (!entry) {
      this.#emit("error", { code: frame.code, message: frame.message });
      return;
    }
    entry.tries = (entry.tries || 0) + 1;
    if (RETRYABLE.has(frame.code) && entry.tries < 8) {
      // Same client_msg_id: the server stores it at most once.
      clearTimeout(entry.retryTimer);
      entry.retryTimer = setTimeout(() => this.#transmit(entry), frame.code === "rate_limited" ? 1000 : 500);
      return;
    }
    // A refusal is final: the entry stays (failed) until retry() or
    // discard(), and is not sent again on a reconnect. `contact_blocked`
    // in particular would be refused again for the same text.
    entry.failed = { code: frame.code, message: frame.message, kinds: refusedKinds(frame) };
    entry.local.failed = entry.failed;
    entry.reject(new ChatApiError(400, frame.code, frame.message, null, entry.failed.kinds));
    this.#emit("send_failed", {
      threadId: entry.threadId,
      clientMsgId: frame.client_msg_id,
      code: frame.code,
      message: frame.message,
      kinds: entry.failed.kinds,
      final: true,
    });
  }

  // ---- read cursors ----------------------------------------------------

  /** Moves the caller's read cursor in a thread (default: to the newest delivered message). */
  markRead(threadId, upToSeq) {
    const thread = this.#thread(threadId);
    const seq = Math.min(upToSeq ?? thread.lastSeq, thread.lastSeq);
    if (seq <= thread.myReadSeq && !thread.readDirty) return;
    const before = this.unread(threadId);
    thread.myReadSeq = Math.max(thread.myReadSeq, seq);
    thread.readDirty = true;
    this.#emitUnread(thread, before);
    this.#sendRead(thread);
  }

  #sendRead(thread) {
    if (this.#send({ type: "mark_messages_read", thread_id: thread.id, up_to_seq: thread.myReadSeq })) {
      thread.readDirty = false;
    }
  }

  #onRead(threadId, userId, upToSeq) {
    const thread = this.#thread(threadId);
    if (userId === this.userId) {
      const before = this.unread(threadId);
      thread.myReadSeq = Math.max(thread.myReadSeq, upToSeq);
      this.#emitUnread(thread, before);
      return;
    }
    const seen = thread.readBy.get(userId) || 0;
    if (upToSeq <= seen) return;
    thread.readBy.set(userId, upToSeq);
    this.#emit("read", { threadId, userId, upToSeq });
  }

  // ---- typing ----------------------------------------------------------

  /** Call on every keystroke in a thread's composer: says "typing" (refreshed while it goes on) and "stopped" after a pause. */
  typing(threadId) {
    const thread = this.#thread(threadId);
    const now = Date.now();
    if (now - thread.myTypingAt >= this.#opts.typingRefreshMs) {
      if (this.#send({ type: "typing_indicator", thread_id: threadId, is_typing: true })) thread.myTypingAt = now;
    }
    clearTimeout(thread.myTypingTimer);
    thread.myTypingTimer = setTimeout(() => this.stopTyping(threadId), this.#opts.typingIdleMs);
  }

  /** Says the caller stopped typing (on send, on leaving the thread). */
  stopTyping(threadId) {
    const thread = this.#threads.get(threadId);
    if (!thread) return;
    clearTimeout(thread.myTypingTimer);
    thread.myTypingTimer = null;
    if (thread.myTypingAt) {
      thread.myTypingAt = 0;
      this.#send({ type: "typing_indicator", thread_id: threadId, is_typing: false });
    }
  }

  #onTyping(threadId, userId, isTyping) {
    if (userId === this.userId) return;
    const thread = this.#thread(threadId);
    clearTimeout(thread.typing.get(userId));
    if (isTyping) {
      thread.typingSince.set(userId, thread.lastSeq);
      // The server expires typing after 6 s without a refresh; so do we,
      // in case the "stopped" event is lost with a connection.
      thread.typing.set(userId, setTimeout(() => this.#clearTyping(thread, userId), this.#opts.typingExpiryMs));
    } else {
      thread.typing.delete(userId);
    }
    this.#emit("typing", { threadId, userIds: [...thread.typing.keys()] });
  }

  #clearTyping(thread, userId) {
    if (!thread.typing.has(userId)) return;
    clearTimeout(thread.typing.get(userId));
    thread.typing.delete(userId);
    this.#emit("typing", { threadId: thread.id, userIds: [...thread.typing.keys()] });
  }
}

/**
 * The kinds of contact details a `contact_blocked` refusal names (its
 * `kinds`: `["email", "phone"]`), or [] for any other refusal.
 */
function refusedKinds(error) {
  if (error?.code !== "contact_blocked" || !Array.isArray(error.kinds)) return [];
  return error.kinds.filter((kind) => typeof kind === "string");
}

function enc(value) {
  return encodeURIComponent(value);
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}
