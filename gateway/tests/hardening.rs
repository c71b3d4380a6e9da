//! Issue 16's edge hardening, tried from outside as an attacker would:
//! tokens not valid yet, WebSocket close codes, security headers, loose
//! JSON, idle and slow connections, per-user caps.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{
    TestStack, call, spawn_stack, token,
    ws::{Socket, WAIT, connect, next, send},
};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, tungstenite::Message};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token with exactly `claims`.
fn token_with(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

/// The close code and reason the server ends the socket with.
async fn closed_with(socket: &mut Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("socket error before the close frame: {err}"),
        }
    }
}

async fn new_thread(stack: &TestStack, owner: &str, others: &[&str]) -> String {
    let answer = call(
        stack.gateway,
        "POST",
        "/api/chat/threads/",
        Some(&token(&stack.secret, owner)),
        Some(&json!({"participants": others}).to_string()),
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    answer.json["id"].as_str().expect("thread id").to_owned()
}

#[tokio::test]
async fn tokens_not_valid_yet_are_refused_on_rest_and_every_socket_path() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    for claims in [
        json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}),
        json!({"sub": "alice", "exp": now() + 7200, "iat": now() + 3600}),
    ] {
        let early = token_with(&stack.secret, &claims);
        let answer = call(
            stack.gateway,
            "GET",
            &format!("/api/chat/threads/{thread}/"),
            Some(&early),
            None,
        )
        .await;
        assert_eq!(answer.error(401), "token not yet valid", "{claims}");
        assert_eq!(answer.json["error"]["code"], "unauthenticated");

        let mut by_query = connect(&stack, &format!("/ws/chat/{thread}/?token={early}"), &[]).await;
        assert_eq!(closed_with(&mut by_query).await.0, 4401, "{claims}");
        let bearer = format!("Bearer {early}");
        let mut by_header = connect(&stack, "/ws/chat/", &[("authorization", &bearer)]).await;
        assert_eq!(closed_with(&mut by_header).await.0, 4401, "{claims}");
        let mut by_frame = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
        send(&mut by_frame, json!({"type": "auth", "token": early})).await;
        assert_eq!(closed_with(&mut by_frame).await.0, 4401, "{claims}");
    }
    // Due now: accepted everywhere.
    let due = token_with(
        &stack.secret,
        &json!({"sub": "alice", "exp": now() + 600, "nbf": now(), "iat": now()}),
    );
    let answer = call(
        stack.gateway,
        "GET",
        &format!("/api/chat/threads/{thread}/"),
        Some(&due),
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let mut socket = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
    send(&mut socket, json!({"type": "auth", "token": due})).await;
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "auth_ok", "user_id": "alice"})
    );
}

