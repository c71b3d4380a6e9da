// The gateway's web client, built on the browser library
// (/static/chat-client.js). Every piece of user data is inserted as text
// (textContent), never as HTML, and each message or name sits in its own
// bidi context so one right-to-left override cannot reorder its neighbours.

import { ChatClient, ChatApiError, tokenClaims } from "/static/chat-client.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "marketplace-chat-token";

let chat = null;
let current = null;
let countdown = null;
let nextCursor = null;
let loadingOlder = false;
/** The message a search result opened (`{threadId, seq}`), shown highlighted. */
let found = null;
const drafts = new Map();

/** An element with a class and text; children appended. Never parses HTML. */
function h(tag, className, text, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  node.append(...children);
  return node;
}

/** Text in its own bidi context, its direction from its own content. */
function isolated(tag, className, text) {
  const node = h(tag, className, text);
  node.dir = "auto";
  return node;
}

function initials(name) {
  const parts = String(name).split(/[\s._@-]+/).filter(Boolean);
  return (parts.length > 1 ? parts[0][0] + parts[1][0] : String(name).slice(0, 2)).toUpperCase();
}

/** A stable hue per user, so each person keeps a colour. */
function hue(name) {
  let n = 0;
  for (const c of String(name)) n = (n * 31 + c.codePointAt(0)) % 360;
  return n;
}

function avatar(node, name) {
  node.textContent = initials(name);
  node.dataset.hue = String(Math.floor(hue(name) / 30));
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long", year: "numeric" });
const shortDay = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });

function dayLabel(date) {
  const today = new Date();
  const yesterday = new Date(today);
  yesterday.setDate(today.getDate() - 1);
  if (date.toDateString() === today.toDateString()) return "Today";
  if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
  return dayFormat.format(date);
}

function listTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toDateString() === new Date().toDateString() ? timeFormat.format(date) : shortDay.format(date);
}

function money(amount, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(Number(amount));
  } catch {
    return `${amount} ${currency}`;
  }
}

function threadName(thread) {
  if (thread.title) return thread.title;
  const others = thread.participants.filter((p) => p !== chat.userId);
  return others.join(", ") || thread.participants.join(", ");
}

function others(thread) {
  return thread.participants.filter((p) => p !== chat.userId);
}

// ---- presence ------------------------------------------------------------

/** "online" if any of `users` is, "offline" if all of them are known to be away, else null (not known yet). */
function presenceOf(users) {
  const known = users.map((user) => chat.presence(user));
  if (known.some((state) => state?.online)) return "online";
  if (known.length && known.every((state) => state && !state.online)) return "offline";
  return null;
}

/** The dot on an avatar: green online, grey away. Decorative: the words are said beside it. */
function presenceDot(state) {
  const dot = h("span", `presence-dot ${state}`);
  dot.dataset.state = state;
  return dot;
}

/** When someone was last seen: "today at 14:05", "yesterday at 09:30", "on 3 Mar at 18:00". */
function lastSeenText(iso) {
  const date = new Date(iso);
  const day = dayLabel(date);
  const time = timeFormat.format(date);
  if (day === "Today" || day === "Yesterday") return `${day.toLowerCase()} at ${time}`;
  return `on ${shortDay.format(date)} at ${time}`;
}

/** One participant's presence in words, with its dot: "bob is online", "bob was last seen today at 14:05". */
function presenceLine(user) {
  const state = chat.presence(user);
  if (!state) return null;
  const line = h("span", "presence", null, presenceDot(state.online ? "online" : "offline"));
  line.dataset.user = user;
  line.dataset.state = state.online ? "online" : "offline";
  line.querySelector(".presence-dot").setAttribute("aria-hidden", "true");
  const name = isolated("span", "presence-name", user);
  if (state.online) {
    line.append(name, " is online");
  } else if (state.last_seen_at) {
    const when = h("time", null, lastSeenText(state.last_seen_at));
    when.dateTime = state.last_seen_at;
    line.append(name, " was last seen ", when);
  } else {
    line.append(name, " is offline");
  }
  return line;
}

function preview(message) {
  if (!message) return "No messages yet";
  if (message.deleted_at) return "Message deleted";
  const meta = message.metadata || {};
  switch (message.message_type) {
    case "payment":
      return `Payment requested: ${money(meta.amount, meta.currency)}`;
    case "dispute":
      return `Dispute opened: ${meta.reason ?? ""}`;
    case "job_update":
      return `Job ${meta.job_id ?? ""}: ${meta.status ?? ""}`;
    default: {
      const who = message.sender_id === chat.userId ? "You: " : "";
      return who + message.content;
    }
  }
}

// ---- the contact guard ---------------------------------------------------

