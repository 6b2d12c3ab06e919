//! Connection limits for every listener: how many connections a client (an IPv4 address or an
//! IPv6 /64) and everyone together may hold, and how long a connection may sit idle.
//!
//! Why here and not in hyper: hyper times out only the HTTP/1 header read. An idle TLS
//! connection after its handshake, an HTTP/2 preface and then nothing, or a keep-alive
//! connection nobody uses again held a file descriptor for ever; 200 of them took 200 fds.
//! [`LimitAcceptor`] refuses connections over the caps (closed at once, nothing sent) and wraps
//! the rest in [`Guarded`], which fails the connection once no byte has moved either way for
//! the idle timeout. TLS handshake, first request and body-read deadlines are set where the
//! listeners are built (`service`) and in `http::read_body`.

use crate::http::auth::client_key;
use axum_server::accept::Accept;
use std::collections::HashMap;
use std::future::{ready, Ready};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The counts behind the caps, shared by all listeners (the redirect port counts too).
pub struct ConnLimits {
    per_client: usize,
    total: usize,
    idle: Duration,
    open: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    all: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0} already holds {1} connections ([http] max_connections_per_client)")]
    PerClient(IpAddr, usize),
    #[error("{0} connections are open ([http] max_connections)")]
    Total(usize),
}

impl ConnLimits {
    pub fn new(per_client: usize, total: usize, idle: Duration) -> Arc<Self> {
        Arc::new(Self { per_client, total, idle, open: Mutex::new(Counts::default()) })
    }

    /// Counts a new connection from `ip`, or says why it may not open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.all >= self.total {
            return Err(Refused::Total(open.all));
        }
        let mine = open.by_client.entry(key).or_insert(0);
        if *mine >= self.per_client {
            return Err(Refused::PerClient(key, *mine));
        }
        *mine += 1;
        open.all += 1;
        Ok(Permit { limits: self.clone(), key })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).all
    }
}

/// One counted connection; dropping it (the connection closed) gives the slot back.
pub struct Permit {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.all = open.all.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.key);
            }
        }
    }
}

/// The acceptor in front of every listener (and below TLS).
#[derive(Clone)]
pub struct LimitAcceptor(pub Arc<ConnLimits>);

impl<S> Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Guarded<TcpStream>;
    type Service = S;
    type Future = Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let result = stream.peer_addr().and_then(|peer| {
            let permit = self.0.admit(peer.ip()).map_err(|why| {
                log::debug!("connection from {peer} refused: {why}");
                io::Error::other(why)
            })?;
            let _ = stream.set_nodelay(true);
            Ok((Guarded::new(stream, permit, self.0.idle), service))
        });
        ready(result)
    }
}

/// A connection that holds its [`Permit`] and fails once idle for too long.
pub struct Guarded<S> {
    inner: S,
    _permit: Permit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, permit: Permit, idle: Duration) -> Self {
        Self { inner, _permit: permit, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// A write's outcome: bytes written restart the idle clock; a write that cannot proceed
    /// (a client that stops reading what it asked for is idle too) fails once the time is up.
    fn after_write(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.check_idle(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }

    /// Called when the inner stream is not ready: an error once the idle time is up.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Some(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")),
            Poll::Pending => None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check_idle(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.after_write(cx, r)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_client_and_in_all() {
        let l = ConnLimits::new(2, 3, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert!(matches!(l.admit(a), Err(Refused::PerClient(..))));
        // Another address of the same IPv6 /64 is the same client.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        let _p3 = l.admit(v6a).unwrap();
        assert!(matches!(l.admit(v6b), Err(Refused::Total(3))));
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.admit(v6b).unwrap();
        assert!(matches!(l.admit(v6a), Err(Refused::Total(_))));
    }

    #[tokio::test]
    async fn an_idle_connection_fails() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let l = ConnLimits::new(4, 4, Duration::from_millis(200));
        let mut g = Guarded::new(server, l.admit(peer.ip()).unwrap(), Duration::from_millis(200));
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(190));
        drop(g);
        assert_eq!(l.open(), 0, "the slot is given back");
    }
}
