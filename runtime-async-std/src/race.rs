//! A two-way select over plain futures (std only, no runtime).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

/// Which of two raced futures finished first.
pub(crate) enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Wait for whichever of `left` and `right` finishes first; the other is dropped.
///
/// `left` is polled first, so it wins a tie. Every future raced in this crate is
/// cancel-safe (channel receives, readiness-based socket reads and writes): the
/// loser loses no data.
pub(crate) async fn race<L: Future, R: Future>(left: L, right: R) -> Either<L::Output, R::Output> {
    let mut left = pin!(left);
    let mut right = pin!(right);
    poll_fn(|cx| {
        if let Poll::Ready(out) = left.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(out));
        }
        if let Poll::Ready(out) = right.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(out));
        }
        Poll::Pending
    })
    .await
}