/** What each kind of contact detail is called on the page. */
const KIND_WORDS = { email: "email address", phone: "phone number", link: "link", handle: "messaging or payment handle" };
const kindWords = (kinds) => (kinds || []).map((kind) => KIND_WORDS[kind] || kind).join(", ");
/** What the server puts in place of each finding under the `mask` policy. */
const MASK = "[contact hidden]";

/**
 * A message's content as nodes: text, and (in a masked message) each
 * `[contact hidden]` in a span of its own, so it reads as a placeholder.
 * Still text either way: nothing here is parsed as HTML.
 */
function contentNodes(content, masked) {
  if (!masked) return [content];
  const nodes = [];
  content.split(MASK).forEach((part, i) => {
    if (i) nodes.push(h("span", "masked", MASK));
    if (part) nodes.push(part);
  });
  return nodes;
}

// ---- sign in / out -------------------------------------------------------

function showSignIn(error = "") {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = error;
  $("token").setAttribute("aria-invalid", error ? "true" : "false");
  $("token").focus();
}

function signIn(token) {
  const claims = tokenClaims(token);
  if (!claims.sub) {
    showSignIn("That is not a valid token: paste the whole token.");
    return;
  }
  if (claims.exp && claims.exp * 1000 < Date.now()) {
    showSignIn("This token has expired: ask for a new one.");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = claims.sub;
  avatar($("me-avatar"), claims.sub);
  chat = new ChatClient({ token });
  wire(chat);
  chat.connect().then(
    () => {
      nextCursor = chat.threadsCursor;
      renderThreads();
    },
    (error) => {
      if (chat?.state === "unauthorized") {
        sessionStorage.removeItem(TOKEN_KEY);
        chat.close();
        chat = null;
        showSignIn(`The server refused this token (${error.message}).`);
      }
    },
  );
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  chat?.close();
  chat = null;
  current = null;
  found = null;
  closeSearch();
  $("search-q").value = "";
  $("threads").replaceChildren();
  $("thread-view").hidden = true;
  $("empty").hidden = false;
  document.title = "Marketplace chat";
  showSignIn();
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return showSignIn("Paste a token first.");
  $("token").value = "";
  signIn(token);
});
$("signout").addEventListener("click", signOut);

// ---- events from the library ---------------------------------------------

function wire(client) {
  client.on("connection", showConnection);
  client.on("threads", renderThreads);
  client.on("thread", scheduleThreads);
  client.on("unread", () => {
    scheduleThreads();
    const total = client.totalUnread();
    document.title = total ? `(${total}) Marketplace chat` : "Marketplace chat";
  });
  client.on("message", ({ threadId, message }) => {
    scheduleThreads();
    if (threadId !== current) return;
    const stick = nearBottom();
    renderMessages(stick);
    if (message.sender_id !== client.userId) readIfSeen();
  });
  for (const type of ["pending", "ack", "send_failed", "message_updated", "message_deleted", "read"]) {
    client.on(type, ({ threadId }) => {
      if (type !== "read") scheduleThreads();
      if (threadId === current) renderMessages(type === "pending" || nearBottom());
    });
  }
  client.on("send_failed", ({ threadId, code, kinds }) => {
    if (code !== "contact_blocked") return;
    // Said once for screen readers; the message itself shows why.
    if (threadId === current) {
      const words = kindWords(kinds);
      $("composer-error").textContent = `Your message was not sent: it contains contact details${words ? ` (${words})` : ""}.`;
    }
    // The thread's policy changed since it was read: show the new one.
    client.refreshThread(threadId).then(() => {
      if (threadId === current) renderHeader();
    }, () => {});
  });
  client.on("typing", ({ threadId }) => {
    if (threadId === current) renderTyping();
  });
  client.on("presence", () => {
    scheduleThreads();
    if (current) renderHeader();
  });
}

function showConnection(event) {
  clearInterval(countdown);
  const conn = $("conn");
  const banner = $("banner");
  const text = $("banner-text");
  conn.dataset.state = event.state;
  const waiting = () => {
    const seconds = Math.max(0, Math.ceil((event.retryAt - Date.now()) / 1000));
    return seconds > 0 ? `Reconnecting in ${seconds} s` : "Reconnecting…";
  };
  switch (event.state) {
    case "connected":
      conn.textContent = "Connected";
      banner.hidden = true;
      return;
    case "connecting":
      conn.textContent = "Connecting…";
      banner.hidden = true;
      return;
    case "reconnecting":
    case "offline": {
      const update = () => {
        const line = event.state === "offline" ? "Offline" : event.retryAt ? waiting() : "Reconnecting…";
        conn.textContent = line;
        text.textContent = `${line}. You can keep writing: messages are sent when the connection is back.`;
      };
      update();
      if (event.retryAt) countdown = setInterval(update, 250);
      banner.dataset.state = event.state;
      banner.hidden = false;
      return;
    }
    case "unauthorized":
      conn.textContent = "Signed out";
      return;
    default:
      conn.textContent = "";
  }
}
$("retry-now").addEventListener("click", () => chat?.reconnectNow());

