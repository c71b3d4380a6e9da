//! The sockets' chat-core calls (send, mark read, typing), carried over a
//! few shared `RelayService.Calls` streams instead of one HTTP/2 stream per
//! call.
//!
//! Why: at thousands of messages a second, opening a stream, encoding the
//! token into a header block and running the service stack on both ends
//! cost more CPU than the calls themselves. Over a call stream a call is
//! one small message each way, answered under its id.
//!
//! A link task per stream owns the calls in flight on it. When the stream
//! breaks, each of them fails with `UNAVAILABLE` ("connection lost", so
//! [`super::Upstream::call`] tries it again elsewhere only if it is
//! idempotent); when no stream can be opened, the failure keeps its cause,
//! so that a call that certainly never left is tried again in any case.
//! Link `i` connects to the first healthy replica from the `i`-th on.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chat_proto::v1::{
    self as pb, relay_call::Call, relay_call_result::Result as Answer,
    relay_service_client::RelayServiceClient,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status, Streaming};

use super::Routed;

/// Call streams per gateway: enough to spread calls over chat-core's
/// replicas and cores.
const CALL_LINKS: usize = 4;
/// How long opening a call stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a link forgets calls whose caller stopped waiting (its
/// deadline passed), so that a call chat-core never answers costs nothing
/// for long.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<Answer, Status>>;

/// The status of a call lost with its stream: it may have reached
/// chat-core.
fn lost() -> Status {
    Status::unavailable("chat-core connection lost")
}

/// A call for a link to carry.
struct Job {
    call: pb::RelayCall,
    reply: Reply,
}

/// The call links of one gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Calls {
    links: Arc<[mpsc::UnboundedSender<Job>]>,
    next_link: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
}

impl Calls {
    /// Starts the links over `routed`. They connect at the first call and
    /// end when every clone of this value is gone.
    pub fn start(routed: Routed) -> Calls {
        let links = (0..CALL_LINKS)
            .map(|index| {
                // Unbounded, yet bounded by the sockets: each has at most
                // one call in flight.
                let (jobs, queue) = mpsc::unbounded_channel();
                tokio::spawn(
                    Link {
                        client: RelayServiceClient::new(routed.pinned(index)),
                        jobs: queue,
                        pending: HashMap::new(),
                    }
                    .run(),
                );
                jobs
            })
            .collect();
        Calls {
            links,
            next_link: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Makes one call for the holder of `token`, once.
    pub async fn call(&self, token: &str, request_id: &str, call: Call) -> Result<Answer, Status> {
        let link = &self.links[self.next_link.fetch_add(1, Ordering::Relaxed) % self.links.len()];
        let (reply, answer) = oneshot::channel();
        let job = Job {
            call: pb::RelayCall {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                token: token.to_owned(),
                request_id: request_id.to_owned(),
                call: Some(call),
                traceparent: chat_runtime::telemetry::traceparent(),
            },
            reply,
        };
        link.send(job).map_err(|_| lost())?;
        answer.await.unwrap_or_else(|_| Err(lost()))
    }
}

/// One call stream to chat-core and the calls in flight on it.
struct Link {
    client: RelayServiceClient<Routed>,
    jobs: mpsc::UnboundedReceiver<Job>,
    pending: HashMap<u64, Reply>,
}

/// A connected call stream.
struct Connected {
    outbound: mpsc::UnboundedSender<pb::RelayCall>,
    inbound: Streaming<pb::RelayCallResult>,
}

impl Link {
    async fn run(mut self) {
        let mut stream: Option<Connected> = None;
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                job = self.jobs.recv() => {
                    let Some(job) = job else { return };
                    if stream.is_none() {
                        match self.connect().await {
                            Ok(connected) => stream = Some(connected),
                            Err(status) => {
                                tracing::warn!(code = ?status.code(), "chat-core call stream unavailable");
                                let _ = job.reply.send(Err(status));
                                continue;
                            }
                        }
                    }
                    if let Some(connected) = &stream {
                        let id = job.call.id;
                        if connected.outbound.send(job.call).is_ok() {
                            self.pending.insert(id, job.reply);
                        } else {
                            let _ = job.reply.send(Err(lost()));
                        }
                    }
                }
                result = async {
                    match stream.as_mut() {
                        Some(connected) => connected.inbound.message().await,
                        None => std::future::pending().await,
                    }
                } => match result {
                    Ok(Some(result)) => self.answer(result),
                    Ok(None) | Err(_) => {
                        tracing::info!(calls = self.pending.len(), "chat-core call stream broke; failing its calls over");
                        stream = None;
                        for (_, reply) in self.pending.drain() {
                            let _ = reply.send(Err(lost()));
                        }
                    }
                },
                _ = sweep.tick() => self.pending.retain(|_, reply| !reply.is_closed()),
            }
        }
    }

    async fn connect(&mut self) -> Result<Connected, Status> {
        let (outbound, calls) = mpsc::unbounded_channel();
        let mut client = self.client.clone();
        let inbound = tokio::time::timeout(
            OPEN_TIMEOUT,
            client.calls(UnboundedReceiverStream::new(calls)),
        )
        .await
        .map_err(|_| Status::unavailable("call stream open timed out"))??
        .into_inner();
        Ok(Connected { outbound, inbound })
    }

    fn answer(&mut self, result: pb::RelayCallResult) {
        let Some(reply) = self.pending.remove(&result.id) else {
            // Its caller stopped waiting.
            return;
        };
        let answer = match result.result {
            Some(Answer::Failed(failed)) => {
                let status = Status::new(Code::from_i32(failed.code), failed.message);
                Err(match failed.error_code.as_str() {
                    chat_proto::errors::CONTACT_BLOCKED => {
                        chat_proto::errors::contact_blocked(status, &failed.error_kinds)
                    }
                    _ => status,
                })
            }
            Some(answer) => Ok(answer),
            None => Err(Status::internal("empty answer")),
        };
        let _ = reply.send(answer);
    }
}
