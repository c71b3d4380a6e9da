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
    if (who.some((p) => chat.presence(p)?.online)) face.append(h("span", "presence-dot"));
    const top = h("span", "thread-top", null, isolated("span", "name", threadName(thread)),
      h("time", "when", listTime(thread.last_message?.created_at || thread.created_at)));
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

// ---- the open thread -----------------------------------------------------

async function openThread(threadId) {
  if (current && current !== threadId) {
    drafts.set(current, $("text").value);
    chat.stopTyping(current);
  }
  current = threadId;
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
  renderTyping();
  try {
    await chat.loadMessages(threadId);
  } catch (error) {
    $("log").replaceChildren(h("p", "log-note error", `Could not load messages: ${error.message}`));
    return;
  }
  if (current !== threadId) return;
  renderMessages(true);
  readIfSeen();
  $("text").focus();
}

function renderHeader() {
  const thread = chat.thread(current);
  if (!thread) return;
  $("thread-title").textContent = threadName(thread);
  avatar($("thread-avatar"), thread.title || others(thread)[0] || "?");
  const parts = [`With ${others(thread).join(", ") || "nobody else"}`];
  if (thread.job_id) parts.push(`Job ${thread.job_id}`);
  const online = others(thread).filter((p) => chat.presence(p)?.online);
  if (online.length) parts.push(`${online.join(", ")} online`);
  $("thread-sub").textContent = parts.join(" · ");
  $("job-id").value = $("job-id").value || thread.job_id || "";
}

$("back").addEventListener("click", () => {
  $("app").classList.remove("show-thread");
  if (current) drafts.set(current, $("text").value);
  chat?.stopTyping(current);
  const leaving = current;
  current = null;
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
    nodes.push(renderMessage(message, message.sender_id !== lastSender || message.message_type !== "text",
      message === latestMine || message.seq == null));
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
    case "system":
      return h("div", "system-msg", null, isolated("span", "text", message.content),
        h("time", "time", timeFormat.format(new Date(message.created_at))));
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
  const row = h("div", `msg ${mine ? "mine" : "theirs"}${firstOfGroup ? " first" : ""}`);
  if (message.seq != null) row.dataset.seq = String(message.seq);
  if (message.client_msg_id) row.dataset.clientMsgId = message.client_msg_id;
  if (!mine && firstOfGroup && message.sender_id) row.append(isolated("div", "sender", message.sender_id));
  const bubble = h("div", "bubble");
  if (message.deleted_at) {
    bubble.classList.add("deleted");
    bubble.append(h("p", "text", mine ? "You deleted this message" : "This message was deleted"));
  } else {
    bubble.append(isolated("p", "text", message.content));
  }
  if (message.flags?.length && !message.deleted_at) {
    bubble.append(h("p", "flag", `Contains contact details (${message.flags.join(", ")}). Keep deals on the platform to stay protected.`));
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
  if (mine && status === "failed") {
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
    target.error = error.message;
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