// ---- thread list ---------------------------------------------------------

let threadsQueued = false;
function scheduleThreads() {
  if (threadsQueued) return;
  threadsQueued = true;
  requestAnimationFrame(() => {
    threadsQueued = false;
    renderThreads();
  });
}

function renderThreads() {
  if (!chat) return;
  const threads = chat.threads();
  const items = threads.map((thread) => {
    const li = h("li", "thread-item");
    const button = h("button", `thread${thread.id === current ? " active" : ""}`);
    button.type = "button";
    button.dataset.id = thread.id;
    if (thread.id === current) button.setAttribute("aria-current", "true");
    const face = h("span", "avatar");
    face.setAttribute("aria-hidden", "true");
    const who = others(thread);
    avatar(face, thread.title || who[0] || "?");
    const presence = presenceOf(who);
    if (presence) face.append(presenceDot(presence));
    const name = isolated("span", "name", threadName(thread));
    const top = h("span", "thread-top", null, name,
      h("time", "when", listTime(thread.last_message?.created_at || thread.created_at)));
    // The dot is in the (hidden) avatar: its meaning goes with the name.
    if (presence) top.insertBefore(h("span", "visually-hidden presence-label", presence === "online" ? " (online)" : " (offline)"), name.nextSibling);
    const bottom = h("span", "thread-bottom", null, isolated("span", "preview", preview(thread.last_message)));
    if (thread.unread_count > 0) {
      const badge = h("span", "unread", String(thread.unread_count));
      badge.setAttribute("aria-label", `${thread.unread_count} unread`);
      bottom.append(badge);
    }
    const body = h("span", "thread-body", null, top, bottom);
    if (thread.job_id) body.insertBefore(isolated("span", "job-chip", `Job ${thread.job_id}`), bottom);
    if (thread.unread_count > 0) button.classList.add("has-unread");
    button.append(face, body);
    button.addEventListener("click", () => openThread(thread.id));
    li.append(button);
    return li;
  });
  $("threads").replaceChildren(...items);
  $("no-threads").hidden = threads.length > 0;
  $("more-threads").hidden = !nextCursor;
}

$("more-threads").addEventListener("click", async () => {
  if (!nextCursor) return;
  const page = await chat.listThreads({ limit: 30, cursor: nextCursor });
  nextCursor = page.next_cursor;
  renderThreads();
});

$("new-thread").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const participants = $("nt-participants").value.split(",").map((p) => p.trim()).filter(Boolean);
  try {
    const thread = await chat.createThread({
      participants,
      jobId: $("nt-job").value.trim() || undefined,
      title: $("nt-title").value.trim() || undefined,
    });
    form.reset();
    $("new-thread-box").open = false;
    await openThread(thread.id);
  } catch (error) {
    showError(form, error, "nt-error");
  }
});

// ---- search --------------------------------------------------------------

/** The search on screen: its query, the results so far, the next page's cursor. */
let search = null;
/** Bumped by each search, so an answer to an older one is dropped. */
let searchGeneration = 0;
let searchTimer = null;

/** Letters folded the way the server folds them: lowercase, no accents. */
const FOLDS = { "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ı": "i" };
const foldChar = (c) => {
  const lower = c.toLowerCase();
  return FOLDS[lower] ?? lower.normalize("NFD").replace(/\p{M}/gu, "");
};
const queryWords = (q) => [...q].map(foldChar).join("").split(/[^\p{L}\p{N}]+/u).filter(Boolean);

/** The [start, end) ranges of `text`'s words that start with one of `words`, in order, merged. */
function matchRanges(text, words) {
  // The folded text, and where each of its code units came from in `text`.
  let folded = "";
  const origin = [];
  let at = 0;
  for (const c of text) {
    const f = foldChar(c);
    for (let k = 0; k < f.length; k++) origin.push(at);
    folded += f;
    at += c.length;
  }
  origin.push(text.length);
  const ranges = [];
  for (const word of words) {
    const escaped = word.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    for (const m of folded.matchAll(new RegExp(`(?<![\\p{L}\\p{N}])${escaped}[\\p{L}\\p{N}]*`, "gu"))) {
      ranges.push([origin[m.index], origin[m.index + m[0].length]]);
    }
  }
  ranges.sort((a, b) => a[0] - b[0]);
  const merged = [];
  for (const range of ranges) {
    const last = merged.at(-1);
    if (last && range[0] <= last[1]) last[1] = Math.max(last[1], range[1]);
    else merged.push([...range]);
  }
  return merged;
}

