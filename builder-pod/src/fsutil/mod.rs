//! The fsutil file-transfer protocol (tonistiigi/fsutil) that BuildKit runs
//! over `FileSync/DiffCopy` to upload a build context and over
//! `FileSend/DiffCopy` to export a directory (docs/protocol.md §4.1,
//! §4.2).
//!
//! The sender walks a tree and sends one `PACKET_STAT` per entry in a strict
//! order; the receiver compares the stats with what it already has, asks for
//! the content of the files it lacks with `PACKET_REQ`, and the sender
//! answers with `PACKET_DATA` chunks. Both sides are transport-free: they
//! read a stream of incoming packets and write outgoing ones into a channel,
//! which the session layer wires to gRPC.

mod receive;
mod send;
mod walk;

pub(crate) mod patterns;
pub(crate) mod stat;

use std::io;
use std::path::PathBuf;

use kiln_proto::buildkit::fsutil::types::Packet;
use kiln_proto::buildkit::fsutil::types::packet::PacketType;

pub(crate) use patterns::{PatternError, PatternMatcher};
pub(crate) use receive::{Change, Differ, ReceiveOptions, ReceiveReport, receive};
pub(crate) use send::{WalkFilter, send};

/// Largest `PACKET_DATA` payload a sender writes (fsutil `send.go` buffer).
pub(crate) const DATA_CHUNK: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FsutilError {
    #[error("invalid path {path:?} in stat: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("changes out of order: {path:?} after {previous:?}")]
    OutOfOrder { path: String, previous: String },
    #[error("invalid hardlink {path:?} to {target:?}: the target was not sent before it as a file")]
    InvalidHardlink { path: String, target: String },
    #[error("unsupported file mode {mode:#x} for {path:?}")]
    UnsupportedMode { path: String, mode: u32 },
    #[error("invalid file request {id}: no file with that id can be requested")]
    InvalidRequest { id: u32 },
    #[error("PACKET_DATA for file id {id}, which was not requested or is already complete")]
    UnexpectedData { id: u32 },
    #[error("unexpected {packet} {context}")]
    UnexpectedPacket { packet: &'static str, context: &'static str },
    #[error("unknown packet type {0}")]
    UnknownPacketType(i32),
    #[error("stream ended before PACKET_FIN ({state})")]
    Truncated { state: String },
    #[error("more than {limit} files are receiving data at the same time")]
    TooManyOpenFiles { limit: usize },
    #[error("more than {} entries in one transfer", u32::MAX)]
    TooManyEntries,
    #[error("error from peer: {message}")]
    Peer { message: String },
    #[error("transport failed: {0}")]
    Transport(#[source] tonic::Status),
    #[error("the peer stopped reading the stream")]
    PeerGone,
    #[error("invalid filter: {0}")]
    Pattern(#[from] PatternError),
    #[error("a file-transfer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),

    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} has a name that is not UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("reading directory {}: {source}", path.display())]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("reading metadata of {}: {source}", path.display())]
    Stat { path: PathBuf, source: io::Error },
    #[error("reading symlink {}: {source}", path.display())]
    ReadLink { path: PathBuf, source: io::Error },
    #[error("listing extended attributes of {}: {source}", path.display())]
    ListXattrs { path: PathBuf, source: io::Error },
    #[error("opening {}: {source}", path.display())]
    OpenFile { path: PathBuf, source: io::Error },
    #[error("reading {}: {source}", path.display())]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("creating directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("creating a temporary file for {}: {source}", path.display())]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("writing {}: {source}", path.display())]
    WriteFile { path: PathBuf, source: io::Error },
    #[error("creating symlink {}: {source}", path.display())]
    CreateSymlink { path: PathBuf, source: io::Error },
    #[error("linking {} to {}: {source}", path.display(), target.display())]
    CreateHardlink { path: PathBuf, target: PathBuf, source: io::Error },
    #[error("creating device or fifo {}: {source}", path.display())]
    CreateNode { path: PathBuf, source: io::Error },
    #[error("changing the owner of {}: {source}", path.display())]
    SetOwner { path: PathBuf, source: io::Error },
    #[error("changing the mode of {}: {source}", path.display())]
    SetMode { path: PathBuf, source: io::Error },
    #[error("setting the times of {}: {source}", path.display())]
    SetTimes { path: PathBuf, source: io::Error },
    #[error("moving the received file into place at {}: {source}", path.display())]
    Rename { path: PathBuf, source: io::Error },
    #[error("removing {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

impl FsutilError {
    /// Whether the peer should hear about this error as a `PACKET_ERR`: not
    /// when it came from the peer or the transport is already gone.
    fn tell_peer(&self) -> bool {
        !matches!(self, Self::Peer { .. } | Self::Transport(_) | Self::PeerGone)
    }

    fn packet(&self) -> Packet {
        Packet {
            r#type: PacketType::PacketErr.into(),
            data: self.to_string().into_bytes(),
            ..Packet::default()
        }
    }
}

fn packet(kind: PacketType) -> Packet {
    Packet { r#type: kind.into(), ..Packet::default() }
}

/// Aborts a spawned helper task when the transfer that owns it ends or is
/// dropped, so no task outlives its transfer.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Best-effort `PACKET_ERR` to the peer after a failed transfer; bounded in
/// time because a peer that stopped reading must not hold the caller.
async fn notify_peer(outgoing: &tokio::sync::mpsc::Sender<Packet>, error: &FsutilError) {
    if error.tell_peer() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), outgoing.send(error.packet())).await;
    }
}

#[cfg(test)]
mod tests;
