//! Connections beyond `http_max_connections`: probes are still served, the
//! rest are refused.
//!
//! A connection that finds no permit gets [`REFUSAL_TIMEOUT`] to send its
//! request line. `GET` or `HEAD` of `/health` or `/ready` is then served like
//! any request (one answer, then the connection closes) on one of
//! [`PROBE_CONNECTIONS`] permits kept for probes, so that a saturated engine
//! is not taken for a dead one and restarted by its liveness probe.
//! Anything else (or a probe when those permits are taken too) is answered
//! 503 `E-TOO-MANY-CONNECTIONS`, counted, and closed.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::service::TowerToHyperService;
use jetsaga_protocol::ErrorCode;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long a connection over the limit is given to send its request line,
/// and then to take its answer.
pub(super) const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How many probe connections are served at once beyond
/// `http_max_connections`.
pub(super) const PROBE_CONNECTIONS: usize = 16;

/// The longest request line read to tell a probe: `GET /ready HTTP/1.1` and
/// a short query fit many times over.
const MAX_PROBE_LINE: usize = 256;

/// What a connection over the limit needs to be served as a probe.
#[derive(Clone)]
pub(super) struct Overflow {
    /// The connection builder, answering once and closing.
    pub(super) http1: http1::Builder,
    /// The routes, as for any connection.
    pub(super) service: TowerToHyperService<Router>,
    /// Cancelled when the engine drains.
    pub(super) shutdown: CancellationToken,
    /// The [`PROBE_CONNECTIONS`] permits.
    pub(super) probes: Arc<Semaphore>,
    /// `http_max_connections`, for the refusal's message.
    pub(super) max_connections: usize,
}

impl Overflow {
    /// Serves the connection if it is a probe and a probe permit is free;
    /// refuses it otherwise.
    pub(super) async fn handle<S>(self, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let head = read_request_line(&mut stream).await;
        if is_probe(&head)
            && let Ok(permit) = self.probes.clone().try_acquire_owned()
        {
            let stream = Replay {
                head,
                read: 0,
                stream,
            };
            super::connection::serve(&self.http1, stream, self.service, self.shutdown).await;
            drop(permit);
            return;
        }
        refuse(stream, self.max_connections).await;
    }
}

/// What the connection sends within [`REFUSAL_TIMEOUT`], up to its first line
/// end or [`MAX_PROBE_LINE`] bytes.
async fn read_request_line<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut head = Vec::new();
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        let mut chunk = [0u8; MAX_PROBE_LINE];
        while head.len() < MAX_PROBE_LINE && !head.contains(&b'\n') {
            let n = stream
                .read(&mut chunk[..MAX_PROBE_LINE - head.len()])
                .await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        io::Result::Ok(())
    })
    .await;
    head
}

/// Whether `head` starts with the request line of a probe: `GET` or `HEAD`
/// of `/health` or `/ready` (any query), HTTP/1.x.
fn is_probe(head: &[u8]) -> bool {
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let Ok(line) = std::str::from_utf8(&head[..end]) else {
        return false;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    matches!(method, "GET" | "HEAD")
        && matches!(path, "/health" | "/ready")
        && matches!(version, "HTTP/1.0" | "HTTP/1.1")
}

/// Answers a connection over the limit 503 `E-TOO-MANY-CONNECTIONS`,
/// counts it, and closes it once the client has read the answer (or after
/// [`REFUSAL_TIMEOUT`]), so that the answer is not lost to a reset.
pub(super) async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, max: usize) {
    let code = ErrorCode::TooManyConnections;
    let message = format!(
        "the engine already serves {max} HTTP connections (http_max_connections); retry later, reuse connections, or raise http_max_connections"
    );
    crate::metrics::reject("http", code.as_str(), &message);
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// A stream whose first bytes were read already: they are read again first.
struct Replay<S> {
    /// The bytes read already.
    head: Vec<u8>,
    /// How many of them were read again.
    read: usize,
    /// The connection.
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let rest = &this.head[this.read..];
        if rest.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.read += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_told_by_their_request_line() {
        for line in [
            "GET /health HTTP/1.1\r\n",
            "GET /ready HTTP/1.0\r\nHost: x\r\n",
            "HEAD /health?verbose=1 HTTP/1.1\r\n",
        ] {
            assert!(is_probe(line.as_bytes()), "{line:?}");
        }
        for line in [
            "GET /health HTTP/1.1",
            "POST /health HTTP/1.1\r\n",
            "GET /healthz HTTP/1.1\r\n",
            "GET /metrics HTTP/1.1\r\n",
            "GET /v1/sagas HTTP/1.1\r\n",
            "GET /health HTTP/2\r\n",
            "GET  /health HTTP/1.1\r\n",
            "",
        ] {
            assert!(!is_probe(line.as_bytes()), "{line:?}");
        }
    }

    #[tokio::test]
    async fn a_replayed_stream_reads_its_head_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut stream = Replay {
            head: b"hello".to_vec(),
            read: 0,
            stream: server,
        };
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