/** A short piece of `text` around its first match, the matching words in <mark> (as text). */
function snippet(text, words) {
  const ranges = matchRanges(text, words);
  let from = 0;
  let to = text.length;
  if (text.length > 140) {
    const first = ranges[0]?.[0] ?? 0;
    from = Math.max(0, first - 40);
    to = Math.min(text.length, from + 140);
    if (from > 0) from = Math.max(text.lastIndexOf(" ", from) + 1, from - 15);
  }
  const node = isolated("span", "hit-text", null);
  if (from > 0) node.append("…");
  let at = from;
  for (const [start, end] of ranges) {
    if (end <= from || start >= to) continue;
    const s = Math.max(start, from);
    const e = Math.min(end, to);
    if (s > at) node.append(text.slice(at, s));
    node.append(h("mark", null, text.slice(s, e)));
    at = e;
  }
  if (at < to) node.append(text.slice(at, to));
  if (to < text.length) node.append("…");
  return node;
}

function showSearchError(text) {
  $("search-error").textContent = text;
  $("search-q").setAttribute("aria-invalid", text ? "true" : "false");
}

function setSearching(on) {
  $("sidebar").classList.toggle("searching", on);
  $("search-clear").hidden = !on && !$("search-q").value;
}

/** Starts a search for what is in the box; `explicit` (Enter) also explains a query too short. */
function startSearch(explicit) {
  clearTimeout(searchTimer);
  const q = $("search-q").value.trim();
  if (!q) {
    showSearchError("");
    closeSearch();
    return;
  }
  const length = [...q].length;
  if (length < 2 || length > 200) {
    if (explicit || length > 200) {
      showSearchError(length < 2 ? "Type at least 2 characters to search." : "A search can be at most 200 characters.");
    }
    return;
  }
  if (search?.q === q && !explicit) return;
  showSearchError("");
  runSearch(q, false);
}

async function runSearch(q, more) {
  if (!chat) return;
  const generation = ++searchGeneration;
  if (!more) {
    search = { q, results: [], cursor: null, loading: true };
    $("search-status").textContent = "Searching…";
    $("search-list").replaceChildren();
    $("search-more").hidden = true;
    setSearching(true);
  }
  search.loading = true;
  try {
    const page = await chat.search(q, { cursor: more ? search.cursor : undefined });
    if (generation !== searchGeneration) return;
    search.results.push(...page.results);
    search.cursor = page.next_cursor;
    search.loading = false;
    renderSearch(more);
    // Threads not in the list yet (it is paged): learn their names.
    const unknown = [...new Set(page.results.map((r) => r.thread_id))].filter((id) => !chat.thread(id));
    if (unknown.length) {
      await Promise.all(unknown.map((id) => chat.refreshThread(id).catch(() => {})));
      if (generation === searchGeneration) renderSearch(false);
    }
  } catch (error) {
    if (generation !== searchGeneration) return;
    search.loading = false;
    $("search-status").textContent = "";
    showSearchError(error instanceof ChatApiError
      ? error.message.replace(/^q: /, "Search: ")
      : `Could not reach the server: ${error.message}`);
  }
}

function renderSearch(keepFocus) {
  if (!search) return;
  const words = queryWords(search.q);
  const items = search.results.map(({ thread_id: threadId, message }) => {
    const thread = chat.thread(threadId);
    const button = h("button", "hit");
    button.type = "button";
    button.dataset.threadId = threadId;
    button.dataset.seq = String(message.seq);
    const top = h("span", "hit-top", null,
      isolated("span", "name", thread ? threadName(thread) : "Conversation"),
      h("time", "when", listTime(message.created_at)));
    button.append(top);
    if (thread?.job_id) button.append(isolated("span", "job-chip", `Job ${thread.job_id}`));
    const who = message.sender_id === chat.userId ? "You" : message.sender_id || "System";
    const text = message.content || preview(message);
    button.append(h("span", "hit-body", null, isolated("span", "hit-sender", `${who}: `), snippet(text, words)));
    button.addEventListener("click", () => openThread(threadId, { at: message.seq }));
    return h("li", null, null, button);
  });
  const list = $("search-list");
  const before = list.children.length;
  list.replaceChildren(...items);
  const count = search.results.length;
  $("search-status").textContent = count === 0
    ? `No messages match “${search.q}”.`
    : `${count} message${count === 1 ? "" : "s"} found${search.cursor ? ", more available" : ""}.`;
  $("search-more").hidden = !search.cursor;
  // After "More results", the keyboard goes on from the first new one.
  if (keepFocus && items[before]) items[before].querySelector("button").focus();
}

