//! The sidecar's event loop on the one thread that runs it: sockets and
//! timers are waited for with epoll inside [`block_on`], so a wake-up goes
//! from the kernel straight to the thread that handles it.
//!
//! Why not async-io (smol's reactor): it always starts an "async-io" helper
//! thread that takes turns with the executor thread at waiting in epoll, so
//! about every other wake-up crossed threads through a futex, and the
//! process never had fewer than two threads. Here there is exactly one waiter; other threads (name
//! lookups, HTTP requests, the first certificate) only wake it through the
//! eventfd when it sleeps. docs/ARCHITECTURE.md has the threads of the
//! sidecar.
//!
//! Why not smol's `polling` under our own loop (tried first): it arms
//! sources one-shot (an `epoll_ctl` per wait) and times waits with a timerfd
//! (two more calls per wait, plus one for its notifier): about a dozen
//! system calls per message hop where this takes three or four. Here
//! sources are registered once, edge-triggered, and timeouts are epoll's
//! own milliseconds. A wake-up may be spurious, so every operation is a
//! "try, and wait for an edge on `WouldBlock`" loop.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// Readiness events taken per wait; more simply wait for the next round.
const EVENTS_PER_WAIT: usize = 64;
/// The epoll key of the [`Alarm`]'s eventfd; sources count up from 0.
const ALARM_KEY: u64 = u64::MAX;

thread_local! {
    static REACTOR: RefCell<Reactor> = RefCell::new(Reactor::new());
}

/// Wakes the thread in [`block_on`]; the one waker that may be called from
/// other threads, so it only touches atomics and the eventfd.
struct Alarm {
    eventfd: EventFd,
    woken: AtomicBool,
    sleeping: AtomicBool,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Only a sleeping loop needs the system call; an awake one looks at
        // `woken` before it sleeps (both orders are sequentially consistent).
        if !self.woken.swap(true, Ordering::SeqCst) && self.sleeping.load(Ordering::SeqCst) {
            let _ = self.eventfd.write(1);
        }
    }
}

#[derive(Default)]
struct Direction {
    waker: Option<Waker>,
    /// The kernel reported readiness since the last attempt in this
    /// direction.
    ready: bool,
}

#[derive(Default)]
struct Source {
    read: Direction,
    write: Direction,
}

impl Source {
    fn direction(&mut self, write: bool) -> &mut Direction {
        if write { &mut self.write } else { &mut self.read }
    }
}

/// Sources are registered once, edge-triggered, for both directions: no
/// system call to arm or re-arm them. An edge comes with every change (new
/// bytes, room to write), so an attempt that ends in `WouldBlock` is always
/// followed by an event when it is worth trying again.
struct Reactor {
    epoll: Epoll,
    alarm: Arc<Alarm>,
    sources: Vec<Option<Source>>,
    free: Vec<usize>,
    timers: BTreeMap<(Instant, u64), Waker>,
    next_timer: u64,
}

