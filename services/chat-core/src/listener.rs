//! chat-core's gRPC accept loop: the connection caps of
//! `chat_runtime::connections`, and a deadline for a connection's first
//! request, so that sockets opened and left silent (or that send only the
//! HTTP/2 preface) cannot pile up until the process runs out of files.
//!
//! A connection that has made a request is left alone afterwards: gateways
//! hold their relay streams open for days, and HTTP/2 keep-alive pings
//! find dead peers.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use chat_runtime::connections::{Admitted, ConnectionLimiter};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    time::Sleep,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tower::{Layer, Service};

/// What a connection and the requests on it share.
#[derive(Debug)]
pub struct ConnectionState {
    requested: AtomicBool,
    _admitted: Admitted,
}

/// The connection info tonic puts on each request: lets
/// [`FirstRequestLayer`] mark the connection as having made one.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    state: Arc<ConnectionState>,
}

/// A client socket: its place under the caps, and until its first request
/// the deadline for it.
pub struct ClientConnection {
    stream: TcpStream,
    state: Arc<ConnectionState>,
    first_request: Option<Pin<Box<Sleep>>>,
}

impl Connected for ClientConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            remote: self.stream.peer_addr().ok(),
            state: self.state.clone(),
        }
    }
}

impl AsyncRead for ClientConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.first_request {
            if this.state.requested.load(Ordering::Relaxed) {
                this.first_request = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request in time",
                )));
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
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

/// Accepts on `listener` until `stop` turns true, refusing connections
/// over the caps at once (closed unanswered: a gRPC client sees
/// `UNAVAILABLE` and tries another replica). The stream is tonic's
/// incoming connections.
pub fn accept(
    listener: TcpListener,
    limiter: Arc<ConnectionLimiter>,
    first_request_within: Duration,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<ClientConnection>> {
    // Small: tonic takes connections as fast as they come.
    let (connections, incoming) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|stop| *stop) => return,
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
            let Ok(admitted) = limiter.admit(peer.ip()) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let connection = ClientConnection {
                stream,
                state: Arc::new(ConnectionState {
                    requested: AtomicBool::new(false),
                    _admitted: admitted,
                }),
                first_request: Some(Box::pin(tokio::time::sleep(first_request_within))),
            };
            if connections.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(incoming)
}

/// Marks a connection as having made a request, which lifts its
/// first-request deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstRequestLayer;

impl<S> Layer<S> for FirstRequestLayer {
    type Service = FirstRequest<S>;

    fn layer(&self, inner: S) -> FirstRequest<S> {
        FirstRequest { inner }
    }
}

/// The service made by [`FirstRequestLayer`].
#[derive(Debug, Clone)]
pub struct FirstRequest<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for FirstRequest<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        if let Some(info) = request.extensions().get::<ConnectionInfo>() {
            info.state.requested.store(true, Ordering::Relaxed);
        }
        self.inner.call(request)
    }
}