function closeSearch() {
  clearTimeout(searchTimer);
  searchGeneration++;
  search = null;
  $("search-list").replaceChildren();
  $("search-status").textContent = "";
  setSearching(false);
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  startSearch(true);
});
$("search-q").addEventListener("input", () => {
  showSearchError("");
  $("search-clear").hidden = !$("search-q").value;
  clearTimeout(searchTimer);
  if (!$("search-q").value.trim()) closeSearch();
  else searchTimer = setTimeout(() => startSearch(false), 350);
});
$("search-q").addEventListener("keydown", (event) => {
  if (event.key === "Escape" && ($("search-q").value || search)) {
    event.preventDefault();
    $("search-q").value = "";
    showSearchError("");
    closeSearch();
  }
});
$("search-clear").addEventListener("click", () => {
  $("search-q").value = "";
  showSearchError("");
  closeSearch();
  $("search-q").focus();
});
$("search-more").addEventListener("click", () => {
  if (search?.cursor && !search.loading) runSearch(search.q, true);
});

// ---- the open thread -----------------------------------------------------

/**
 * Opens a thread; `at` (a seq) shows that message highlighted, loading
 * older pages until it is there (a search result).
 */
async function openThread(threadId, { at = null } = {}) {
  if (current && current !== threadId) {
    drafts.set(current, $("text").value);
    chat.stopTyping(current);
  }
  current = threadId;
  found = at == null ? null : { threadId, seq: at };
  $("composer-error").textContent = "";
  cancelEdit();
  $("empty").hidden = true;
  $("thread-view").hidden = false;
  $("app").classList.add("show-thread");
  $("actions").hidden = true;
  $("actions-toggle").setAttribute("aria-expanded", "false");
  $("text").value = drafts.get(threadId) || "";
  renderHeader();
  renderThreads();
  $("log").replaceChildren(h("p", "log-note", "Loading messages…"));
  $("log").setAttribute("aria-busy", "true");
  renderTyping();
  // The policy may have changed since the list was read.
  chat.refreshThread(threadId).then(() => {
    if (current === threadId) renderHeader();
  }, () => {});
  try {
    await chat.loadMessages(threadId);
    if (at != null) await chat.loadUntil(threadId, at);
  } catch (error) {
    if (current !== threadId) return;
    $("log").replaceChildren(h("p", "log-note error", `Could not load messages: ${error.message}`));
    $("log").removeAttribute("aria-busy");
    return;
  }
  if (current !== threadId) return;
  $("log").removeAttribute("aria-busy");
  const target = at != null && showFound();
  if (!target) {
    renderMessages(true);
    readIfSeen();
    $("text").focus();
  }
}

/** Scrolls to the highlighted message and focuses it; false if it is not on the page. */
function showFound() {
  renderMessages(false);
  const row = found && $("log").querySelector(`[data-seq="${found.seq}"]`);
  if (!row) {
    if (found) alertInLog("That message is no longer in this conversation.");
    return false;
  }
  row.scrollIntoView({ block: "center" });
  row.focus({ preventScroll: true });
  readIfSeen();
  return true;
}

function renderHeader() {
  const thread = chat.thread(current);
  if (!thread) return;
  // The header may grow a line: the newest messages stay in view.
  const stick = nearBottom();
  $("thread-title").textContent = threadName(thread);
  avatar($("thread-avatar"), thread.title || others(thread)[0] || "?");
  const presence = presenceOf(others(thread));
  if (presence) $("thread-avatar").append(presenceDot(presence));
  const parts = [`With ${others(thread).join(", ") || "nobody else"}`];
  if (thread.job_id) parts.push(`Job ${thread.job_id}`);
  $("thread-sub").textContent = parts.join(" · ");
  const lines = others(thread).map(presenceLine).filter(Boolean);
  $("thread-presence").replaceChildren(...lines.flatMap((line, i) => (i ? [" · ", line] : [line])));
  $("thread-presence").hidden = !lines.length;
  const policy = thread.contact_policy === "mask"
    ? "Contact details are hidden in this conversation."
    : thread.contact_policy === "block"
      ? "Messages with contact details are not sent in this conversation."
      : "";
  $("thread-policy").textContent = policy;
  $("thread-policy").hidden = !policy;
  if (stick) $("log").scrollTop = $("log").scrollHeight;
  $("job-id").value = $("job-id").value || thread.job_id || "";
}

$("back").addEventListener("click", () => {
  $("app").classList.remove("show-thread");
  if (current) drafts.set(current, $("text").value);
  chat?.stopTyping(current);
  const leaving = current;
  current = null;
  found = null;
  renderThreads();
  $("thread-view").hidden = true;
  $("empty").hidden = false;
  document.querySelector(`.thread[data-id="${CSS.escape(leaving)}"]`)?.focus();
});

function nearBottom() {
  const log = $("log");
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}

/** Marks the open thread read when its newest messages are on screen. */
function readIfSeen() {
  if (!current || document.visibilityState !== "visible" || !nearBottom()) return;
  if (chat.unread(current) > 0) chat.markRead(current);
}
document.addEventListener("visibilitychange", readIfSeen);