impl Reactor {
    fn new() -> Reactor {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("cannot create an epoll instance");
        let eventfd =
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).expect("cannot create an eventfd");
        let edge = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        epoll.add(&eventfd, EpollEvent::new(edge, ALARM_KEY)).expect("cannot watch the eventfd");
        Reactor {
            epoll,
            alarm: Arc::new(Alarm { eventfd, woken: AtomicBool::new(false), sleeping: AtomicBool::new(false) }),
            sources: Vec::new(),
            free: Vec::new(),
            timers: BTreeMap::new(),
            next_timer: 0,
        }
    }

    fn insert(&mut self, fd: impl AsFd) -> io::Result<usize> {
        let key = self.free.pop().unwrap_or(self.sources.len());
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        self.epoll.add(fd, EpollEvent::new(flags, key as u64))?;
        if key == self.sources.len() {
            self.sources.push(Some(Source::default()));
        } else {
            self.sources[key] = Some(Source::default());
        }
        Ok(key)
    }

    fn remove(&mut self, key: usize, fd: impl AsFd) {
        let _ = self.epoll.delete(fd);
        self.sources[key] = None;
        self.free.push(key);
    }

    fn source(&mut self, key: usize) -> Option<&mut Source> {
        self.sources.get_mut(key).and_then(Option::as_mut)
    }

    /// Ready when readiness was reported since the last attempt; else the
    /// task waits for the next edge.
    fn poll_ready(&mut self, key: usize, write: bool, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(source) = self.source(key) else { return Poll::Ready(Ok(())) };
        let dir = source.direction(write);
        if std::mem::take(&mut dir.ready) {
            return Poll::Ready(Ok(()));
        }
        match &dir.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => dir.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn set_ready(&mut self, key: usize, write: bool, ready: bool) {
        if let Some(source) = self.source(key) {
            source.direction(write).ready = ready;
        }
    }

    fn deliver(&mut self, event: &EpollEvent, wakers: &mut Vec<Waker>) {
        let Ok(key) = usize::try_from(event.data()) else { return };
        let Some(source) = self.source(key) else { return };
        let flags = event.events();
        let failed = flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP);
        let readable = failed || flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLPRI);
        let writable = failed || flags.contains(EpollFlags::EPOLLOUT);
        for (dir, happened) in [(&mut source.read, readable), (&mut source.write, writable)] {
            if happened {
                dir.ready = true;
                wakers.extend(dir.waker.take());
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    fn fire_timers(&mut self, now: Instant, wakers: &mut Vec<Waker>) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            wakers.push(entry.remove());
        }
    }

    fn next_timer_id(&mut self) -> u64 {
        self.next_timer += 1;
        self.next_timer
    }
}

fn with<R>(f: impl FnOnce(&mut Reactor) -> R) -> R {
    REACTOR.with(|r| f(&mut r.borrow_mut()))
}

/// epoll counts in whole milliseconds: rounded up, so a timer never fires
/// early (and at most a millisecond late).
fn wait_for(deadline: Option<Instant>, now: Instant) -> EpollTimeout {
    let Some(deadline) = deadline else { return EpollTimeout::NONE };
    let nanos = deadline.saturating_duration_since(now).as_nanos();
    let millis = nanos.div_ceil(1_000_000);
    EpollTimeout::try_from(millis).unwrap_or(EpollTimeout::MAX)
}

/// Runs `future` to completion on this thread, waiting for sockets and
/// timers in between.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    let alarm = with(|r| r.alarm.clone());
    let waker = Waker::from(alarm.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut events = [EpollEvent::empty(); EVENTS_PER_WAIT];
    let mut wakers = Vec::new();
    loop {
        alarm.woken.store(false, Ordering::SeqCst);
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        alarm.sleeping.store(true, Ordering::SeqCst);
        let timeout = if alarm.woken.load(Ordering::SeqCst) {
            // Woken while polling: look for I/O without sleeping.
            EpollTimeout::ZERO
        } else {
            wait_for(with(|r| r.next_deadline()), Instant::now())
        };
        let waited = with(|r| r.epoll.wait(&mut events, timeout));
        alarm.sleeping.store(false, Ordering::SeqCst);
        let count = match waited {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                log::error!("waiting for events failed: {e}");
                0
            }
        };
        with(|r| {
            for event in &events[..count] {
                if event.data() == ALARM_KEY {
                    // Emptied so the counter never fills; edge-triggered,
                    // every later write is an event again anyway.
                    let _ = r.alarm.eventfd.read();
                } else {
                    r.deliver(event, &mut wakers);
                }
            }
            r.fire_timers(Instant::now(), &mut wakers);
        });
        // Outside the borrow: waking may drop a task whose sources then
        // deregister.
        for waker in wakers.drain(..) {
            waker.wake();
        }
    }
}

/// Descriptors that [`Async`] puts in non-blocking mode.
pub trait NonBlocking: AsFd {
    fn set_nonblocking(&self) -> io::Result<()>;
}

macro_rules! non_blocking {
    ($($t:ty),*) => {$(
        impl NonBlocking for $t {
            fn set_nonblocking(&self) -> io::Result<()> {
                <$t>::set_nonblocking(self, true)
            }
        }
    )*};
}
non_blocking!(UdpSocket, TcpStream, UnixStream, UnixListener);

