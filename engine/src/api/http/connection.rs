//! One HTTP connection, from its TLS handshake to its close, and the closes
//! that count as refusals.
//!
//! A connection that does not finish its TLS handshake, or send a request's
//! headers, within `http_header_timeout` is closed unanswered and counted in
//! `engine_rejected_messages_total` as [`TLS_HANDSHAKE_TIMEOUT`] or
//! [`HEADER_TIMEOUT`]. A kept-alive connection that stays idle after an
//! answer is closed by the same timeout, as any client of a pool expects:
//! that is not counted.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The rejection reason of a connection closed because it sent no complete
/// request head within `http_header_timeout` (silent, or a partial head).
pub const HEADER_TIMEOUT: &str = "header_timeout";

/// The rejection reason of a connection closed because its TLS handshake
/// did not finish within `http_header_timeout`.
pub const TLS_HANDSHAKE_TIMEOUT: &str = "tls_handshake_timeout";

/// Runs the TLS handshake within `timeout`, counting a connection that does
/// not finish it; `None` when it failed or timed out.
pub(super) async fn handshake<S>(
    tls: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            crate::metrics::reject(
                "http",
                TLS_HANDSHAKE_TIMEOUT,
                &format!(
                    "a connection did not finish its TLS handshake within {} (http_header_timeout); closed",
                    humantime::format_duration(timeout)
                ),
            );
            None
        }
    }
}

/// Serves one connection (plain TCP or TLS) until it ends, or gracefully
/// once `shutdown` is cancelled. A close by the header timeout is counted
/// unless the connection was idle after an answer.
pub(super) async fn serve<S>(
    http1: &http1::Builder,
    stream: S,
    service: TowerToHyperService<Router>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let traffic = Arc::new(AtomicU8::new(SILENT));
    let stream = Watched {
        stream,
        traffic: traffic.clone(),
    };
    let conn = http1.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is_timeout() && traffic.load(Ordering::Relaxed) != IDLE => {
            crate::metrics::reject(
                "http",
                HEADER_TIMEOUT,
                "a connection sent no complete request head within http_header_timeout; closed",
            );
        }
        Err(e) => tracing::debug!(error = %e, "HTTP connection closed"),
    }
}

/// Nothing read yet.
const SILENT: u8 = 0;
/// Bytes read since the last answer (or since the open): a request under way.
const READING: u8 = 1;
/// An answer written, nothing read since.
const IDLE: u8 = 2;

/// A connection that records whether its client has sent anything since
/// its last answer.
struct Watched<S> {
    stream: S,
    /// [`SILENT`], [`READING`] or [`IDLE`].
    traffic: Arc<AtomicU8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.traffic.store(READING, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.traffic.store(IDLE, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