$("log").addEventListener("scroll", async () => {
  const log = $("log");
  if (nearBottom()) readIfSeen();
  if (log.scrollTop > 120 || loadingOlder || !current || !chat.thread(current)?.has_older) return;
  loadingOlder = true;
  const threadId = current;
  const fromBottom = log.scrollHeight - log.scrollTop;
  try {
    await chat.loadOlder(threadId);
  } finally {
    loadingOlder = false;
  }
  if (threadId !== current) return;
  renderMessages(false);
  log.scrollTop = log.scrollHeight - fromBottom;
});

// ---- messages ------------------------------------------------------------

/** How one of the caller's messages stands: the ticks, and the words. */
const STATUS_TEXT = {
  sending: ["", "Sending…"],
  failed: ["!", "Not sent"],
  sent: ["✓", "Sent"],
  delivered: ["✓✓", "Delivered"],
  read: ["✓✓", "Read"],
};

function renderMessages(scrollToEnd) {
  if (!chat || !current) return;
  const thread = chat.thread(current);
  const messages = chat.messages(current);
  const log = $("log");
  const nodes = [];
  if (thread?.has_older) nodes.push(h("p", "log-note", "Scroll up for earlier messages"));
  else if (messages.length) nodes.push(h("p", "log-note", "This is the start of the conversation"));
  else nodes.push(h("p", "log-note", "No messages yet. Say hello!"));
  let lastDay = null;
  let lastSender;
  // The words of a status go on the caller's latest message only (and on
  // any still on its way); older ones keep their ticks.
  const latestMine = messages.findLast((m) => m.sender_id === chat.userId && m.message_type === "text" && !m.deleted_at);
  for (const message of messages) {
    const date = new Date(message.created_at);
    const day = date.toDateString();
    if (day !== lastDay) {
      const separator = h("div", "day", null, h("span", null, dayLabel(date)));
      separator.setAttribute("role", "separator");
      nodes.push(separator);
      lastDay = day;
      lastSender = undefined;
    }
    const node = renderMessage(message, message.sender_id !== lastSender || message.message_type !== "text",
      message === latestMine || message.seq == null);
    if (found && found.threadId === current && message.seq === found.seq) {
      // The search result: marked, and focusable so the keyboard lands on it.
      node.classList.add("found");
      node.tabIndex = -1;
    }
    nodes.push(node);
    lastSender = message.message_type === "text" ? message.sender_id : undefined;
  }
  const editingSeq = editing?.seq;
  log.replaceChildren(...nodes);
  if (editingSeq != null) restoreEdit();
  if (scrollToEnd) log.scrollTop = log.scrollHeight;
}

function renderMessage(message, firstOfGroup, statusInWords) {
  switch (message.message_type) {
    case "payment":
    case "dispute":
    case "job_update":
      return typedCard(message);
    case "system": {
      const node = h("div", "system-msg", null, isolated("span", "text", message.content),
        h("time", "time", timeFormat.format(new Date(message.created_at))));
      node.dataset.seq = String(message.seq);
      return node;
    }
    default:
      return textMessage(message, firstOfGroup, statusInWords);
  }
}

function typedCard(message) {
  const meta = message.metadata || {};
  const card = h("article", `card ${message.message_type.replace("_", "-")}`);
  card.dataset.seq = String(message.seq);
  card.dataset.type = message.message_type;
  const by = message.sender_id ? ` by ${message.sender_id}` : "";
  const when = timeFormat.format(new Date(message.created_at));
  if (message.message_type === "payment") {
    card.append(
      h("div", "card-kind", "Payment requested"),
      isolated("div", "amount", money(meta.amount, meta.currency)),
      h("div", "card-detail", null, h("span", "currency", meta.currency ?? ""),
        meta.job_id ? isolated("span", "job", ` · Job ${meta.job_id}`) : ""),
    );
  } else if (message.message_type === "dispute") {
    card.append(
      h("div", "card-kind", "Dispute opened"),
      isolated("div", "reason", meta.reason ?? message.content),
    );
    if (meta.details) card.append(isolated("p", "details", meta.details));
  } else {
    card.append(
      h("div", "card-kind", "Job update"),
      h("div", "card-detail", null, isolated("span", "job", `Job ${meta.job_id ?? ""}`), " ",
        isolated("span", `status-badge status-${String(meta.status).replace(/[^a-z_]/gi, "")}`, meta.status ?? "")),
    );
    if (meta.note) card.append(isolated("p", "details", meta.note));
  }
  card.append(h("div", "card-meta", `${when}${by}`));
  return card;
}

