//! A WebSocket's TCP stream whose buffers exist only while bytes are in
//! flight.
//!
//! tungstenite keeps its read buffer, and its write buffer at the size of
//! the largest frame it ever wrote, for the life of a connection; with
//! 10,000 mostly idle clients those buffers were most of the registry's
//! memory. So tungstenite gets small buffers (see `ws.rs`) and this stream
//! does the batching instead, without keeping anything between batches:
//!
//! - reads go through one scratch buffer shared by all connections (the
//!   registry has one thread); only bytes read beyond what tungstenite
//!   asked for are kept, and only until it asks again;
//! - writes are gathered until tungstenite flushes and then go out in as
//!   few system calls as the socket takes; the buffer is freed once sent.
//!
//! It also first yields the bytes hyper had already read past the upgrade
//! request.

use futures_lite::{AsyncRead, AsyncWrite};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// One read from the socket takes at most this much.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Gathered writes beyond this are pushed to the socket before more are
/// taken, so a client that does not read holds at most this much here
/// (tungstenite's own write limit applies on top).
const MAX_GATHERED: usize = 64 * 1024;
/// Buffers that grew past this are freed when empty rather than cleared.
const KEEP_BYTES: usize = 256;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

pub struct LeanStream<S> {
    inner: S,
    /// Read from the socket, not yet handed to the reader; from `unread_at`.
    unread: Vec<u8>,
    unread_at: usize,
    /// Written by tungstenite, not yet sent; from `gathered_at`.
    gathered: Vec<u8>,
    gathered_at: usize,
}

impl<S> LeanStream<S> {
    /// `prefix`: bytes already read from `inner` (hyper's leftover). It is a
    /// view into hyper's 8 KiB read buffer even when empty, so it is taken
    /// by value, copied and dropped here: held on, it would keep that
    /// buffer for the life of the WebSocket.
    pub fn new(prefix: bytes::Bytes, inner: S) -> Self {
        LeanStream { inner, unread: prefix.to_vec(), unread_at: 0, gathered: Vec::new(), gathered_at: 0 }
    }
}

fn release(buf: &mut Vec<u8>, at: &mut usize) {
    *at = 0;
    if buf.capacity() > KEEP_BYTES {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

impl<S: AsyncWrite + Unpin> LeanStream<S> {
    /// Sends what was gathered, as far as the socket takes it.
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.gathered_at < self.gathered.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.gathered[self.gathered_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.gathered_at += n;
        }
        release(&mut self.gathered, &mut self.gathered_at);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LeanStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            // Reading from the socket now would keep bytes nobody asked for.
            return Poll::Ready(Ok(0));
        }
        if this.unread_at < this.unread.len() {
            let n = (this.unread.len() - this.unread_at).min(buf.len());
            buf[..n].copy_from_slice(&this.unread[this.unread_at..this.unread_at + n]);
            this.unread_at += n;
            if this.unread_at == this.unread.len() {
                release(&mut this.unread, &mut this.unread_at);
            }
            return Poll::Ready(Ok(n));
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let n = ready!(Pin::new(&mut this.inner).poll_read(cx, scratch))?;
            let given = n.min(buf.len());
            buf[..given].copy_from_slice(&scratch[..given]);
            this.unread.extend_from_slice(&scratch[given..n]);
            Poll::Ready(Ok(given))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LeanStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.gathered.len() - self.gathered_at >= MAX_GATHERED {
            ready!(self.poll_send_gathered(cx))?;
        }
        if self.gathered_at > 0 {
            let at = std::mem::take(&mut self.gathered_at);
            self.gathered.drain(..at);
        }
        self.gathered.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_gathered(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_gathered(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    /// A socket that hands out at most `chunk` bytes per read and takes at
    /// most `chunk` per write, counting the calls.
    struct Socket {
        input: Vec<u8>,
        output: Vec<u8>,
        chunk: usize,
        reads: usize,
        writes: usize,
    }

    impl AsyncRead for Socket {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            self.reads += 1;
            let n = self.input.len().min(buf.len()).min(self.chunk);
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input.drain(..n);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes += 1;
            let n = buf.len().min(self.chunk);
            self.output.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn socket(input: &[u8], chunk: usize) -> Socket {
        Socket { input: input.to_vec(), output: Vec::new(), chunk, reads: 0, writes: 0 }
    }

    #[test]
    fn small_reads_are_served_from_one_socket_read_then_the_rest_is_freed() {
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut s = LeanStream::new(bytes::Bytes::from_static(b"hyper"), socket(&data, usize::MAX));
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = block_on(s.read(&mut buf)).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..5], b"hyper");
        assert_eq!(&got[5..], &data[..]);
        // The prefix, one read of everything, and the read that found the end.
        assert_eq!(s.inner.reads, 2);
        assert_eq!(s.unread.capacity(), 0);
    }

    #[test]
    fn writes_are_gathered_until_a_flush_and_survive_short_socket_writes() {
        let mut s = LeanStream::new(bytes::Bytes::new(), socket(b"", 3000));
        for i in 0..10u8 {
            block_on(s.write_all(&[i; 1000])).unwrap();
        }
        assert_eq!(s.inner.writes, 0);
        block_on(s.flush()).unwrap();
        assert_eq!(s.inner.writes, 4);
        let expected: Vec<u8> = (0..10u8).flat_map(|i| [i; 1000]).collect();
        assert_eq!(s.inner.output, expected);
        assert_eq!(s.gathered.capacity(), 0);
    }

    #[test]
    fn a_socket_that_takes_nothing_is_an_error() {
        let mut s = LeanStream::new(bytes::Bytes::new(), socket(b"", 0));
        block_on(s.write_all(b"frame")).unwrap();
        assert_eq!(block_on(s.flush()).unwrap_err().kind(), io::ErrorKind::WriteZero);
    }
}
