//! The integration round trip with real processes: a browser asks for a
//! payment through the gateway, the example payment service sees the
//! `payment.initiated` event and answers, and the thread shows the
//! "payment captured" message live, on both people's sockets.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use system_tests::{Process, addr_in, binary, http_post_json, token};
use tokio_tungstenite::{connect_async, tungstenite::Message};

const SECRET: &str = "payment-flow-secret";

async fn next_message(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("healthy");
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] == "chat_message" {
                return value;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_payment_gets_it_captured_in_the_thread() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut core = Process::start(
        &binary("chat-core"),
        &[],
        dir.path(),
        &[
            ("JWT_SECRET", SECRET),
            ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0"),
            ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
        ],
    );
    let core_addr = addr_in(
        &core.wait_for_line("chat-core listening", Duration::from_secs(60)),
        "grpc",
    );
    let core_url = format!("http://{core_addr}");
    let mut gateway = Process::start(
        &binary("chat-gateway"),
        &[],
        dir.path(),
        &[
            ("JWT_SECRET", SECRET),
            ("CHAT_CORE_URL", core_url.as_str()),
            ("GATEWAY_ADDR", "127.0.0.1:0"),
        ],
    );
    let gateway_addr = addr_in(
        &gateway.wait_for_line("chat-gateway listening", Duration::from_secs(60)),
        "addr",
    );
    let mut payments = Process::start(
        &binary("payment-example"),
        &[],
        dir.path(),
        &[("JWT_SECRET", SECRET), ("CHAT_CORE_URL", core_url.as_str())],
    );
    payments.wait_for_line("watching payment.initiated", Duration::from_secs(60));

    let alice = token(dir.path(), SECRET, "alice");
    let bob = token(dir.path(), SECRET, "bob");
    let (status, body) = http_post_json(
        gateway_addr,
        "/api/chat/threads/",
        &alice,
        &json!({"participants": ["bob"], "job_id": "job-77"}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let thread = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let mut sockets = Vec::new();
    for who in [&alice, &bob] {
        let (mut socket, _) = connect_async(format!("ws://{gateway_addr}/ws/chat/{thread}/"))
            .await
            .expect("upgrade");
        socket
            .send(Message::Text(
                json!({"type": "auth", "token": who}).to_string().into(),
            ))
            .await
            .expect("auth");
        // Subscribed from here on (docs/api.md#websocket-api): the payment comes after.
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("healthy");
        let answer: Value = serde_json::from_str(frame.to_text().expect("text")).expect("JSON");
        assert_eq!(answer["type"], "auth_ok", "{answer}");
        sockets.push(socket);
    }

    let (status, body) = http_post_json(
        gateway_addr,
        &format!("/api/chat/threads/{thread}/initiate-payment/"),
        &alice,
        &json!({"amount": "125.00", "currency": "USD", "job_id": "job-77"}).to_string(),
    );
    assert_eq!(status, 201, "{body}");

    for socket in &mut sockets {
        let asked = next_message(socket).await;
        assert_eq!(asked["seq"], 1);
        assert_eq!(asked["message"]["message_type"], "payment");
        assert_eq!(asked["message"]["sender_id"], "alice");
        let captured = next_message(socket).await;
        assert_eq!(captured["seq"], 2);
        assert_eq!(captured["message"]["message_type"], "payment");
        assert_eq!(captured["message"]["sender_id"], Value::Null);
        assert_eq!(
            captured["message"]["content"],
            "Payment captured: 125.00 USD"
        );
        assert_eq!(captured["message"]["metadata"]["status"], "captured");
    }

    // Restarted, the service resumes after what it handled: nothing twice.
    let _ = payments.terminate(Duration::from_secs(10));
    let mut again = Process::start(
        &binary("payment-example"),
        &[],
        dir.path(),
        &[("JWT_SECRET", SECRET), ("CHAT_CORE_URL", core_url.as_str())],
    );
    let line = again.wait_for_line("watching payment.initiated", Duration::from_secs(60));
    assert!(line.contains("after_event_id=1"), "{line}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = system_tests::http_get_auth(
        gateway_addr,
        &format!("/api/chat/threads/{thread}/messages/"),
        &bob,
    );
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["results"].as_array().expect("results").len(), 2);
    drop((core, gateway));
}