function textMessage(message, firstOfGroup, statusInWords) {
  const mine = message.sender_id === chat.userId;
  const masked = message.flags?.length > 0 && message.content.includes(MASK);
  const row = h("div", `msg ${mine ? "mine" : "theirs"}${firstOfGroup ? " first" : ""}`);
  if (message.seq != null) row.dataset.seq = String(message.seq);
  if (message.client_msg_id) row.dataset.clientMsgId = message.client_msg_id;
  if (!mine && firstOfGroup && message.sender_id) row.append(isolated("div", "sender", message.sender_id));
  const bubble = h("div", "bubble");
  if (message.deleted_at) {
    bubble.classList.add("deleted");
    bubble.append(h("p", "text", mine ? "You deleted this message" : "This message was deleted"));
  } else {
    const text = isolated("p", "text", null);
    text.append(...contentNodes(message.content, masked));
    bubble.append(text);
  }
  if (message.flags?.length && !message.deleted_at) {
    // Discreet: a line under the text, saying what was found.
    const icon = h("span", "flag-icon", "⚠");
    icon.setAttribute("aria-hidden", "true");
    const note = h("p", "flag", null, icon,
      `${masked ? "Contact details hidden" : "Contact details detected"}: ${kindWords(message.flags)}`);
    note.title = "Keeping payments and contact on the platform keeps you protected if something goes wrong.";
    bubble.append(note);
  }
  const meta = h("div", "meta", null, h("time", "time", timeFormat.format(new Date(message.created_at))));
  if (message.edited_at && !message.deleted_at) meta.append(h("span", "edited", "edited"));
  const status = message.deleted_at ? null : chat.statusOf(current, message);
  if (status) {
    const [mark, label] = STATUS_TEXT[status];
    const node = h("span", `status ${status}`, statusInWords ? `${mark} ${label}`.trim() : mark);
    node.title = label;
    if (!statusInWords) {
      node.setAttribute("aria-label", label);
      node.setAttribute("role", "img");
    }
    meta.append(node);
  }
  bubble.append(meta);
  row.append(bubble);
  if (mine && status === "failed" && message.failed?.code === "contact_blocked") {
    // Refused for good: sending the same text again would be refused again.
    row.classList.add("blocked");
    const edit = h("button", "ghost small", "Edit");
    edit.type = "button";
    edit.setAttribute("aria-label", "Edit and send again");
    edit.addEventListener("click", () => {
      const draft = $("text").value;
      $("text").value = draft ? `${message.content}\n${draft}` : message.content;
      chat.discard(message.client_msg_id);
      autosize();
      $("text").focus();
    });
    const discard = h("button", "ghost small", "Discard");
    discard.type = "button";
    discard.addEventListener("click", () => chat.discard(message.client_msg_id));
    const kinds = kindWords(message.failed.kinds);
    const why = h("span", "field-error send-error",
      `This message was not sent: it contains contact details${kinds ? ` (${kinds})` : ""}.`);
    row.append(h("div", "msg-actions visible", null, why, edit, discard));
  } else if (mine && status === "failed") {
    const retry = h("button", "ghost small", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => chat.retry(message.client_msg_id));
    const discard = h("button", "ghost small", "Discard");
    discard.type = "button";
    discard.addEventListener("click", () => chat.discard(message.client_msg_id));
    row.append(h("div", "msg-actions visible", null,
      h("span", "field-error", message.failed?.message || "Not sent"), retry, discard));
  } else if (mine && message.id && !message.deleted_at) {
    const edit = h("button", "ghost small", "Edit");
    edit.type = "button";
    edit.setAttribute("aria-label", "Edit message");
    edit.addEventListener("click", () => startEdit(message));
    const remove = h("button", "ghost small", "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", "Delete message");
    remove.addEventListener("click", () => confirmDelete(remove, message));
    row.append(h("div", "msg-actions", null, edit, remove));
  }
  return row;
}

function confirmDelete(button, message) {
  if (button.dataset.armed) {
    chat.deleteMessage(message.id).catch((error) => alertInLog(`Could not delete: ${error.message}`));
    return;
  }
  button.dataset.armed = "1";
  button.textContent = "Delete for everyone?";
  button.classList.add("danger-text");
  setTimeout(() => {
    if (!button.isConnected) return;
    delete button.dataset.armed;
    button.textContent = "Delete";
    button.classList.remove("danger-text");
  }, 4000);
}

function alertInLog(text) {
  const note = h("p", "log-note error", text);
  note.setAttribute("role", "alert");
  $("log").append(note);
}

// ---- editing -------------------------------------------------------------

let editing = null;

function startEdit(message) {
  editing = { seq: message.seq, id: message.id, value: message.content, error: "" };
  restoreEdit();
}

