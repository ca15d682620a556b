//! A gRPC byte stream as a connection (docs/protocol.md §3.1–3.2).
//!
//! `Control.Session` carries raw HTTP/2 frames in `BytesMessage`s. Messages
//! have no framing meaning: a write sends one message, a read hands out the
//! bytes of received messages in order. The same adaptor serves both ends —
//! the daemon's (requests in, responses out) and, in tests, the client's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures::Stream;
use kiln_proto::buildkit::moby::buildkit::v1::BytesMessage;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// Reads from `incoming`, writes one `BytesMessage` per write into `outgoing`.
pub(crate) struct Tunnel<S> {
    incoming: S,
    pending: Bytes,
    eof: bool,
    outgoing: PollSender<Result<BytesMessage, tonic::Status>>,
}

impl<S> std::fmt::Debug for Tunnel<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("pending", &self.pending.len()).field("eof", &self.eof).finish()
    }
}

impl<S> Tunnel<S>
where
    S: Stream<Item = Result<BytesMessage, tonic::Status>> + Unpin,
{
    pub(crate) fn new(incoming: S, outgoing: mpsc::Sender<Result<BytesMessage, tonic::Status>>) -> Self {
        Self { incoming, pending: Bytes::new(), eof: false, outgoing: PollSender::new(outgoing) }
    }
}

impl<S> AsyncRead for Tunnel<S>
where
    S: Stream<Item = Result<BytesMessage, tonic::Status>> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.incoming).poll_next(cx)) {
                Some(Ok(msg)) => self.pending = Bytes::from(msg.data),
                // The peer cancelling or closing its side ends the connection.
                Some(Err(status)) if status.code() == tonic::Code::Cancelled => self.eof = true,
                Some(Err(status)) => {
                    // A stream cut by an oversized or corrupt message ends
                    // with that status, so the peer learns why instead of
                    // seeing a clean close.
                    if let Some(out) = self.outgoing.get_ref() {
                        let _ = out.try_send(Err(status.clone()));
                    }
                    return Poll::Ready(Err(io::Error::other(status)));
                }
                None => self.eof = true,
            }
        }
    }
}

impl<S> AsyncWrite for Tunnel<S>
where
    S: Unpin,
{
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "session stream closed");
        ready!(self.outgoing.poll_reserve(cx)).map_err(|_| closed())?;
        self.outgoing.send_item(Ok(BytesMessage { data: buf.to_vec() })).map_err(|_| closed())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends our half: the response stream finishes, which the peer reads as EOF.
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outgoing.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::wrappers::ReceiverStream;

    /// Two tunnels back to back behave like one bidirectional pipe.
    #[tokio::test]
    async fn bytes_cross_in_order_and_shutdown_is_eof() {
        let (a_tx, a_rx) = mpsc::channel(4);
        let (b_tx, b_rx) = mpsc::channel(4);
        let mut a = Tunnel::new(ReceiverStream::new(b_rx), a_tx);
        let mut b = Tunnel::new(ReceiverStream::new(a_rx), b_tx);

        let writer = tokio::spawn(async move {
            for i in 0..100u8 {
                a.write_all(&[i; 1000]).await.unwrap();
            }
            a.shutdown().await.unwrap();
            a
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 100_000);
        assert!(got.chunks(1000).enumerate().all(|(i, c)| c.iter().all(|&x| x as usize == i)));
        let mut a = writer.await.unwrap();

        b.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn a_stream_error_is_a_read_error_and_a_gone_peer_a_write_error() {
        let (tx, rx) = mpsc::channel(1);
        let (out_tx, out_rx) = mpsc::channel(1);
        let mut t = Tunnel::new(ReceiverStream::new(rx), out_tx);
        tx.send(Err(tonic::Status::internal("boom"))).await.unwrap();
        let err = t.read(&mut [0u8; 8]).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let mut out_rx = out_rx;
        let told = out_rx.recv().await.unwrap().unwrap_err();
        assert_eq!((told.code(), told.message()), (tonic::Code::Internal, "boom"), "the peer is told why");
        drop(out_rx);
        assert_eq!(t.write(b"x").await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
