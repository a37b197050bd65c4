//! Output held while a connection is busy and sent when it waits: the answers it produced
//! in one pass go out in one write.
//!
//! hyper's HTTP/2 connection writes a DATA frame of more than 256 bytes straight from the
//! response body and flushes before it takes the next one, so N answers ready at once
//! made N TLS records and N `writev` calls, each waking the client. [`Corked`] keeps what
//! is written in a buffer and treats a flush as owed; [`Uncork::drive`] polls the
//! connection and, whenever it returns `Pending` (it has nothing more to do until the
//! network or a request task wakes it), writes the buffer and flushes. Once [`HIGH`] bytes
//! are held the next write sends them first, at most [`TAKE`] bytes are taken from one
//! write, and a full socket pushes back on the writer as before. Nothing is held past the
//! pass that wrote it: the driver runs in the same task poll.
//! The buffer itself is kept between passes and given back by [`Uncork::release`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes out without waiting for the pass to end: two full TLS
/// records, room for the answers to a few reviews.
const HIGH: usize = 32 * 1024;
/// Bytes taken from one write at most: an HTTP/2 frame (16 KiB and its header) always
/// fits whole; a larger HTTP/1.1 body is taken in parts, so at most `HIGH + TAKE` is held.
const TAKE: usize = 32 * 1024;
/// A buffer grown past this by a burst is freed once written.
const KEEP: usize = HIGH + TAKE;

/// The stream as the connection sees it: reads pass through, writes are held.
pub struct Corked<S> {
    shared: Arc<Mutex<Held<S>>>,
}

/// The driver's handle on the same stream.
pub struct Uncork<S> {
    shared: Arc<Mutex<Held<S>>>,
}

struct Held<S> {
    inner: S,
    out: Vec<u8>,
    /// How much of `out` is already written.
    sent: usize,
    /// The connection asked for a flush since the last one.
    owed: bool,
    /// A write error met by the driver, given to the connection on its next call.
    failed: Option<(io::ErrorKind, String)>,
}

impl<S> Corked<S> {
    pub fn new(inner: S) -> (Corked<S>, Uncork<S>) {
        let shared = Arc::new(Mutex::new(Held {
            inner,
            out: Vec::new(),
            sent: 0,
            owed: false,
            failed: None,
        }));
        (
            Corked {
                shared: shared.clone(),
            },
            Uncork { shared },
        )
    }
}