function restoreEdit() {
  if (!editing) return;
  const row = $("log").querySelector(`.msg[data-seq="${editing.seq}"]`);
  if (!row) return;
  const form = h("form", "edit-form");
  form.noValidate = true;
  const label = h("label", "visually-hidden", "Edit message");
  label.htmlFor = "edit-text";
  const input = h("textarea");
  input.id = "edit-text";
  input.rows = 2;
  input.value = editing.value;
  input.setAttribute("aria-describedby", "edit-error edit-hint");
  const error = h("p", "field-error", editing.error);
  error.id = "edit-error";
  error.setAttribute("role", "alert");
  const hint = h("p", "hint", "Enter saves · Esc cancels");
  hint.id = "edit-hint";
  const save = h("button", "primary small", "Save");
  const cancel = h("button", "ghost small", "Cancel");
  cancel.type = "button";
  cancel.addEventListener("click", cancelEdit);
  form.append(label, input, error, h("div", "edit-buttons", null, hint, cancel, save));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit(input.value);
  });
  input.addEventListener("input", () => {
    editing.value = input.value;
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      cancelEdit();
    } else if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      saveEdit(input.value);
    }
  });
  row.querySelector(".bubble").replaceWith(form);
  row.querySelector(".msg-actions")?.remove();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

async function saveEdit(value) {
  if (!editing) return;
  const target = editing;
  try {
    await chat.editMessage(target.id, value);
    if (editing === target) editing = null;
    renderMessages(false);
    $("text").focus();
  } catch (error) {
    const kinds = kindWords(error.kinds);
    target.error = error.code === "contact_blocked"
      ? `Not saved: the new text contains contact details${kinds ? ` (${kinds})` : ""}.`
      : error.message;
    renderMessages(false);
  }
}

function cancelEdit() {
  if (!editing) return;
  editing = null;
  renderMessages(false);
  $("text").focus();
}

// ---- composing -----------------------------------------------------------

function sendText() {
  const content = $("text").value;
  if (!content.trim() || !current) return;
  $("composer-error").textContent = "";
  chat.send(current, content);
  $("text").value = "";
  drafts.delete(current);
  autosize();
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  sendText();
  $("text").focus();
});
$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendText();
  }
});
$("text").addEventListener("input", () => {
  autosize();
  if (current && $("text").value) chat.typing(current);
});

function autosize() {
  const text = $("text");
  text.style.height = "auto";
  text.style.height = `${Math.min(text.scrollHeight, 160)}px`;
}

function renderTyping() {
  const thread = current && chat.thread(current);
  const who = thread ? thread.typing : [];
  $("typing").textContent = who.length === 0 ? ""
    : who.length === 1 ? `${who[0]} is typing…`
      : `${who.slice(0, -1).join(", ")} and ${who.at(-1)} are typing…`;
}

// ---- actions: payment, dispute, job update --------------------------------

$("actions-toggle").addEventListener("click", () => {
  const open = $("actions").hidden;
  $("actions").hidden = !open;
  $("actions-toggle").setAttribute("aria-expanded", String(open));
  if (open) $("pay-amount").focus();
});

function clearErrors(form) {
  for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

/** Shows a refusal next to the field it names ("amount: …"), else under the form. */
function showError(form, error, fallbackId) {
  const message = error instanceof ChatApiError ? error.message : `Could not reach the server: ${error.message}`;
  const field = /^([a-z_]+)(\[\d+\])?:/.exec(message)?.[1];
  const input = field && form.querySelector(`[data-field="${field}"]`);
  if (input) {
    input.setAttribute("aria-invalid", "true");
    const reason = message.slice(message.indexOf(":") + 1).trim();
    $(input.getAttribute("aria-describedby")).textContent = reason.charAt(0).toUpperCase() + reason.slice(1);
    input.focus();
  } else {
    $(fallbackId).textContent = message;
  }
}

function action(formId, errorId, run) {
  $(formId).addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    clearErrors(form);
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await run();
      form.reset();
      renderHeader();
      $("actions").hidden = true;
      $("actions-toggle").setAttribute("aria-expanded", "false");
      renderMessages(true);
    } catch (error) {
      showError(form, error, errorId);
    } finally {
      button.disabled = false;
    }
  });
}

action("pay-form", "pay-error", () => chat.initiatePayment(current, {
  amount: $("pay-amount").value.trim(),
  currency: $("pay-currency").value.trim().toUpperCase(),
  jobId: chat.thread(current)?.job_id || undefined,
}));
action("dispute-form", "dispute-error", () => chat.createDispute(current, {
  reason: $("dispute-reason").value.trim(),
  details: $("dispute-details").value.trim() || undefined,
}));
action("job-form", "job-error", () => chat.postJobUpdate(current, {
  jobId: $("job-id").value.trim(),
  status: $("job-status").value.trim(),
  note: $("job-note").value.trim() || undefined,
}));

// ---- start ---------------------------------------------------------------

// A link may carry the token in its fragment (never sent to the server);
// it is moved to this tab's session storage and removed from the address.
const fromLink = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromLink) history.replaceState(null, "", location.pathname + location.search);
const saved = fromLink || sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved);
else showSignIn();
