//! The HTTP server in front of the router: connection cap, header and idle deadlines, panics
//! answered as JSON, graceful drain (SPEC §11.4).
//!
//! `axum::serve` installs no timer, so hyper's header timeout never fires there and a client that
//! trickles one byte a second holds its connection (and a task) for as long as it likes. This
//! accept loop serves each connection with hyper-util's auto (HTTP/1 and HTTP/2) builder and a
//! watchdog that enforces the deadlines hyper does not express:
//! - a request's headers must arrive within `header` of the connection's accept or of the first
//!   byte of a keep-alive request (hyper's own header timer starts as soon as the previous
//!   response is written, which makes it an idle timeout instead: it is used as one);
//! - at most `max_connections` at once: one more is closed on accept, before any read, so a flood
//!   of sockets cannot exhaust memory or file descriptors.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::Request, response::Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

/// Deadlines and caps of inbound connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From accept, or from a keep-alive request's first byte, to its complete headers.
    pub header: Duration,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: pause rather than spin, keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(msgcontact::metrics::API_CONNECTIONS_REFUSED).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, stop) = (app.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_connection(stream, peer, app, limits, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Where a connection is in its request cycle, for the watchdog.
const AWAITING_HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

/// A connection's progress, shared by its socket wrapper, its service and its watchdog.
struct Progress {
    born: Instant,
    phase: AtomicU8,
    /// Milliseconds since `born` when the current phase began.
    since_ms: AtomicU64,
    in_flight: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            phase: AtomicU8::new(AWAITING_HEAD),
            since_ms: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    /// Bytes arrived: on an idle connection they start the next request's header clock.
    fn on_read(&self) {
        if self
            .phase
            .compare_exchange(IDLE, AWAITING_HEAD, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.enter(BUSY);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.enter(IDLE);
        }
    }

    /// Whether the current request's headers are overdue.
    fn head_overdue(&self, limit: Duration) -> bool {
        self.phase.load(Ordering::Acquire) == AWAITING_HEAD
            && self
                .now_ms()
                .saturating_sub(self.since_ms.load(Ordering::Relaxed))
                > limit.as_millis() as u64
    }
}

/// Ends a request's busy phase however its future ends (answered, timed out, dropped).
struct InFlight(Arc<Progress>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let progress = Arc::new(Progress::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        progress: progress.clone(),
    });
    let service = hyper::service::service_fn({
        let progress = progress.clone();
        move |req: Request<hyper::body::Incoming>| {
            progress.request_started();
            let guard = InFlight(progress.clone());
            let app = app.clone();
            async move {
                let response: Result<Response, std::convert::Infallible> =
                    app.oneshot(req.map(Body::new)).await;
                drop(guard);
                response
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Starts when the previous response is written, so it bounds idle keep-alive time.
        .header_read_timeout(limits.idle);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle))
        .keep_alive_timeout(limits.header);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick() => {
                if progress.head_overdue(limits.header) {
                    metrics::counter!(msgcontact::metrics::API_CONNECTIONS_TIMED_OUT).increment(1);
                    tracing::debug!(peer = %peer, "request headers not received in time; closing");
                    return;
                }
                if progress.in_flight.load(Ordering::Acquire) == 0
                    && progress.phase.load(Ordering::Acquire) == IDLE
                    && progress.now_ms().saturating_sub(progress.since_ms.load(Ordering::Relaxed))
                        > limits.idle.as_millis() as u64
                    && !draining
                {
                    // HTTP/2 has no header timer to do this for it.
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// A socket that tells its connection's progress when bytes arrive.
struct Watched {
    inner: TcpStream,
    progress: Arc<Progress>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
