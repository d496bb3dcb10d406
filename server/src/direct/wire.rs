//! The TCP socket under every HTTP connection, shared so that the direct transport can write to
//! it itself after the WebSocket upgrade.
//!
//! hyper hands an upgraded connection back as an opaque `Upgraded` (a boxed, rewound stream
//! that cannot be downcast back to the socket): writing through it means a lock, two dynamic
//! calls and a task wake-up per event. Instead the serve loop ([`crate::listen`]) wraps every
//! accepted socket in an `Arc` ([`SharedTcp`], under what hyper reads and writes), and hands a
//! clone to each request as [`Wire`] (`ConnectInfo`). After the upgrade the direct transport keeps reading through
//! `Upgraded` (which holds any bytes hyper already read) and writes straight to the socket, in
//! the common case from the fan-out loop itself ([`super::DirectConn::send`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP socket shared between hyper and the direct transport.
#[derive(Debug, Clone)]
pub struct SharedTcp(pub Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.0, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.0))
    }
}

/// Writes what the socket takes now, waiting for writability first.
pub fn poll_write(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

/// Writes all of `buf`.
pub async fn write_all(tcp: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::future::poll_fn(|cx| poll_write(tcp, cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Half-closes the socket (FIN) after the last frame.
pub fn shutdown_write(tcp: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

/// The request's socket, as `ConnectInfo` (inserted by [`crate::listen`] on every request).
#[derive(Debug, Clone)]
pub struct Wire(pub Arc<TcpStream>);
