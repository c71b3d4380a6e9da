//! The gateway's accept loop: HTTP/1.1 over hyper with the timeouts and
//! connection caps that keep idle and slow clients from holding the
//! process's open files.
//!
//! - A request's head must arrive within the header timeout, counted from
//!   when the connection opens or its previous response ends: it closes
//!   silent connections, slowloris headers and idle keep-alive connections
//!   (hyper runs one clock for all three).
//! - A connection where no byte moves for the idle timeout is closed (a
//!   body announced and never sent, a response never read). No answer of
//!   the gateway's own takes that long: the idle timeout is longer than
//!   the upstream deadline (the configuration checks it).
//! - Connections over the caps (in total, per client address) are refused
//!   when accepted; see `chat_runtime::connections`.
//!
//! An upgraded WebSocket leaves hyper and both timeouts behind (it has its
//! own auth deadline and pings); it keeps its place under the caps until it
//! closes.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::extract::{ConnectInfo, Request};
use chat_runtime::connections::{Admitted, ConnectionLimiter};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower::ServiceExt as _;

/// The timeouts of the HTTP side.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a request's head, and for an idle kept-alive connection.
    pub header: Duration,
    /// For a connection where no byte moves.
    pub idle: Duration,
}

/// What the idle watch of one connection reads; shared by the socket and
/// its connection task.
#[derive(Debug)]
struct Activity {
    /// Bumped on every read and write: the watch sees whether bytes moved.
    ticks: AtomicU32,
    _admitted: Admitted,
}

/// A client socket carrying its place under the caps and its activity.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if polled.is_ready() {
            this.activity.ticks.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        if polled.is_ready() {
            this.activity.ticks.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            this.activity.ticks.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What a refused client reads before the gateway hangs up, so that it
/// sees an answer rather than a reset.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n";

/// Serves `app` on `listener` until `stop` turns true; then stops
/// accepting, lets each connection finish its request in progress, and
/// returns when none is left (upgraded WebSockets are not waited for: they
/// watch the stop signal themselves).
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limiter: Arc<ConnectionLimiter>,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) where
    S: tower::Service<Request, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .keep_alive(true);
    // Every connection task holds a receiver; when all are gone, every
    // connection has ended.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of files, most likely: wait for some to close
                // rather than spin.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = match limiter.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(_) => {
                // Never wait on a refused client: write if the socket
                // takes it at once, then close.
                let _ = stream.try_write(REFUSED);
                continue;
            }
        };
        // No Nagle: a socket writes small frames (an ack, then the event)
        // that must not wait for the browser's delayed ACK (up to 40 ms).
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity {
            ticks: AtomicU32::new(0),
            _admitted: admitted,
        });
        let io = TokioIo::new(Tracked {
            stream,
            activity: activity.clone(),
        });
        let service = {
            let app = app.clone();
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                app.clone().oneshot(request)
            })
        };
        let connection = http.serve_connection(io, service).with_upgrades();
        let mut stop = stop.clone();
        let open = open_rx.clone();
        let idle = timeouts.idle;
        tokio::spawn(async move {
            let _open = open;
            let mut connection = pin!(connection);
            let mut watch = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
            let mut last = activity.ticks.load(Ordering::Relaxed);
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = connection.as_mut() => break,
                    _ = watch.tick() => {
                        let ticks = activity.ticks.load(Ordering::Relaxed);
                        if ticks == last {
                            tracing::debug!(peer = %peer, "closing an idle HTTP connection");
                            break;
                        }
                        last = ticks;
                    }
                    _ = stop.wait_for(|stop| *stop), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    // Stop accepting now: new clients are refused by the kernel and try
    // another gateway, rather than waiting in the backlog.
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}
