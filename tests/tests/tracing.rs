//! Distributed tracing across the hop, with the real binaries: both
//! services export to a small OTLP receiver (a tonic server implementing
//! the OTLP trace service), a REST send that arrives with a browser's W3C
//! `traceparent` yields a gateway span continuing it and a chat-core span
//! under the gateway's, and a WebSocket message (carried on the shared
//! `RelayService.Calls` stream) a chat-core span under the frame's span.
//! No token appears in anything exported.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    trace::v1::Span,
};
use system_tests::{Process, addr_in, binary};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "tracing-test-secret-of-at-least-32-bytes!";
const START: Duration = Duration::from_secs(60);
/// The browser's trace: ids as a browser's instrumentation would send.
const BROWSER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const BROWSER_SPAN: &str = "00f067aa0ba902b7";

/// One exported span and the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
    /// Every string in the export (resource, span and event attributes,
    /// names), to look for secrets in.
    strings: Vec<String>,
}

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn strings_of(attributes: &[KeyValue], out: &mut Vec<String>) {
    for attribute in attributes {
        out.push(attribute.key.clone());
        if let Some(AnyValue { value: Some(value) }) = &attribute.value {
            out.push(match value {
                Any::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            });
        }
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let mut resource_strings = Vec::new();
            let attributes = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            strings_of(&attributes, &mut resource_strings);
            let service = attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match &kv.value {
                    Some(AnyValue {
                        value: Some(Any::StringValue(s)),
                    }) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let mut strings = resource_strings.clone();
                    strings.push(span.name.clone());
                    strings_of(&span.attributes, &mut strings);
                    for event in &span.events {
                        strings.push(event.name.clone());
                        strings_of(&event.attributes, &mut strings);
                    }
                    received.push(Received {
                        service: service.clone(),
                        span,
                        strings,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(AnyValue {
                value: Some(Any::StringValue(s)),
            }) => Some(s.clone()),
            Some(AnyValue { value: Some(other) }) => Some(format!("{other:?}")),
            _ => None,
        })
}

/// One HTTP/1.1 request with extra header lines: status and body.
async fn http(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{head}\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response[9..12].parse().expect("status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits until `find` picks spans out of what arrived.
async fn wait_for<T>(
    receiver: &Receiver,
    what: &str,
    find: impl Fn(&[Received]) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = find(&receiver.spans.lock().unwrap()) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never received: {what}; got {:#?}",
            receiver
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|r| (&r.service, &r.span.name, hex(&r.span.trace_id)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_gateway_and_chat_core() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{otlp}");
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];

    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("JWT_SECRET", SECRET),
        ("DATABASE_URL", "sqlite://./chat.db"),
        ("CHAT_CORE_GRPC_ADDR", "127.0.0.1:0"),
        ("CHAT_CORE_HTTP_ADDR", "127.0.0.1:0"),
    ];
    env.extend(otel);
    let mut core = Process::start(&binary("chat-core"), &[], dir.path(), &env);
    let line = core.wait_for_line("chat-core listening", START);
    let core_url = format!("http://{}", addr_in(&line, "grpc"));
    let mut env = vec![
        ("JWT_SECRET", SECRET),
        ("CHAT_CORE_URL", core_url.as_str()),
        ("GATEWAY_ADDR", "127.0.0.1:0"),
    ];
    env.extend(otel);
    let mut gateway = Process::start(&binary("chat-gateway"), &[], dir.path(), &env);
    let line = gateway.wait_for_line("chat-gateway listening", START);
    let gateway_addr = addr_in(&line, "addr");

    let token = chat_auth::TokenIssuer::new(SECRET.as_bytes(), None, None)
        .issue("alice", chat_auth::Role::User, Duration::from_secs(600))
        .unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let (status, body) = http(
        gateway_addr,
        &format!("POST /api/chat/threads/ HTTP/1.1\r\n{auth}"),
        r#"{"participants": ["bob"]}"#,
    )
    .await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let thread: serde_json::Value = serde_json::from_str(&body).unwrap();
    let thread_id = thread["id"].as_str().expect("thread id").to_owned();

    // The send, as a traced browser makes it.
    let (status, body) = http(
        gateway_addr,
        &format!(
            "POST /api/chat/threads/{thread_id}/messages/ HTTP/1.1\r\n{auth}\r\n\
             traceparent: 00-{BROWSER_TRACE}-{BROWSER_SPAN}-01"
        ),
        r#"{"content": "traced hello"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let (gateway_span, core_span) = wait_for(&receiver, "the REST send's two spans", |spans| {
        let gateway_span = spans
            .iter()
            .find(|r| r.service == "chat-gateway" && hex(&r.span.trace_id) == BROWSER_TRACE)?;
        let core_span = spans
            .iter()
            .find(|r| r.service == "chat-core" && hex(&r.span.trace_id) == BROWSER_TRACE)?;
        Some((gateway_span.clone(), core_span.clone()))
    })
    .await;
    assert_eq!(
        gateway_span.span.name,
        "POST /api/chat/threads/{id}/messages"
    );
    assert_eq!(hex(&gateway_span.span.parent_span_id), BROWSER_SPAN);
    assert_eq!(
        attribute(&gateway_span.span, "http.route").as_deref(),
        Some("/api/chat/threads/{id}/messages")
    );
    assert_eq!(core_span.span.name, "/chat.v1.ChatService/SendMessage");
    assert_eq!(
        core_span.span.parent_span_id, gateway_span.span.span_id,
        "chat-core's span is a child of the gateway's"
    );
    assert_eq!(
        attribute(&core_span.span, "rpc.system").as_deref(),
        Some("grpc")
    );

    // A WebSocket message: carried on the shared call stream, its trace
    // context travels in the call itself.
    let url = format!("ws://{gateway_addr}/ws/chat/{thread_id}/?token={token}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("socket");
    socket
        .send(Message::text(
            r#"{"type": "chat_message", "content": "over the socket", "client_msg_id": "c1"}"#,
        ))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an ack")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = frame
            && text.contains("\"ack\"")
        {
            break;
        }
    }
    let (frame_span, call_span) = wait_for(&receiver, "the frame's two spans", |spans| {
        let frame_span = spans
            .iter()
            .find(|r| r.service == "chat-gateway" && r.span.name == "ws chat_message")?;
        let call_span = spans.iter().find(|r| {
            r.service == "chat-core"
                && r.span.name == "/chat.v1.ChatService/SendMessage"
                && r.span.trace_id == frame_span.span.trace_id
        })?;
        Some((frame_span.clone(), call_span.clone()))
    })
    .await;
    assert_eq!(call_span.span.parent_span_id, frame_span.span.span_id);
    drop(socket);

    core.terminate(Duration::from_secs(30));
    gateway.terminate(Duration::from_secs(30));
    let spans = receiver.spans.lock().unwrap();
    for received in spans.iter() {
        for value in &received.strings {
            assert!(
                !value.contains(&token) && !value.contains("Bearer") && !value.contains(SECRET),
                "a secret in span {:?} of {}: {value}",
                received.span.name,
                received.service
            );
        }
    }
}
