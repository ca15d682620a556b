//! `moby.filesync.v1.FileSend/DiffCopy` on the client: where exporters send
//! files back (docs/protocol.md §4.2). The same RPC carries fsutil
//! packets for a directory target (`local`) and raw bytes for a file target
//! (`tar`, `oci`, `docker`), as the client registered for the exporter index.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use kiln_proto::buildkit::fsutil::types::Packet;
use kiln_proto::buildkit::moby::filesync::packet::file_send_client::FileSendClient as PacketClient;
use kiln_proto::buildkit::moby::filesync::v1::BytesMessage;
use kiln_proto::buildkit::moby::filesync::v1::file_send_client::FileSendClient as BytesClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

use super::{Session, origin};

const METHOD: &str = "/moby.filesync.v1.FileSend/DiffCopy";
/// Which exporter of the request the transfer belongs to (docs/protocol.md §4.2).
const EXPORTER_ID: &str = "buildkit-attachable-exporter-id";
/// Chunks of a file target; the Go side sends at most 3 MiB.
pub(crate) const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileSendError {
    #[error("the client accepts no exported files (its session has no FileSend service)")]
    Unsupported,
    #[error("sending exporter {index}'s files to the client: {status}")]
    Call { index: usize, status: Status },
    #[error("the client closed the transfer of exporter {index} early")]
    Closed { index: usize },
}

fn request<T>(stream: T, index: usize, metadata: &HashMap<String, String>) -> Request<T> {
    let mut req = Request::new(stream);
    let md: &mut MetadataMap = req.metadata_mut();
    md.insert(EXPORTER_ID, MetadataValue::from(index as u64));
    for (k, v) in metadata {
        let key = format!("exporter-md-{k}");
        if let (Ok(key), Ok(value)) = (key.parse::<tonic::metadata::MetadataKey<_>>(), v.parse()) {
            md.insert(key, value);
        }
    }
    req
}

/// A file target: write chunks, then [`BytesUpload::finish`].
#[derive(Debug)]
pub(crate) struct BytesUpload {
    index: usize,
    tx: Option<mpsc::Sender<BytesMessage>>,
    call: JoinHandle<Result<(), Status>>,
}

impl BytesUpload {
    pub(crate) fn open(
        session: &Session,
        index: usize,
        metadata: &HashMap<String, String>,
    ) -> Result<Self, FileSendError> {
        if !session.supports(METHOD) {
            return Err(FileSendError::Unsupported);
        }
        let (tx, rx) = mpsc::channel(4);
        let mut client = BytesClient::with_origin(session.channel(), origin());
        let req = request(ReceiverStream::new(rx), index, metadata);
        // The call runs on its own so the request body flows while we write.
        let call = tokio::spawn(async move {
            let mut responses = client.diff_copy(req).await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok(())
        });
        Ok(Self { index, tx: Some(tx), call })
    }

    /// A clone of the sender, for a blocking writer on another thread.
    pub(crate) fn sender(&self) -> Option<mpsc::Sender<BytesMessage>> {
        self.tx.clone()
    }

    /// Ends the stream and waits until the client has written everything.
    pub(crate) async fn finish(mut self) -> Result<(), FileSendError> {
        self.tx = None;
        let index = self.index;
        match self.call.await {
            Ok(result) => result.map_err(|status| FileSendError::Call { index, status }),
            Err(e) => Err(FileSendError::Call { index, status: Status::internal(e.to_string()) }),
        }
    }
}

pub(crate) type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

/// A directory target: the fsutil packets to send and those that come back.
pub(crate) fn open_packets(
    session: &Session,
    index: usize,
) -> Result<(mpsc::Sender<Packet>, PacketStream), FileSendError> {
    if !session.supports(METHOD) {
        return Err(FileSendError::Unsupported);
    }
    let (tx, rx) = mpsc::channel(64);
    let mut client = PacketClient::with_origin(session.channel(), origin());
    let req = request(ReceiverStream::new(rx), index, &HashMap::new());
    Ok((tx, streaming(async move { client.diff_copy(req).await })))
}

/// The responses of a bidirectional call, with the call running on its own
/// task: a peer may answer only after our first messages, so waiting for
/// its response headers before sending would deadlock.
pub(crate) fn streaming<F>(call: F) -> PacketStream
where
    F: Future<Output = Result<tonic::Response<tonic::Streaming<Packet>>, Status>> + Send + 'static,
{
    let call = tokio::spawn(call);
    let incoming = futures::stream::once(call)
        .map(|joined| match joined {
            Ok(Ok(resp)) => resp.into_inner().boxed(),
            Ok(Err(status)) => futures::stream::once(async move { Err(status) }).boxed(),
            Err(e) => futures::stream::once(async move { Err(Status::internal(e.to_string())) }).boxed(),
        })
        .flatten();
    Box::pin(incoming)
}