/// Reads until the server closes the connection; what it sent.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// A TCP connection to the gateway from `source` (any 127.0.0.0/8 address
/// is loopback), so tests can play several clients.
async fn connect_from(stack: &TestStack, source: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind a loopback source");
    socket.connect(stack.gateway).await.expect("connect")
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    let stack = support::spawn_stack_with(
        false,
        &[
            ("GATEWAY_HEADER_TIMEOUT_SECONDS", "1"),
            ("GATEWAY_IDLE_TIMEOUT_SECONDS", "1"),
            ("GATEWAY_UPSTREAM_TIMEOUT_MS", "900"),
        ],
    )
    .await;
    // Nothing sent at all.
    let mut silent = TcpStream::connect(stack.gateway).await.unwrap();
    let started = std::time::Instant::now();
    read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Headers a byte at a time (slowloris): the head must be complete in
    // time, however steadily it trickles.
    let mut slow = TcpStream::connect(stack.gateway).await.unwrap();
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(5), trickle)
            .await
            .expect("cut off before the trickle ends"),
        "the connection was closed mid-header"
    );
    // A kept-alive connection that asks nothing more.
    let mut kept = TcpStream::connect(stack.gateway).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut kept, Duration::from_secs(5)).await;
    assert!(answered.starts_with("HTTP/1.1 200 OK"), "{answered}");
    // A body announced and never sent: the handler waits for it, and the
    // connection sits idle.
    let mut stalled = TcpStream::connect(stack.gateway).await.unwrap();
    let head = format!(
        "POST /api/chat/threads/ HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-length: 100\r\n\r\n{{\"par",
        token(&stack.secret, "alice")
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let answered = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert_eq!(answered, "", "cut off, unanswered");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // An authenticated WebSocket outlives both timeouts.
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let mut socket = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
    send(
        &mut socket,
        json!({"type": "auth", "token": token(&stack.secret, "alice")}),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], "auth_ok");
    tokio::time::sleep(Duration::from_secs(3)).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn connections_over_the_caps_are_refused_at_once() {
    let stack = support::spawn_stack_with(
        false,
        &[
            ("GATEWAY_MAX_CONNECTIONS", "6"),
            ("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", "3"),
        ],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(&stack, "127.0.0.2").await);
    }
    // Let the gateway accept them before the next one knocks.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = connect_from(&stack, "127.0.0.2").await;
    let answer = read_until_closed(&mut refused, Duration::from_secs(2)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer:?}"
    );
    // Other addresses still get in, up to the total.
    for _ in 0..3 {
        held.push(connect_from(&stack, "127.0.0.3").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over_total = connect_from(&stack, "127.0.0.4").await;
    let answer = read_until_closed(&mut over_total, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // Places come back when connections close.
    held.truncate(4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = support::raw_get(stack.gateway, "/metrics").await;
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "chat_gateway_connections_refused_total{cap=\"total\"} 1\n",
        "chat_gateway_connections_refused_total{cap=\"per_address\"} 1\n",
        // The held four and this request's own.
        "chat_gateway_open_connections 5\n",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// One client frame as raw bytes: masked (with a zero key, which leaves
/// the payload as is), any opcode, fin or not, any announced length.
fn raw_frame(first_byte: u8, payload: &[u8], announced: Option<u64>) -> Vec<u8> {
    let len = announced.unwrap_or(payload.len() as u64);
    let mut frame = vec![first_byte];
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&len.to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Writes raw bytes under the WebSocket client's framing.
async fn write_raw(socket: &mut Socket, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt as _;
    let MaybeTlsStream::Plain(stream) = socket.get_mut() else {
        panic!("plain TCP");
    };
    stream.write_all(bytes).await.expect("write raw frame");
}

#[tokio::test]
async fn bad_frames_close_with_the_rfc_6455_codes() {
    let stack = spawn_stack(false).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let alice = token(&stack.secret, "alice");
    let path = format!("/ws/chat/{thread}/?token={alice}");
    const FIN_TEXT: u8 = 0x81;
    const TEXT: u8 = 0x01;
    const CONTINUATION: u8 = 0x00;

    // One frame over 64 KiB.
    let mut socket = connect(&stack, &path, &[]).await;
    let big = "x".repeat(64 * 1024 + 1);
    write_raw(&mut socket, &raw_frame(FIN_TEXT, big.as_bytes(), None)).await;
    assert_eq!(
        closed_with(&mut socket).await,
        (1009, "message too big".into())
    );

    // A header announcing 2^40 bytes: refused from the header alone.
    let mut socket = connect(&stack, &path, &[]).await;
    write_raw(&mut socket, &raw_frame(FIN_TEXT, b"{", Some(1 << 40))).await;
    assert_eq!(closed_with(&mut socket).await.0, 1009);

    // Fragments that together pass 64 KiB, each well under it.
    let mut socket = connect(&stack, &path, &[]).await;
    let chunk = vec![b' '; 30 * 1024];
    write_raw(&mut socket, &raw_frame(TEXT, &chunk, None)).await;
    write_raw(&mut socket, &raw_frame(CONTINUATION, &chunk, None)).await;
    write_raw(&mut socket, &raw_frame(CONTINUATION, &chunk, None)).await;
    assert_eq!(closed_with(&mut socket).await.0, 1009);

    // Fragments within the limit make one message as usual.
    let mut socket = connect(&stack, &path, &[]).await;
    write_raw(&mut socket, &raw_frame(TEXT, br#"{"type""#, None)).await;
    write_raw(&mut socket, &raw_frame(0x80, br#":"ping"}"#, None)).await;
    assert_eq!(next(&mut socket).await, json!({"type": "pong"}));

    // Text that is not UTF-8.
    let mut socket = connect(&stack, &path, &[]).await;
    write_raw(
        &mut socket,
        &raw_frame(FIN_TEXT, b"{\"type\": \"\xff\xfe\"}", None),
    )
    .await;
    assert_eq!(
        closed_with(&mut socket).await,
        (1007, "text is not UTF-8".into())
    );

    // Protocol errors: reserved bits, a continuation with nothing to
    // continue, a fragmented ping.
    for bad in [
        raw_frame(0x80 | 0x40 | 0x01, b"{}", None),
        raw_frame(0x80, b"{}", None),
        raw_frame(0x09, b"", None),
    ] {
        let mut socket = connect(&stack, &path, &[]).await;
        write_raw(&mut socket, &bad).await;
        assert_eq!(
            closed_with(&mut socket).await,
            (1002, "protocol error".into())
        );
    }

    // Before authentication too: an oversized first frame is 1009, not
    // 4401.
    let mut socket = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
    write_raw(&mut socket, &raw_frame(FIN_TEXT, b"{", Some(1 << 20))).await;
    assert_eq!(closed_with(&mut socket).await.0, 1009);
}

#[tokio::test]
async fn every_answer_is_nosniff_and_the_page_runs_under_a_strict_policy() {
    let stack = spawn_stack(false).await;
    let alice = token(&stack.secret, "alice");
    for (method, path, token) in [
        ("GET", "/healthz", None),
        ("GET", "/metrics", None),
        ("GET", "/api/openapi.json", None),
        ("GET", "/api/chat/threads/", None),
        ("GET", "/api/chat/threads/", Some(alice.as_str())),
        ("GET", "/api/chat/nowhere/", Some(alice.as_str())),
        ("DELETE", "/api/chat/unread-count/", Some(alice.as_str())),
        ("GET", "/ws/chat/", None),
        ("GET", "/", None),
    ] {
        let answer = call(stack.gateway, method, path, token, None).await;
        assert_eq!(
            answer.headers["x-content-type-options"], "nosniff",
            "{method} {path}: {answer:?}"
        );
    }
    let policy = "default-src 'none'; script-src 'self'; style-src 'self'; \
                  connect-src 'self'; img-src 'self'; base-uri 'none'; \
                  form-action 'self'; frame-ancestors 'none'";
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
        ("/static/chat-client.js", "text/javascript; charset=utf-8"),
    ] {
        let answer = call(stack.gateway, "GET", path, None, None).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.headers["content-type"], content_type, "{path}");
        assert_eq!(answer.headers["content-security-policy"], policy, "{path}");
        assert_eq!(answer.headers["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(answer.headers["x-frame-options"], "DENY", "{path}");
    }
    // No inline script or style for the policy to block.
    let page = String::from_utf8(support::raw_get(stack.gateway, "/").await).unwrap();
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(
        page.contains(r#"<script type="module" src="/app.js"></script>"#),
        "{page}"
    );
    assert!(
        !page.contains("<style") && !page.contains("style="),
        "{page}"
    );
    for inline in ["onclick=", "onload=", "onsubmit=", "javascript:"] {
        assert!(!page.contains(inline), "{inline} in {page}");
    }
    // Each message and thread name is isolated from its neighbours' bidi
    // controls (U+202E and friends).
    let script = String::from_utf8(support::raw_get(stack.gateway, "/app.js").await).unwrap();
    assert!(script.contains(r#"node.dir = "auto";"#), "{script}");
    let style = String::from_utf8(support::raw_get(stack.gateway, "/app.css").await).unwrap();
    assert!(
        style.contains(
            ".bubble .text, .thread .name, .thread .preview, #thread-title, .sender, \
             .card [dir] { unicode-bidi: isolate; }"
        ),
        "{style}"
    );
}

#[tokio::test]
async fn duplicate_keys_and_untrimmed_ids_are_refused() {
    let stack = spawn_stack(false).await;
    let alice = token(&stack.secret, "alice");
    let answer = call(
        stack.gateway,
        "POST",
        "/api/chat/threads/",
        Some(&alice),
        Some(r#"{"participants": ["bob"], "participants": ["carol"]}"#),
    )
    .await;
    assert_eq!(answer.error(400), r#"the body names "participants" twice"#);
    assert_eq!(answer.json["error"]["code"], "invalid_request");
    let listed = call(
        stack.gateway,
        "GET",
        "/api/chat/threads/",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(listed.json["results"], json!([]), "nothing was created");

    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let messages = format!("/api/chat/threads/{thread}/messages/");
    let answer = call(
        stack.gateway,
        "POST",
        &messages,
        Some(&alice),
        Some(r#"{"content": "hi", "metadata": {"order": 1, "order": 2}}"#),
    )
    .await;
    assert_eq!(answer.error(400), r#"the body names "order" twice"#);

    // On a socket: an error frame, and the socket stays open.
    let mut socket = connect(&stack, &format!("/ws/chat/{thread}/?token={alice}"), &[]).await;
    socket
        .send(Message::Text(
            r#"{"type": "chat_message", "content": "shown", "content": "checked"}"#.into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        next(&mut socket).await,
        json!({"type": "error", "code": "invalid_frame",
               "message": "the frame names \"content\" twice", "client_msg_id": null})
    );
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await, json!({"type": "pong"}));
    let stored = call(stack.gateway, "GET", &messages, Some(&alice), None).await;
    assert_eq!(stored.json["results"], json!([]), "nothing was sent");

    // by-participants checks ids as every other route does: no trimming.
    for participants in [
        "alice,bob%20",
        "alice,bob%C2%85",
        "alice,%20bob",
        "alice,,bob",
    ] {
        let answer = call(
            stack.gateway,
            "GET",
            &format!("/api/chat/threads/by-participants/?participants={participants}"),
            Some(&alice),
            None,
        )
        .await;
        answer.error(400);
        assert_eq!(
            answer.json["error"]["code"], "invalid_request",
            "{participants}"
        );
    }
    let found = call(
        stack.gateway,
        "GET",
        "/api/chat/threads/by-participants/?participants=alice,bob",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(found.json["id"], thread.as_str());
}

#[tokio::test]
async fn a_user_holds_at_most_the_allowed_sockets() {
    let stack = support::spawn_stack_with(false, &[("GATEWAY_MAX_SOCKETS_PER_USER", "2")]).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let alice = token(&stack.secret, "alice");
    let open = |path: String| {
        let stack = &stack;
        async move {
            let mut socket = connect(stack, &path, &[]).await;
            send(&mut socket, json!({"type": "ping"})).await;
            assert_eq!(next(&mut socket).await, json!({"type": "pong"}));
            socket
        }
    };
    let first = open(format!("/ws/chat/{thread}/?token={alice}")).await;
    let _second = open(format!("/ws/chat/?token={alice}")).await;
    // A third, whichever way it authenticates, is refused.
    let mut third = connect(&stack, &format!("/ws/chat/{thread}/?token={alice}"), &[]).await;
    assert_eq!(
        closed_with(&mut third).await,
        (4429, "too many sockets for this user".into())
    );
    let mut by_frame = connect(&stack, "/ws/chat/", &[]).await;
    send(&mut by_frame, json!({"type": "auth", "token": alice})).await;
    assert_eq!(closed_with(&mut by_frame).await.0, 4429);
    // Other users are not affected; nor are service tokens.
    let _bob = open(format!(
        "/ws/chat/{thread}/?token={}",
        token(&stack.secret, "bob")
    ))
    .await;
    let service = token_with(
        &stack.secret,
        &json!({"sub": "payments", "role": "service", "exp": now() + 600}),
    );
    let mut services = Vec::new();
    for _ in 0..3 {
        services.push(open(format!("/ws/chat/{thread}/?token={service}")).await);
    }
    // A closed socket gives its place back.
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        let mut socket = connect(&stack, &format!("/ws/chat/{thread}/?token={alice}"), &[]).await;
        send(&mut socket, json!({"type": "ping"})).await;
        match tokio::time::timeout(WAIT, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains("pong") => {
                reopened = Some(socket);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(reopened.is_some(), "a place came back");
}

#[tokio::test]
async fn thread_creations_past_the_cap_are_429() {
    let stack =
        support::spawn_stack_with(false, &[("CHAT_CORE_THREAD_CREATES_PER_MINUTE", "2")]).await;
    new_thread(&stack, "alice", &["b1"]).await;
    new_thread(&stack, "alice", &["b2"]).await;
    let answer = call(
        stack.gateway,
        "POST",
        "/api/chat/threads/",
        Some(&token(&stack.secret, "alice")),
        Some(&json!({"participants": ["b3"]}).to_string()),
    )
    .await;
    assert_eq!(
        answer.error(429),
        "too many new threads; try again in a minute"
    );
    assert_eq!(answer.json["error"]["code"], "rate_limited");
    assert_eq!(answer.headers["retry-after"], "1");
}

#[tokio::test]
async fn a_subscription_refused_by_chat_core_closes_the_socket_with_4429() {
    let stack =
        support::spawn_stack_with(false, &[("CHAT_CORE_MAX_SUBSCRIPTIONS_PER_USER", "1")]).await;
    let thread = new_thread(&stack, "alice", &["bob"]).await;
    let alice = token(&stack.secret, "alice");
    let mut first = connect(&stack, &format!("/ws/chat/{thread}/?token={alice}"), &[]).await;
    send(&mut first, json!({"type": "ping"})).await;
    assert_eq!(next(&mut first).await, json!({"type": "pong"}));
    let mut second = connect(&stack, &format!("/ws/chat/{thread}/"), &[]).await;
    send(&mut second, json!({"type": "auth", "token": alice})).await;
    assert_eq!(
        closed_with(&mut second).await,
        (4429, "too many sockets for this user".into())
    );
}
