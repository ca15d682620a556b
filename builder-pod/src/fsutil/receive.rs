//! The receiving side of a transfer (fsutil `receive.go`, `diskwriter.go`,
//! `validator.go`, `hardlinks.go`): the daemon for a context upload, the
//! client for a local export (docs/protocol.md §4.1, §4.2).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{DirBuilder, Metadata, Permissions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kiln_proto::buildkit::fsutil::types::packet::PacketType;
use kiln_proto::buildkit::fsutil::types::{Packet, Stat};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, instrument};

use super::stat::{Detail, EntryKind, InodeMap, kind_of, mtime_ns, stat_of, unix_permissions};
use super::walk::{DestWalker, compare_path};
use super::{AbortOnDrop, FsutilError, notify_peer, packet};
use crate::cache::contenthash::{EntryInfo, HashCache, TreeKey};
use crate::util::gopath;

/// How the receiver decides which files it already has (BuildKit's
/// `local.differ` attribute).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Differ {
    /// Keep an entry whose size, mtime, mode, owner, device numbers and link
    /// target are unchanged.
    #[default]
    Metadata,
    /// Take every entry anew.
    None,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ReceiveOptions {
    pub differ: Differ,
    /// Keep entries of `dest` the sender did not mention and take every
    /// file anew (the client side of a local export).
    pub merge: bool,
    /// Where to record each received file's content hash, computed as its
    /// data arrives, so the content key need not read the file again.
    pub hashes: Option<Arc<HashCache>>,
}

/// What a finished transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReceiveReport {
    /// Stats received, one per entry.
    pub entries: u64,
    /// Regular files whose content was requested.
    pub files_requested: u64,
    /// Content bytes received.
    pub bytes_received: u64,
    /// Entries of the previous copy removed because the sender no longer has them.
    pub deleted: u64,
    /// Entries created or rewritten (everything not taken as unchanged).
    pub written: u64,
    /// The paths changed, in the order met, when they are few (at most
    /// [`MAX_CHANGES`]) and the receiver diffed against a previous copy.
    pub changes: Option<Vec<Change>>,
    /// The tree's content key (`content_hash(dest, &[""])`), made from the
    /// walk the receiver did anyway, when it was given a hash cache.
    pub content_key: Option<String>,
}

/// A path of the previous copy a transfer changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Created or rewritten; for a directory also one kept with another
    /// mode, owner or mtime.
    Written(PathBuf),
    /// Removed, with everything below it.
    Deleted(PathBuf),
}

/// More changed paths than this are not listed: past it a caller copies the
/// whole tree rather than a difference.
pub(super) const MAX_CHANGES: usize = 16_384;

/// Files whose data may be arriving at the same time. Senders send a few
/// files at once (fsutil's sender uses 4 workers); more means a peer that
/// would exhaust our file descriptors.
pub(super) const MAX_OPEN_FILES: usize = 64;

/// Receives a tree into `dest`, which holds the previous copy for the same
/// shared key (or nothing). Returns once every requested file is written,
/// `PACKET_FIN` was sent and the sender's `PACKET_FIN` came back. On error
/// the peer gets a `PACKET_ERR`; files being received are removed, never
/// left half-written under their final names.
#[instrument(skip_all, fields(dest = %dest.display(), differ = ?opts.differ, merge = opts.merge))]
pub(crate) async fn receive<S>(
    dest: &Path,
    incoming: S,
    outgoing: mpsc::Sender<Packet>,
    opts: ReceiveOptions,
) -> Result<ReceiveReport, FsutilError>
where
    S: Stream<Item = Result<Packet, tonic::Status>> + Send + 'static,
{
    // Disk work runs on a blocking thread. Incoming packets reach it through
    // a bounded channel; its requests leave through an unbounded one, so it
    // never stops reading data while a request waits to be sent (the
    // sender may be waiting for us to read before it reads our requests).
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let _pump = AbortOnDrop(tokio::spawn(pump(incoming, in_tx).in_current_span()));
    let forwarder = AbortOnDrop(tokio::spawn(forward(out_rx, outgoing.clone()).in_current_span()));
    let dest = dest.to_owned();
    let span = tracing::Span::current();
    let result = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        Receiver::new(dest, opts, in_rx, out_tx)?.run()
    })
    .await
    .map_err(FsutilError::from)
    .and_then(|r| r);
    match result {
        Ok(report) => {
            debug!(?report, "received");
            Ok(report)
        }
        Err(error) => {
            drop(forwarder);
            notify_peer(&outgoing, &error).await;
            Err(error)
        }
    }
}

