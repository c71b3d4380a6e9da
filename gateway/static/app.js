// A small client of the gateway's REST API and WebSockets (SPEC §4, §5).
// Content is always inserted as text, never as HTML.
const $ = (id) => document.getElementById(id);
let token = "", me = "", socket = null, current = null, typingTimer = null;

async function api(method, path, body) {
  const response = await fetch(`/api/chat${path}`, {
    method,
    headers: { "authorization": `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(data?.error?.message || response.statusText);
  return data;
}

function line(text, who, cls) {
  const div = document.createElement("div");
  div.className = `message ${cls || ""}`;
  if (who) {
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = who;
    div.append(name);
  }
  // Each message in its own bidi context, its direction from its own text.
  const body = document.createElement("span");
  body.className = "text";
  body.dir = "auto";
  body.textContent = text;
  div.append(body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
}

function show(message) {
  if (message.message_type === "text") line(message.content, message.sender_id);
  else line(`[${message.message_type}] ${message.content}`, null, "system");
}

async function loadThreads() {
  const { results } = await api("GET", "/threads/");
  $("threads").replaceChildren(...results.map((t) => {
    const div = document.createElement("div");
    div.className = "thread" + (current === t.id ? " active" : "");
    div.dataset.id = t.id;
    const name = document.createElement("span");
    name.className = "name";
    name.dir = "auto";
    name.textContent = t.title || t.participants.filter((p) => p !== me).join(", ");
    div.append(name);
    if (t.unread_count > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = t.unread_count;
      div.append(" ", badge);
    }
    div.onclick = () => openThread(t);
    return div;
  }));
}

async function openThread(thread) {
  current = thread.id;
  if (socket) socket.close();
  $("title").textContent = thread.title || thread.participants.join(", ");
  $("log").replaceChildren();
  const page = await api("GET", `/threads/${thread.id}/messages/`);
  page.results.forEach(show);
  const last = page.results.length ? page.results[page.results.length - 1].seq : 0;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/chat/${thread.id}/?since_seq=${last}`);
  socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token }));
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "auth_ok") {
      $("text").disabled = $("send").disabled = false;
      socket.send(JSON.stringify({ type: "mark_messages_read" }));
    } else if (frame.type === "chat_message") {
      show(frame.message);
      socket.send(JSON.stringify({ type: "mark_messages_read", up_to_seq: frame.seq }));
    } else if (frame.type === "typing_indicator") {
      $("typing").textContent = frame.is_typing ? `${frame.user_id} is typing…` : "";
    } else if (frame.type === "error") {
      line(`error: ${frame.message}`, null, "system");
    }
  };
  socket.onclose = (event) => {
    $("text").disabled = $("send").disabled = true;
    if (event.code !== 1000 && current === thread.id) line(`disconnected (${event.code})`, null, "system");
  };
  loadThreads();
}

$("connect").onclick = async () => {
  token = $("token").value.trim();
  try {
    me = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;
    $("whoami").textContent = `signed in as ${me}`;
    await loadThreads();
  } catch (error) {
    $("whoami").textContent = `cannot sign in: ${error.message}`;
  }
};

$("new-thread").onsubmit = async (event) => {
  event.preventDefault();
  const thread = await api("POST", "/threads/", { participants: [$("participant").value.trim()] });
  $("participant").value = "";
  openThread(thread);
};

function sendText() {
  const content = $("text").value;
  if (!content || !socket) return;
  socket.send(JSON.stringify({ type: "chat_message", content, client_msg_id: crypto.randomUUID() }));
  $("text").value = "";
}
$("send").onclick = sendText;
$("text").onkeydown = (event) => {
  if (event.key === "Enter") return sendText();
  if (!typingTimer && socket) socket.send(JSON.stringify({ type: "typing_indicator", is_typing: true }));
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => {
    typingTimer = null;
    socket?.send(JSON.stringify({ type: "typing_indicator", is_typing: false }));
  }, 3000);
};