/// A non-blocking descriptor registered with this thread's reactor.
pub struct Async<T: AsFd> {
    key: usize,
    inner: Option<T>,
}

impl<T: NonBlocking> Async<T> {
    pub fn new(inner: T) -> io::Result<Async<T>> {
        inner.set_nonblocking()?;
        Async::registered(inner)
    }
}

impl<T: AsFd> Async<T> {
    /// For descriptors that are non-blocking already.
    pub fn registered(inner: T) -> io::Result<Async<T>> {
        let key = with(|r| r.insert(inner.as_fd()))?;
        Ok(Async { key, inner: Some(inner) })
    }

    pub fn get_ref(&self) -> &T {
        self.inner.as_ref().expect("taken only in drop")
    }

    fn poll_ready(&self, write: bool, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with(|r| r.poll_ready(self.key, write, cx))
    }

    /// Forgets reported readiness: call before an attempt to read, so that
    /// only an edge after it counts.
    pub fn clear_readable(&self) -> bool {
        with(|r| r.source(self.key).is_some_and(|s| std::mem::take(&mut s.read.ready)))
    }

    /// Says there may be more to read (an attempt stopped early), so the
    /// next [`Self::readable`] resolves at once.
    pub fn mark_readable(&self) {
        with(|r| r.set_ready(self.key, false, true));
    }

    /// Resolves when the descriptor has become readable since the last
    /// attempt (or spuriously).
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_ready(false, cx)).await
    }

    pub async fn writable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_ready(true, cx)).await
    }

    /// Retries `op` until it does not say `WouldBlock`.
    pub async fn read_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        loop {
            self.clear_readable();
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                result => return result,
            }
        }
    }
}

impl<T: AsFd> Drop for Async<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            // try_with: at thread exit the reactor may be gone already, and
            // with it the epoll descriptor.
            let _ = REACTOR.try_with(|r| r.borrow_mut().remove(self.key, inner.as_fd()));
        }
    }
}

impl Async<UnixListener> {
    pub async fn accept(&self) -> io::Result<(Async<UnixStream>, std::os::unix::net::SocketAddr)> {
        let (stream, addr) = self.read_with(|l| l.accept()).await?;
        Ok((Async::new(stream)?, addr))
    }
}

impl Async<TcpStream> {
    /// Connects without blocking the thread.
    pub async fn connect(addr: SocketAddr) -> io::Result<Async<TcpStream>> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, connect, socket};
        let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
        match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let stream = Async::registered(TcpStream::from(fd))?;
        stream.writable().await?;
        // Writable also when the connection failed; the error says which.
        match stream.get_ref().take_error()? {
            Some(e) => Err(e),
            None => {
                stream.get_ref().peer_addr()?;
                Ok(stream)
            }
        }
    }
}

fn poll_io<T: AsFd, R>(
    this: &Async<T>,
    write: bool,
    cx: &mut Context<'_>,
    mut op: impl FnMut(&T) -> io::Result<R>,
) -> Poll<io::Result<R>> {
    loop {
        // Only an edge after this attempt means trying again can help.
        with(|r| r.set_ready(this.key, write, false));
        match op(this.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match this.poll_ready(write, cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            },
            result => return Poll::Ready(result),
        }
    }
}

macro_rules! byte_stream {
    ($($t:ty),*) => {$(
        impl AsyncRead for &Async<$t> {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
                poll_io(*self, false, cx, |mut s| s.read(buf))
            }
        }

        impl AsyncWrite for &Async<$t> {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                poll_io(*self, true, cx, |mut s| s.write(buf))
            }

            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(self.get_ref().shutdown(std::net::Shutdown::Write))
            }
        }

        impl AsyncRead for Async<$t> {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
                Pin::new(&mut &*self).poll_read(cx, buf)
            }
        }

        impl AsyncWrite for Async<$t> {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                Pin::new(&mut &*self).poll_write(cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut &*self).poll_flush(cx)
            }

            fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut &*self).poll_close(cx)
            }
        }
    )*};
}
byte_stream!(TcpStream, UnixStream);