async fn pump<S>(incoming: S, tx: mpsc::Sender<Result<Packet, tonic::Status>>)
where
    S: Stream<Item = Result<Packet, tonic::Status>>,
{
    let mut incoming = std::pin::pin!(incoming);
    while let Some(item) = incoming.next().await {
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
}

async fn forward(mut rx: mpsc::UnboundedReceiver<Packet>, outgoing: mpsc::Sender<Packet>) {
    while let Some(p) = rx.recv().await {
        if outgoing.send(p).await.is_err() {
            break;
        }
    }
}

/// A requested file: its stat, whether a previous copy is in the way, the
/// file its data goes to once data starts, and the hash of what came so far.
struct PendingFile {
    stat: Stat,
    replaces: bool,
    target: Option<Target>,
    hasher: Option<Sha256>,
}

/// Where a file's data is written: a path nothing is at yet is written in
/// place; one that replaces a previous copy goes to a temporary file renamed
/// over it at the end, as the old copy may be hard-linked into a snapshot.
/// A half-written file left by a failed transfer has no final mtime, so the
/// next transfer does not take it as unchanged.
enum Target {
    Direct(std::fs::File),
    /// Dropping it removes the temporary file.
    Temp(NamedTempFile),
}

impl Target {
    fn open(abs: &Path, replaces: bool) -> Result<Self, FsutilError> {
        if replaces {
            return temp_file_for(abs).map(Self::Temp);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(abs)
            .map(Self::Direct)
            .map_err(|source| FsutilError::CreateFile { path: abs.into(), source })
    }

    fn file(&self) -> &std::fs::File {
        match self {
            Self::Direct(f) => f,
            Self::Temp(t) => t.as_file(),
        }
    }

    /// Puts the file under its final name.
    fn finish(self, abs: &Path) -> Result<(), FsutilError> {
        match self {
            Self::Direct(_) => Ok(()),
            Self::Temp(t) => t
                .persist(abs)
                .map(drop)
                .map_err(|e| FsutilError::Rename { path: abs.into(), source: e.error }),
        }
    }
}

/// A directory whose mode and mtime are set last, after its children were
/// written (writing into it changes its mtime).
struct DirMeta {
    abs: PathBuf,
    chmod: Option<u32>,
    mtime: i64,
}

struct Receiver {
    dest: PathBuf,
    opts: ReceiveOptions,
    incoming: mpsc::Receiver<Result<Packet, tonic::Status>>,
    outgoing: mpsc::UnboundedSender<Packet>,
    order: OrderValidator,
    /// Paths a hardlink may point at: earlier non-directory, non-symlink
    /// entries that are not links themselves (fsutil `Hardlinks`).
    link_targets: HashSet<String>,
    /// The previous copy, walked in step with the stats; `None` in merge mode.
    existing: Option<DestWalker>,
    inodes: InodeMap,
    next_id: u32,
    pending: HashMap<u32, PendingFile>,
    pending_paths: HashSet<String>,
    /// Hardlinks waiting for their target's data, keyed by target path.
    pending_links: HashMap<String, Vec<String>>,
    open_files: usize,
    dirs: Vec<DirMeta>,
    /// Every entry of the tree in order, with its metadata when it was kept
    /// unchanged (a written one is looked at once all is written): what the
    /// content key is made of.
    tree: Option<Vec<(PathBuf, Option<EntryInfo>)>>,
    stats_done: bool,
    fin_sent: bool,
    report: ReceiveReport,
}

impl Receiver {
    fn new(
        dest: PathBuf,
        opts: ReceiveOptions,
        incoming: mpsc::Receiver<Result<Packet, tonic::Status>>,
        outgoing: mpsc::UnboundedSender<Packet>,
    ) -> Result<Self, FsutilError> {
        std::fs::create_dir_all(&dest)
            .map_err(|source| FsutilError::CreateDir { path: dest.clone(), source })?;
        let meta =
            std::fs::metadata(&dest).map_err(|source| FsutilError::Stat { path: dest.clone(), source })?;
        if !meta.is_dir() {
            return Err(FsutilError::NotADirectory { path: dest });
        }
        let existing = if opts.merge { None } else { Some(DestWalker::new(&dest)?) };
        let tree = (opts.hashes.is_some() && !opts.merge).then(Vec::new);
        let changes = (!opts.merge).then(Vec::new);
        Ok(Self {
            dest,
            opts,
            incoming,
            outgoing,
            order: OrderValidator::default(),
            link_targets: HashSet::new(),
            existing,
            inodes: InodeMap::default(),
            next_id: 0,
            pending: HashMap::new(),
            pending_paths: HashSet::new(),
            pending_links: HashMap::new(),
            open_files: 0,
            dirs: Vec::new(),
            tree,
            stats_done: false,
            fin_sent: false,
            report: ReceiveReport { changes, ..ReceiveReport::default() },
        })
    }

    fn run(mut self) -> Result<ReceiveReport, FsutilError> {
        loop {
            if self.stats_done && self.pending.is_empty() && !self.fin_sent {
                self.finish_dirs()?;
                self.send(packet(PacketType::PacketFin))?;
                self.fin_sent = true;
            }
            let packet = match self.incoming.blocking_recv() {
                Some(Ok(p)) => p,
                Some(Err(status)) => return Err(FsutilError::Transport(status)),
                None => return Err(FsutilError::Truncated { state: self.state() }),
            };
            match PacketType::try_from(packet.r#type) {
                Ok(PacketType::PacketStat) if self.stats_done => {
                    return Err(FsutilError::UnexpectedPacket {
                        packet: "PACKET_STAT",
                        context: "after the end of the stat list",
                    });
                }
                Ok(PacketType::PacketStat) => match packet.stat {
                    Some(stat) => self.on_stat(stat)?,
                    None => self.end_of_stats()?,
                },
                Ok(PacketType::PacketData) => self.on_data(packet.id, &packet.data)?,
                Ok(PacketType::PacketFin) if self.fin_sent => return self.finish(),
                Ok(PacketType::PacketFin) => {
                    return Err(FsutilError::UnexpectedPacket {
                        packet: "PACKET_FIN",
                        context: "from the sender before the receiver finished",
                    });
                }
                Ok(PacketType::PacketReq) => {
                    return Err(FsutilError::UnexpectedPacket {
                        packet: "PACKET_REQ",
                        context: "from the sending side",
                    });
                }
                Ok(PacketType::PacketErr) => {
                    return Err(FsutilError::Peer {
                        message: String::from_utf8_lossy(&packet.data).into_owned(),
                    });
                }
                Err(_) => return Err(FsutilError::UnknownPacketType(packet.r#type)),
            }
        }
    }

    /// The report, with the content key made from the entries met.
    fn finish(mut self) -> Result<ReceiveReport, FsutilError> {
        if let (Some(tree), Some(hashes)) = (self.tree.take(), &self.opts.hashes) {
            let mut key = TreeKey::new(&self.dest, hashes);
            for (rel, info) in tree {
                let info = match info {
                    Some(info) => info,
                    None => {
                        let abs = self.dest.join(&rel);
                        let meta = std::fs::symlink_metadata(&abs)
                            .map_err(|source| FsutilError::Stat { path: abs, source })?;
                        EntryInfo::of(&meta)
                    }
                };
                key.entry(&rel, &info).map_err(|(path, source)| FsutilError::Stat { path, source })?;
            }
            self.report.content_key = Some(key.finish());
        }
        Ok(self.report)
    }

    fn state(&self) -> String {
        if !self.stats_done {
            "the stat list was not finished".into()
        } else if !self.pending.is_empty() {
            format!("{} requested files incomplete", self.pending.len())
        } else {
            "no PACKET_FIN from the sender".into()
        }
    }

    fn send(&self, p: Packet) -> Result<(), FsutilError> {
        self.outgoing.send(p).map_err(|_| FsutilError::PeerGone)
    }

    fn on_stat(&mut self, stat: Stat) -> Result<(), FsutilError> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).ok_or(FsutilError::TooManyEntries)?;
        self.report.entries += 1;

        validate_path(&stat.path)?;
        let kind = kind_of(stat.mode)
            .ok_or_else(|| FsutilError::UnsupportedMode { path: stat.path.clone(), mode: stat.mode })?;
        self.order.check(&stat.path, kind == EntryKind::Dir)?;
        let hardlink = !matches!(kind, EntryKind::Dir | EntryKind::Symlink) && !stat.linkname.is_empty();
        if hardlink {
            if !self.link_targets.contains(&stat.linkname) {
                return Err(FsutilError::InvalidHardlink { path: stat.path, target: stat.linkname });
            }
        } else if kind != EntryKind::Dir && kind != EntryKind::Symlink {
            self.link_targets.insert(stat.path.clone());
        }

        let abs = self.dest.join(&stat.path);
        let (existing, from_walker) = self.existing_entry(&stat.path, &abs)?;
        // In merge mode every entry is taken anew, as upstream diffs against nothing.
        let unchanged = match &existing {
            Some(meta) if !self.opts.merge => self.unchanged(&stat, kind, &abs, meta)?,
            _ => false,
        };
        let keep_dir = kind == EntryKind::Dir && existing.as_ref().is_some_and(Metadata::is_dir);
        if from_walker && let Some(walker) = &mut self.existing {
            walker.advance(keep_dir)?;
        }
        if let (true, Some(meta)) = (unchanged, &existing) {
            if let Some(tree) = &mut self.tree {
                tree.push((PathBuf::from(&stat.path), Some(EntryInfo::of(meta))));
            }
            if kind == EntryKind::Dir {
                if mtime_ns(meta) != stat.mod_time {
                    note(&mut self.report.changes, Change::Written(PathBuf::from(&stat.path)));
                }
                self.dirs.push(DirMeta { abs, chmod: None, mtime: stat.mod_time });
            }
            return Ok(());
        }
        self.report.written += 1;
        note(&mut self.report.changes, Change::Written(PathBuf::from(&stat.path)));
        if let Some(tree) = &mut self.tree {
            tree.push((PathBuf::from(&stat.path), None));
        }
        if let Some(meta) = &existing
            && !keep_dir
            && (kind != EntryKind::Regular || hardlink || meta.is_dir())
        {
            // A regular file replaces its old copy by rename once its data is in.
            remove_entry(&abs, meta)?;
        }

        match kind {
            EntryKind::Dir => {
                if !keep_dir {
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&abs)
                        .map_err(|source| FsutilError::CreateDir { path: abs.clone(), source })?;
                }
                set_owner(&abs, &stat)?;
                set_xattrs(&abs, &stat);
                self.dirs.push(DirMeta {
                    abs,
                    chmod: Some(unix_permissions(stat.mode)),
                    mtime: stat.mod_time,
                });
            }
            EntryKind::Symlink => {
                std::os::unix::fs::symlink(&stat.linkname, &abs)
                    .map_err(|source| FsutilError::CreateSymlink { path: abs.clone(), source })?;
                set_owner(&abs, &stat)?;
                set_xattrs(&abs, &stat);
                set_times(&abs, stat.mod_time)?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                make_node(&abs, kind, &stat)?;
                set_owner(&abs, &stat)?;
                set_mode(&abs, &stat)?;
                set_xattrs(&abs, &stat);
                set_times(&abs, stat.mod_time)?;
            }
            EntryKind::Regular if hardlink => {
                if self.pending_paths.contains(&stat.linkname) {
                    self.pending_links.entry(stat.linkname).or_default().push(stat.path);
                } else {
                    self.link(&stat.path, &stat.linkname)?;
                }
            }
            EntryKind::Regular => {
                self.pending_paths.insert(stat.path.clone());
                let hasher = self.opts.hashes.as_ref().map(|_| Sha256::new());
                // A client's own directory (merge mode) never shows a
                // half-written file: there every file goes through a rename.
                let replaces = existing.is_some() || self.opts.merge;
                self.pending.insert(id, PendingFile { stat, replaces, target: None, hasher });
                self.report.files_requested += 1;
                self.send(Packet { r#type: PacketType::PacketReq.into(), id, ..Packet::default() })?;
            }
        }
        Ok(())
    }

    /// The existing entry at `rel`, if any. Walking the previous copy in
    /// step deletes every entry that sorts before `rel` (the sender no
    /// longer has it). The flag says whether it came from the walker, which
    /// must then move past it.
    fn existing_entry(&mut self, rel: &str, abs: &Path) -> Result<(Option<Metadata>, bool), FsutilError> {
        let Some(walker) = &mut self.existing else {
            return match std::fs::symlink_metadata(abs) {
                Ok(meta) => Ok((Some(meta), false)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((None, false)),
                Err(source) => Err(FsutilError::Stat { path: abs.into(), source }),
            };
        };
        while let Some(entry) = walker.peek() {
            match compare_path(&entry.rel, rel.as_bytes()) {
                std::cmp::Ordering::Less => {
                    remove_entry(&entry.abs, &entry.meta)?;
                    let gone = Change::Deleted(PathBuf::from(OsStr::from_bytes(&entry.rel)));
                    walker.advance(false)?;
                    self.report.deleted += 1;
                    note(&mut self.report.changes, gone);
                }
                std::cmp::Ordering::Equal => return Ok((Some(entry.meta.clone()), true)),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok((None, false))
    }

    /// fsutil's `sameFile` for the metadata differ: everything but a
    /// directory must also keep its size and mtime. A hardlink whose
    /// target is being rewritten is never unchanged.
    fn unchanged(
        &mut self,
        stat: &Stat,
        kind: EntryKind,
        abs: &Path,
        meta: &Metadata,
    ) -> Result<bool, FsutilError> {
        if self.opts.differ == Differ::None {
            return Ok(false);
        }
        let old = stat_of(abs, &stat.path, meta, &mut self.inodes, Detail::NoXattrs)?;
        if kind != EntryKind::Dir && (old.size != stat.size || old.mod_time != stat.mod_time) {
            return Ok(false);
        }
        if !stat.linkname.is_empty()
            && kind != EntryKind::Symlink
            && self.pending_paths.contains(&stat.linkname)
        {
            return Ok(false);
        }
        Ok(old.mode == stat.mode
            && old.uid == stat.uid
            && old.gid == stat.gid
            && old.devmajor == stat.devmajor
            && old.devminor == stat.devminor
            && old.linkname == stat.linkname)
    }

    fn end_of_stats(&mut self) -> Result<(), FsutilError> {
        self.stats_done = true;
        if let Some(walker) = &mut self.existing {
            while let Some(entry) = walker.peek() {
                remove_entry(&entry.abs, &entry.meta)?;
                let gone = Change::Deleted(PathBuf::from(OsStr::from_bytes(&entry.rel)));
                walker.advance(false)?;
                self.report.deleted += 1;
                note(&mut self.report.changes, gone);
            }
        }
        Ok(())
    }

    fn on_data(&mut self, id: u32, data: &[u8]) -> Result<(), FsutilError> {
        let Some(file) = self.pending.get_mut(&id) else {
            return Err(FsutilError::UnexpectedData { id });
        };
        if data.is_empty() {
            return self.finish_file(id);
        }
        let abs = self.dest.join(&file.stat.path);
        let target = match &mut file.target {
            Some(target) => target,
            None => {
                if self.open_files >= MAX_OPEN_FILES {
                    return Err(FsutilError::TooManyOpenFiles { limit: MAX_OPEN_FILES });
                }
                self.open_files += 1;
                file.target.insert(Target::open(&abs, file.replaces)?)
            }
        };
        target.file().write_all(data).map_err(|source| FsutilError::WriteFile { path: abs, source })?;
        if let Some(hasher) = &mut file.hasher {
            hasher.update(data);
        }
        self.report.bytes_received += data.len() as u64;
        Ok(())
    }

    /// Gives a completely received file its metadata, moves it under its
    /// final name, then creates the hardlinks that waited for it.
    fn finish_file(&mut self, id: u32) -> Result<(), FsutilError> {
        let Some(file) = self.pending.remove(&id) else {
            return Err(FsutilError::UnexpectedData { id });
        };
        let (stat, hasher) = (file.stat, file.hasher);
        let abs = self.dest.join(&stat.path);
        let target = match file.target {
            Some(target) => {
                self.open_files -= 1;
                target
            }
            None => Target::open(&abs, file.replaces)?,
        };
        // Owner before mode: a chown clears the setuid and setgid bits.
        let file = target.file();
        std::os::unix::fs::fchown(file, Some(stat.uid), Some(stat.gid))
            .map_err(|source| FsutilError::SetOwner { path: abs.clone(), source })?;
        file.set_permissions(Permissions::from_mode(unix_permissions(stat.mode)))
            .map_err(|source| FsutilError::SetMode { path: abs.clone(), source })?;
        for (name, value) in &stat.xattrs {
            if let Err(e) = rustix::fs::fsetxattr(file, name.as_str(), value, XattrFlags::empty()) {
                debug!(path = %abs.display(), xattr = %name, error = %e, "xattr not set");
            }
        }
        rustix::fs::futimens(file.as_fd(), &timestamps(stat.mod_time))
            .map_err(|e| FsutilError::SetTimes { path: abs.clone(), source: e.into() })?;
        if let (Some(hashes), Some(hasher)) = (&self.opts.hashes, hasher) {
            // The identity after the last change; a rename keeps it.
            let meta = file.metadata().map_err(|source| FsutilError::Stat { path: abs.clone(), source })?;
            hashes.record(&meta, hasher.finalize().into());
        }
        target.finish(&abs)?;

        self.pending_paths.remove(&stat.path);
        for link in self.pending_links.remove(&stat.path).unwrap_or_default() {
            self.link(&link, &stat.path)?;
        }
        Ok(())
    }

    fn link(&self, rel: &str, target_rel: &str) -> Result<(), FsutilError> {
        let abs = self.dest.join(rel);
        let target = self.dest.join(target_rel);
        match std::fs::remove_file(&abs) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(FsutilError::Remove { path: abs, source }),
        }
        std::fs::hard_link(&target, &abs).map_err(|source| FsutilError::CreateHardlink {
            path: abs,
            target,
            source,
        })
    }

    /// Directory modes and mtimes, deepest first, once nothing more will be
    /// written into them.
    fn finish_dirs(&mut self) -> Result<(), FsutilError> {
        for dir in self.dirs.drain(..).rev() {
            if let Some(perm) = dir.chmod {
                std::fs::set_permissions(&dir.abs, Permissions::from_mode(perm))
                    .map_err(|source| FsutilError::SetMode { path: dir.abs.clone(), source })?;
            }
            set_times(&dir.abs, dir.mtime)?;
        }
        Ok(())
    }
}

/// Rejects a stat path that is not clean, relative and inside the
/// destination (fsutil `validator.go`).
fn validate_path(path: &str) -> Result<(), FsutilError> {
    let reason = if path.is_empty() {
        "empty path"
    } else if path.contains('\0') {
        "NUL byte in path"
    } else if path.starts_with('/') {
        "absolute path"
    } else if path == "." {
        "the root itself is never sent"
    } else if gopath::clean(path) != path {
        "unclean path"
    } else if path == ".." || path.starts_with("../") {
        "path escapes the destination"
    } else {
        return Ok(());
    };
    Err(FsutilError::InvalidPath { path: path.to_owned(), reason })
}

/// Checks the stat order: every entry's parent directory was sent before
/// it, and siblings come in strictly increasing byte order of their names.
#[derive(Debug)]
struct OrderValidator {
    /// The open directories from the root down, each with the last child
    /// name seen in it.
    stack: Vec<(String, String)>,
    previous: String,
}

impl Default for OrderValidator {
    fn default() -> Self {
        Self { stack: vec![(String::new(), String::new())], previous: String::new() }
    }
}

impl OrderValidator {
    fn check(&mut self, path: &str, is_dir: bool) -> Result<(), FsutilError> {
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
        while self.stack.len() > 1 && self.stack.last().is_some_and(|(d, _)| d != dir) {
            self.stack.pop();
        }
        let in_order = match self.stack.last_mut() {
            Some((d, last)) if d == dir && last.as_str() < base => {
                base.clone_into(last);
                true
            }
            _ => false,
        };
        if !in_order {
            return Err(FsutilError::OutOfOrder { path: path.to_owned(), previous: self.previous.clone() });
        }
        if is_dir {
            self.stack.push((path.to_owned(), String::new()));
        }
        path.clone_into(&mut self.previous);
        Ok(())
    }
}

fn temp_file_for(abs: &Path) -> Result<NamedTempFile, FsutilError> {
    let dir = abs.parent().unwrap_or(abs);
    tempfile::Builder::new()
        .prefix(".kiln-fsutil-")
        .tempfile_in(dir)
        .map_err(|source| FsutilError::CreateFile { path: abs.into(), source })
}

fn remove_entry(abs: &Path, meta: &Metadata) -> Result<(), FsutilError> {
    let result = if meta.is_dir() { std::fs::remove_dir_all(abs) } else { std::fs::remove_file(abs) };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FsutilError::Remove { path: abs.into(), source }),
    }
}

fn set_owner(abs: &Path, stat: &Stat) -> Result<(), FsutilError> {
    std::os::unix::fs::lchown(abs, Some(stat.uid), Some(stat.gid))
        .map_err(|source| FsutilError::SetOwner { path: abs.into(), source })
}

fn set_mode(abs: &Path, stat: &Stat) -> Result<(), FsutilError> {
    std::fs::set_permissions(abs, Permissions::from_mode(unix_permissions(stat.mode)))
        .map_err(|source| FsutilError::SetMode { path: abs.into(), source })
}

/// Extended attributes are best effort, as upstream: a filesystem without
/// them, or a `security.*`/`trusted.*` name we may not set, does not fail
/// the transfer.
fn set_xattrs(abs: &Path, stat: &Stat) {
    for (name, value) in &stat.xattrs {
        if let Err(e) = rustix::fs::lsetxattr(abs, name.as_str(), value, XattrFlags::empty()) {
            debug!(path = %abs.display(), xattr = %name, error = %e, "xattr not set");
        }
    }
}

fn timestamps(ns: i64) -> Timestamps {
    let ts = Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    Timestamps { last_access: ts, last_modification: ts }
}

/// Lists a change while there are few; past [`MAX_CHANGES`] the list is dropped.
fn note(changes: &mut Option<Vec<Change>>, change: Change) {
    match changes {
        Some(list) if list.len() < MAX_CHANGES => list.push(change),
        _ => *changes = None,
    }
}

/// Sets atime and mtime to `ns` without following a symlink.
fn set_times(abs: &Path, ns: i64) -> Result<(), FsutilError> {
    rustix::fs::utimensat(CWD, abs, &timestamps(ns), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| FsutilError::SetTimes { path: abs.into(), source: e.into() })
}

fn make_node(abs: &Path, kind: EntryKind, stat: &Stat) -> Result<(), FsutilError> {
    let file_type = match kind {
        EntryKind::CharDevice => FileType::CharacterDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        _ => FileType::Fifo,
    };
    let major = u32::try_from(stat.devmajor).unwrap_or(0);
    let minor = u32::try_from(stat.devminor).unwrap_or(0);
    let dev = if kind == EntryKind::Fifo { 0 } else { rustix::fs::makedev(major, minor) };
    rustix::fs::mknodat(CWD, abs, file_type, Mode::from_raw_mode(unix_permissions(stat.mode)), dev)
        .map_err(|e| FsutilError::CreateNode { path: abs.into(), source: e.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_clean_relative_and_inside() {
        for good in ["a", "a/b", "a..b", ".hidden", "a/.b/c"] {
            validate_path(good).unwrap();
        }
        for (bad, reason) in [
            ("", "empty path"),
            ("/etc/passwd", "absolute path"),
            (".", "the root itself is never sent"),
            ("a//b", "unclean path"),
            ("a/./b", "unclean path"),
            ("a/", "unclean path"),
            ("a/../b", "unclean path"),
            ("..", "path escapes the destination"),
            ("../x", "path escapes the destination"),
            ("a\0b", "NUL byte in path"),
        ] {
            match validate_path(bad) {
                Err(FsutilError::InvalidPath { reason: r, .. }) => assert_eq!(r, reason, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    fn order(entries: &[(&str, bool)]) -> Result<(), FsutilError> {
        let mut v = OrderValidator::default();
        entries.iter().try_for_each(|(p, dir)| v.check(p, *dir))
    }

    #[test]
    fn the_order_is_pre_order_with_siblings_sorted_by_name() {
        order(&[
            ("a", true),
            ("a/x", false),
            ("a/y", true),
            ("a/y/z", false),
            ("a.txt", false),
            ("b", false),
        ])
        .unwrap();
        for bad in [
            &[("b", false), ("a", false)][..],
            &[("a", false), ("a", false)],
            &[("a", true), ("a.txt", false), ("a/x", false)],
            &[("a/x", false)],
            &[("a", false), ("a/x", false)],
            &[("a", true), ("b", true), ("a/x", false)],
        ] {
            let err = order(bad).unwrap_err().to_string();
            assert!(err.starts_with("changes out of order"), "{bad:?}: {err}");
        }
    }
}