fn lock<S>(shared: &Mutex<Held<S>>) -> MutexGuard<'_, Held<S>> {
    // Only this connection's task touches the stream; a panic inside an earlier call
    // cannot leave the buffer half-changed in a way a later write would misread.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S> Held<S> {
    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Held<S> {
    /// Write out everything held.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Write out everything held, then flush the stream beneath.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.write_out(cx))?;
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.owed = false;
        Poll::Ready(Ok(()))
    }

    /// Room for more: past [`HIGH`], what is held goes out first.
    fn make_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        if self.out.len() - self.sent >= HIGH {
            ready!(self.write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut held = lock(&self.shared);
        held.check()?;
        Pin::new(&mut held.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut held = lock(&self.shared);
        ready!(held.make_room(cx))?;
        let n = data.len().min(TAKE);
        held.out.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut held = lock(&self.shared);
        ready!(held.make_room(cx))?;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(TAKE - n);
            held.out.extend_from_slice(&b[..take]);
            n += take;
            if n == TAKE {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Owed, not done: the driver flushes when the connection waits.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = lock(&self.shared);
        held.check()?;
        held.owed = true;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = lock(&self.shared);
        held.check()?;
        ready!(held.flush(cx))?;
        Pin::new(&mut held.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncWrite + Unpin> Uncork<S> {
    /// Poll `conn`, the connection that writes through the [`Corked`] half; each time it
    /// waits, send what it wrote. A write error is kept for the connection's next call on
    /// the stream, and the task woken so that it makes that call.
    pub fn drive<F: Future + Unpin>(&self, conn: &mut F, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = Pin::new(conn).poll(cx);
        if r.is_pending() {
            let mut held = lock(&self.shared);
            if held.failed.is_none()
                && (held.owed || held.sent < held.out.len())
                && let Poll::Ready(Err(e)) = held.flush(cx)
            {
                held.failed = Some((e.kind(), e.to_string()));
                cx.waker().wake_by_ref();
            }
        }
        r
    }

    /// Give back the buffer if nothing is held: the accept loop calls this on its
    /// periodic tick, so an idle connection keeps no buffer.
    pub fn release(&self) {
        let mut held = lock(&self.shared);
        if held.out.is_empty() {
            held.out = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stream that records each write it is given, and can be told to refuse them.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
        /// Accept at most this many bytes per write; `Some(0)`: would block.
        limit: Option<usize>,
        broken: bool,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            buf.put_slice(b"in");
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.broken {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "peer went away",
                )));
            }
            let n = self.limit.map_or(data.len(), |l| l.min(data.len()));
            if n == 0 {
                return Poll::Pending;
            }
            self.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    fn recorder<R>(u: &Uncork<Recorder>, f: impl FnOnce(&mut Recorder) -> R) -> R {
        f(&mut lock(&u.shared).inner)
    }

    /// A connection's pass: write each answer and flush after each, as h2 does, then wait.
    fn answers(io: &mut Corked<Recorder>, n: usize) -> impl Future<Output = ()> + Unpin {
        let mut left = n;
        poll_fn(move |cx| {
            while left > 0 {
                let body = vec![b'a' + left as u8; 5000];
                let mut io = Pin::new(&mut *io);
                assert!(matches!(
                    io.as_mut().poll_write(cx, &body),
                    Poll::Ready(Ok(5000))
                ));
                assert!(io.as_mut().poll_flush(cx).is_ready());
                left -= 1;
            }
            Poll::Pending
        })
    }

    /// Drive `conn` through one pass, which must end with it waiting.
    async fn one_pass<F: Future + Unpin>(uncork: &Uncork<Recorder>, conn: &mut F) {
        poll_fn(|cx| {
            assert!(uncork.drive(conn, cx).is_pending());
            Poll::Ready(())
        })
        .await;
    }

    #[tokio::test]
    async fn a_pass_goes_out_in_one_write_when_the_connection_waits() {
        let (mut io, uncork) = Corked::new(Recorder::default());
        let mut conn = answers(&mut io, 3);
        one_pass(&uncork, &mut conn).await;
        drop(conn);
        recorder(&uncork, |r| {
            assert_eq!(r.writes.len(), 1, "three answers, one write");
            assert_eq!(r.writes[0].len(), 15_000);
            assert_eq!(&r.writes[0][..1], &[b'a' + 3]);
            assert_eq!(&r.writes[0][14_999..], &[b'a' + 1]);
            assert_eq!(r.flushes, 1);
        });
        // Nothing is held afterwards, and an idle pass writes nothing.
        let mut idle = poll_fn(|_| Poll::<()>::Pending);
        one_pass(&uncork, &mut idle).await;
        recorder(&uncork, |r| assert_eq!((r.writes.len(), r.flushes), (1, 1)));
        // The buffer is kept for the next pass until released.
        assert!(lock(&uncork.shared).out.capacity() >= 15_000);
        uncork.release();
        assert_eq!(lock(&uncork.shared).out.capacity(), 0);
    }

    #[tokio::test]
    async fn a_large_write_is_taken_in_parts() {
        let (mut io, uncork) = Corked::new(Recorder::default());
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        io.write_all(&body).await.unwrap();
        let (head, tail) = body.split_at(40_000);
        let taken = io
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(tail)])
            .await
            .unwrap();
        assert_eq!(taken, TAKE);
        io.shutdown().await.unwrap();
        recorder(&uncork, |r| {
            assert!(r.writes.iter().all(|w| w.len() <= HIGH + TAKE));
            let all = r.writes.concat();
            assert_eq!(&all[..100_000], &body[..]);
            // The vectored write took one part: all of `head`, none of `tail`.
            assert_eq!(&all[100_000..], &head[..TAKE]);
        });
    }

    #[tokio::test]
    async fn release_keeps_what_is_held() {
        let (mut io, uncork) = Corked::new(Recorder::default());
        io.write_all(b"held").await.unwrap();
        uncork.release();
        io.shutdown().await.unwrap();
        recorder(&uncork, |r| assert_eq!(r.writes, vec![b"held".to_vec()]));
    }

    #[tokio::test]
    async fn a_pass_past_the_high_mark_goes_out_in_parts() {
        let (mut io, uncork) = Corked::new(Recorder::default());
        let mut conn = answers(&mut io, 8);
        one_pass(&uncork, &mut conn).await;
        drop(conn);
        recorder(&uncork, |r| {
            // Seven answers pass 32 KiB: they go when the eighth is written, and it at the end.
            let sizes: Vec<usize> = r.writes.iter().map(Vec::len).collect();
            assert_eq!(sizes, [35_000, 5_000]);
            assert_eq!(&r.writes[1][..1], &[b'a' + 1]);
            assert_eq!(r.flushes, 1);
        });
    }

    #[tokio::test]
    async fn nothing_is_written_before_the_pass_ends() {
        let (mut io, uncork) = Corked::new(Recorder::default());
        io.write_all(b"held").await.unwrap();
        io.flush().await.unwrap();
        recorder(&uncork, |r| assert!(r.writes.is_empty() && r.flushes == 0));
        // A connection that finishes has written through poll_shutdown.
        io.shutdown().await.unwrap();
        recorder(&uncork, |r| {
            assert_eq!(r.writes, vec![b"held".to_vec()]);
            assert!(r.shut && r.flushes == 1);
        });
    }

    #[tokio::test]
    async fn past_the_high_mark_the_writer_waits_for_a_full_socket() {
        let (mut io, uncork) = Corked::new(Recorder {
            limit: Some(0),
            ..Recorder::default()
        });
        let chunks: Vec<Vec<u8>> = (0..=HIGH / (16 * 1024))
            .map(|i| vec![i as u8; 16 * 1024])
            .collect();
        let (last, first) = chunks.split_last().unwrap();
        for chunk in first {
            io.write_all(chunk).await.unwrap();
        }
        // Full: the next write must wait for the socket, not grow the buffer.
        poll_fn(|cx| {
            assert!(Pin::new(&mut io).poll_write(cx, last).is_pending());
            Poll::Ready(())
        })
        .await;
        // The socket drains a little at a time; everything arrives, in order.
        recorder(&uncork, |r| r.limit = Some(10_000));
        io.write_all(last).await.unwrap();
        io.shutdown().await.unwrap();
        recorder(&uncork, |r| assert_eq!(r.writes.concat(), chunks.concat()));
        let held = lock(&uncork.shared);
        assert!(held.out.is_empty() && held.out.capacity() <= KEEP);
    }

    #[tokio::test]
    async fn a_write_error_reaches_the_connection() {
        let (mut io, uncork) = Corked::new(Recorder {
            broken: true,
            ..Recorder::default()
        });
        io.write_all(b"answer").await.unwrap();
        let mut conn = poll_fn(|_| Poll::<()>::Pending);
        one_pass(&uncork, &mut conn).await;
        let e = io.write_all(b"more").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(e.to_string().contains("peer went away"), "{e}");
        let mut buf = [0u8; 4];
        assert_eq!(
            io.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (mut io, _uncork) = Corked::new(Recorder::default());
        let mut buf = [0u8; 2];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"in");
    }
}
