//! Frames waiting for one WebSocket's writer, and the order to close it.
//!
//! The registry runs on one thread, so this is a plain queue behind an `Rc`,
//! not a channel: an idle client's mailbox is an empty `VecDeque` (no
//! allocation) and a few words. async-channel's unbounded channel kept a
//! block of 31 slots (1.5 KiB) per client once a frame had passed, plus the
//! channel and its event listeners; with 10,000 clients the blocks alone
//! were a tenth of the registry's memory (15 of 148 MB).

use async_tungstenite::tungstenite::Message;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A queue that grew past this many frames is freed once it is empty.
const KEEP_CAPACITY: usize = 8;

#[derive(Default)]
pub(super) struct Mailbox {
    queue: RefCell<VecDeque<Message>>,
    close: Cell<Option<(u16, &'static str)>>,
    /// The connection's task: it alone waits on the mailbox.
    waker: RefCell<Option<Waker>>,
}

impl Mailbox {
    /// Frames queued and not yet taken by the writer.
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    pub fn is_closing(&self) -> bool {
        self.close.get().is_some()
    }

    /// Queues `msg` unless the connection is closing. The dispatcher keeps
    /// the length within the configured send queue.
    pub fn push(&self, msg: Message) {
        if self.is_closing() {
            return;
        }
        self.queue.borrow_mut().push_back(msg);
        self.wake();
    }

    /// Ends the connection with `code`: nothing queued is sent any more.
    /// The first reason given is the one the client gets.
    pub fn close(&self, code: u16, reason: &'static str) {
        if self.close.get().is_none() {
            self.close.set(Some((code, reason)));
        }
        *self.queue.borrow_mut() = VecDeque::new();
        self.wake();
    }

    /// The close code and reason, once [`Mailbox::close`] was called.
    pub fn close_reason(&self) -> Option<(u16, &'static str)> {
        self.close.get()
    }

    /// The next frame to send, waiting for one; `None` once closing.
    pub async fn next(&self) -> Option<Message> {
        poll_fn(|cx| {
            if let Some(msg) = self.try_next() {
                return Poll::Ready(Some(msg));
            }
            if self.is_closing() {
                return Poll::Ready(None);
            }
            self.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// The next frame if one is queued.
    pub fn try_next(&self) -> Option<Message> {
        if self.is_closing() {
            return None;
        }
        let mut queue = self.queue.borrow_mut();
        let msg = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEEP_CAPACITY {
            *queue = VecDeque::new();
        }
        msg
    }

    /// Resolves once the connection is to be closed, even while the
    /// writer is stuck on a client that does not read.
    pub async fn closing(&self) -> (u16, &'static str) {
        poll_fn(|cx| match self.close.get() {
            Some(close) => Poll::Ready(close),
            None => {
                self.register(cx.waker());
                Poll::Pending
            }
        })
        .await
    }

    fn register(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn frames_come_out_in_order_and_a_drained_queue_is_freed() {
        let mb = Mailbox::default();
        for i in 0..20 {
            mb.push(Message::text(i.to_string()));
        }
        assert_eq!(mb.len(), 20);
        for i in 0..20 {
            assert_eq!(future::block_on(mb.next()), Some(Message::text(i.to_string())));
        }
        assert_eq!(mb.queue.borrow().capacity(), 0);
        assert_eq!(mb.try_next(), None);
    }

    #[test]
    fn closing_drops_what_is_queued_and_keeps_the_first_reason() {
        let mb = Mailbox::default();
        mb.push(Message::text("lost"));
        mb.close(4001, "revoked");
        mb.close(1001, "shutting down");
        mb.push(Message::text("also lost"));
        assert_eq!(mb.len(), 0);
        assert_eq!(future::block_on(mb.next()), None);
        assert_eq!(future::block_on(mb.closing()), (4001, "revoked"));
    }

    #[test]
    fn a_waiting_writer_is_woken_by_a_frame_and_by_a_close() {
        let mb = std::rc::Rc::new(Mailbox::default());
        let ex = smol::LocalExecutor::new();
        let writer = ex.spawn({
            let mb = mb.clone();
            async move {
                let first = mb.next().await;
                let second = mb.next().await;
                (first, second)
            }
        });
        assert!(ex.try_tick());
        assert!(!ex.try_tick(), "the writer waits");
        mb.push(Message::text("a"));
        assert!(ex.try_tick());
        mb.close(1000, "bye");
        assert!(ex.try_tick());
        assert_eq!(future::block_on(writer), (Some(Message::text("a")), None));
    }
}
