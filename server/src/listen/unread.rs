//! The part of a request body a handler did not read, read to its end before the answer goes
//! out, so that a refused upload gets its answer instead of a connection reset.
//!
//! A handler that refuses a body over the limit (`413 payload_too_large`) drops it unread.
//! hyper then gives up on the connection: it closes it after the response, while the client is
//! still sending, and the client's kernel answers the unread bytes with a reset that can
//! overtake the response. The client sees "connection reset" instead of a clear 413 (reqwest,
//! curl and Node's `fetch` all do, some of the time). So the connection's service hands the
//! router a [`SharedBody`] and keeps an [`Unread`] handle to the same body; once the response is
//! ready and the handler has let go of the body, [`Unread::finish`] reads what is left, up to
//! [`limits::UNREAD_BODY_DRAIN_BYTES`] and within the body's own deadline (the body is a
//! [`super::timeouts::DeadlineBody`]), and throws it away. A body larger than that, or one that
//! fails, is abandoned: the response says `Connection: close`.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use herald_protocol::limits;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::metrics as m;

/// The request body as the router sees it; reads go through to the body [`Unread`] shares.
pub struct SharedBody<B> {
    inner: Arc<Mutex<B>>,
}

/// The connection's handle on a request body the router may leave unfinished.
pub struct Unread<B> {
    inner: Arc<Mutex<B>>,
}

/// What became of the rest of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Read to its end (or it had been): the connection can serve its next request.
    Complete,
    /// Still in the handler's hands (it streams it): hyper deals with the rest.
    InUse,
    /// Too large, failed or timed out: the connection must close after the response.
    Abandoned,
}

/// `body`, split into the router's side and the connection's.
pub fn share<B>(body: B) -> (SharedBody<B>, Unread<B>) {
    let inner = Arc::new(Mutex::new(body));
    (
        SharedBody {
            inner: inner.clone(),
        },
        Unread { inner },
    )
}

impl<B> Body for SharedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut *self.inner.lock()).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.lock().is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.lock().size_hint()
    }
}

impl<B> Unread<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// Reads and discards what the handler left of the body, up to `cap` bytes.
    pub async fn finish(self, cap: usize) -> Finished {
        let Ok(body) = Arc::try_unwrap(self.inner) else {
            return Finished::InUse;
        };
        let mut body = body.into_inner();
        if body.is_end_stream() {
            return Finished::Complete;
        }
        let cap = cap as u64;
        let outcome = if body.size_hint().lower() > cap {
            Finished::Abandoned
        } else {
            let mut read = 0u64;
            loop {
                match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    None => break Finished::Complete,
                    Some(Err(_)) => break Finished::Abandoned,
                    Some(Ok(frame)) => {
                        read += frame.data_ref().map_or(0, |d| d.len() as u64);
                        if read > cap {
                            break Finished::Abandoned;
                        }
                    }
                }
            }
        };
        let label = match outcome {
            Finished::Abandoned => "abandoned",
            _ => "drained",
        };
        metrics::counter!(m::UNREAD_BODIES, "outcome" => label).increment(1);
        outcome
    }
}

/// [`Unread::finish`] with the server's cap.
pub async fn finish<B>(unread: Unread<B>) -> Finished
where
    B: Body<Data = Bytes> + Unpin,
{
    unread.finish(limits::UNREAD_BODY_DRAIN_BYTES).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body as AxumBody;

    fn chunks(n: usize, size: usize) -> AxumBody {
        let parts = (0..n).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size])));
        AxumBody::from_stream(futures_util::stream::iter(parts))
    }

    #[tokio::test]
    async fn a_body_the_handler_dropped_is_read_to_its_end() {
        let (shared, unread) = share(chunks(4, 1000));
        drop(shared);
        assert_eq!(unread.finish(10_000).await, Finished::Complete);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_abandoned() {
        let (shared, unread) = share(chunks(4, 1000));
        drop(shared);
        assert_eq!(unread.finish(3_500).await, Finished::Abandoned);
        let (shared, unread) = share(AxumBody::from(vec![0u8; 5000]));
        drop(shared);
        assert_eq!(unread.finish(4_999).await, Finished::Abandoned);
    }

    #[tokio::test]
    async fn a_body_still_held_is_left_alone() {
        let (shared, unread) = share(chunks(1, 10));
        assert_eq!(unread.finish(0).await, Finished::InUse);
        drop(shared);
    }

    #[tokio::test]
    async fn a_body_read_whole_needs_nothing_more() {
        let (mut shared, unread) = share(AxumBody::from("abc"));
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut shared).poll_frame(cx)).await {
            assert!(frame.is_ok());
        }
        drop(shared);
        assert_eq!(unread.finish(0).await, Finished::Complete);
    }
}