/// A future that resolves at a point in time (never, if it has none).
pub struct Timer {
    at: Option<Instant>,
    id: u64,
    /// The instant it is filed under in the reactor's timers.
    filed: Option<Instant>,
}

impl Timer {
    pub fn never() -> Timer {
        Timer { at: None, id: with(|r| r.next_timer_id()), filed: None }
    }

    pub fn at(at: Instant) -> Timer {
        let mut timer = Timer::never();
        timer.at = Some(at);
        timer
    }

    pub fn after(duration: Duration) -> Timer {
        Timer::at(Instant::now() + duration)
    }

    pub fn set_at(&mut self, at: Instant) {
        self.unfile();
        self.at = Some(at);
    }

    fn unfile(&mut self) {
        if let Some(filed) = self.filed.take() {
            let _ = REACTOR.try_with(|r| r.borrow_mut().timers.remove(&(filed, self.id)));
        }
    }
}

impl Future for Timer {
    type Output = Instant;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Instant> {
        let Some(at) = self.at else { return Poll::Pending };
        if at <= Instant::now() {
            self.unfile();
            return Poll::Ready(at);
        }
        let id = self.id;
        if self.filed.is_some_and(|filed| filed != at) {
            self.unfile();
        }
        with(|r| match r.timers.get_mut(&(at, id)) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => *w = cx.waker().clone(),
            None => {
                r.timers.insert((at, id), cx.waker().clone());
            }
        });
        self.filed = Some(at);
        Poll::Pending
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.unfile();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn timers_fire_in_order_and_a_dropped_one_leaves_nothing_behind() {
        block_on(async {
            let start = Instant::now();
            {
                let mut dropped = Timer::after(Duration::from_secs(3600));
                assert!(futures_lite::future::poll_once(&mut dropped).await.is_none());
                with(|r| assert_eq!(r.timers.len(), 1));
            }
            let fired = Timer::after(Duration::from_millis(20)).await;
            assert!(fired >= start + Duration::from_millis(20));
            assert!(Instant::now() >= fired);
        });
        with(|r| assert!(r.timers.is_empty()));
    }

    #[test]
    fn a_moved_deadline_fires_at_the_new_time_only() {
        block_on(async {
            let start = Instant::now();
            let mut timer = Timer::after(Duration::from_secs(3600));
            assert!(futures_lite::future::poll_once(&mut timer).await.is_none());
            timer.set_at(start + Duration::from_millis(10));
            (&mut timer).await;
            with(|r| assert!(r.timers.is_empty()));
        });
    }

    #[test]
    fn streams_carry_bytes_both_ways_and_another_thread_wakes_the_loop() {
        let (a, b) = UnixStream::pair().unwrap();
        let (tx, rx) = async_channel::bounded::<u8>(1);
        let helper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send_blocking(7).unwrap();
        });
        block_on(async {
            let a = Async::new(a).unwrap();
            let b = Async::new(b).unwrap();
            let echo = async {
                let mut buf = [0u8; 5];
                (&b).read_exact(&mut buf).await.unwrap();
                (&b).write_all(&buf).await.unwrap();
            };
            let ask = async {
                (&a).write_all(b"hello").await.unwrap();
                let mut buf = [0u8; 5];
                (&a).read_exact(&mut buf).await.unwrap();
                buf
            };
            let (_, answer) = futures_lite::future::zip(echo, ask).await;
            assert_eq!(&answer, b"hello");
            assert_eq!(rx.recv().await.unwrap(), 7);
        });
        helper.join().unwrap();
    }

    #[test]
    fn a_refused_connection_is_an_error_and_an_accepted_one_works() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        drop(listener);
        let refused = block_on(Async::<TcpStream>::connect(open)).err().expect("nothing listens there");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = block_on(Async::<TcpStream>::connect(addr)).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        accepted.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        block_on(async { (&stream).read_exact(&mut buf).await }).unwrap();
        assert_eq!(&buf, b"x");
    }
}
