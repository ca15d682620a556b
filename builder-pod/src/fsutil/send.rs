//! The sending side of a transfer (fsutil `send.go`, `filter.go`,
//! `followlinks.go`, `hardlinks.go`): the client for a context upload, the
//! daemon for a local export (docs/protocol.md §4.1, §4.2).

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use kiln_proto::buildkit::fsutil::types::packet::PacketType;
use kiln_proto::buildkit::fsutil::types::{Packet, Stat};
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, instrument, warn};

use super::patterns::{MatchInfo, PatternMatcher, contains_wildcards, match_name};
use super::stat::{Detail, InodeMap, can_request_data, stat_of};
use super::walk::read_dir_sorted;
use super::{DATA_CHUNK, FsutilError, notify_peer, packet};
use crate::util::gopath;

/// Which entries of the root a sender walks, as BuildKit's `FilterFS`
/// applies the `include-patterns`, `exclude-patterns` and `followpaths`
/// request metadata (docs/protocol.md §4.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WalkFilter {
    /// When not empty, only entries matching one of these (or inside a
    /// matching directory) are sent, plus the directories leading to them.
    pub include_patterns: Vec<String>,
    /// dockerignore patterns; `!` exceptions bring entries back.
    pub exclude_patterns: Vec<String>,
    /// Paths whose symlinks are resolved, and the paths and their targets
    /// added to the include patterns.
    pub follow_paths: Vec<String>,
}

/// What a finished send did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SendReport {
    /// Stats sent, one per entry.
    pub entries: u64,
    /// Files whose content the receiver requested and got.
    pub files_sent: u64,
    /// Content bytes sent.
    pub bytes_sent: u64,
}

/// Files read and sent at the same time, as fsutil's sender does.
const WORKERS: usize = 4;

/// Sends the tree under `root` to a receiver: stats in fsutil order, then
/// the content of each file it requests, until it says `PACKET_FIN`. On
/// error the peer gets a `PACKET_ERR`.
#[instrument(skip_all, fields(root = %root.display()))]
pub(crate) async fn send<S>(
    root: &Path,
    filter: &WalkFilter,
    incoming: S,
    outgoing: mpsc::Sender<Packet>,
) -> Result<SendReport, FsutilError>
where
    S: Stream<Item = Result<Packet, tonic::Status>>,
{
    let result = run(root, filter, incoming, &outgoing).await;
    match &result {
        Ok(report) => debug!(?report, "sent"),
        Err(error) => notify_peer(&outgoing, error).await,
    }
    result
}

/// A walked entry and where to read it from.
#[derive(Debug)]
struct Walked {
    stat: Stat,
    job: FileJob,
}

#[derive(Debug)]
struct FileJob {
    abs: PathBuf,
    /// Sockets go out as empty regular files, as upstream sends them.
    socket: bool,
}

#[derive(Debug, Default)]
struct Counters {
    files: AtomicU64,
    bytes: AtomicU64,
}

async fn run<S>(
    root: &Path,
    filter: &WalkFilter,
    incoming: S,
    outgoing: &mpsc::Sender<Packet>,
) -> Result<SendReport, FsutilError>
where
    S: Stream<Item = Result<Packet, tonic::Status>>,
{
    // The walk runs on a blocking thread and stops when this function
    // returns and drops the channel's receiving end.
    let (walk_tx, walk_rx) = mpsc::channel(128);
    let (root, filter_owned) = (root.to_owned(), filter.clone());
    let span = tracing::Span::current();
    drop(tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        walk_tree(&root, &filter_owned, &walk_tx);
    }));

    let counters = Arc::new(Counters::default());
    let (job_tx, job_rx) = mpsc::unbounded_channel::<(u32, FileJob)>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        let (queue, outgoing, counters) = (job_rx.clone(), outgoing.clone(), counters.clone());
        let span = tracing::Span::current();
        workers.spawn_blocking(move || span.in_scope(|| worker(queue, outgoing, counters)));
    }

    let mut files: HashMap<u32, FileJob> = HashMap::new();
    let mut next_id: u32 = 0;
    let mut entries = 0u64;
    let mut walk_rx = Some(walk_rx);
    let mut incoming = std::pin::pin!(incoming);
    loop {
        tokio::select! {
            walked = next_walked(&mut walk_rx) => match walked {
                Some(Ok(walked)) => {
                    let id = next_id;
                    next_id = next_id.checked_add(1).ok_or(FsutilError::TooManyEntries)?;
                    // Registered before the stat goes out, so a request can never race it.
                    if can_request_data(walked.stat.mode) {
                        files.insert(id, walked.job);
                    }
                    let p = Packet { r#type: PacketType::PacketStat.into(), stat: Some(walked.stat), ..Packet::default() };
                    outgoing.send(p).await.map_err(|_| FsutilError::PeerGone)?;
                    entries += 1;
                }
                Some(Err(error)) => return Err(error),
                None => {
                    // A STAT without a stat ends the list.
                    outgoing.send(packet(PacketType::PacketStat)).await.map_err(|_| FsutilError::PeerGone)?;
                    walk_rx = None;
                }
            },
            p = incoming.next() => {
                let p = match p {
                    Some(Ok(p)) => p,
                    Some(Err(status)) => return Err(FsutilError::Transport(status)),
                    None => return Err(FsutilError::Truncated { state: "the receiver closed the stream".into() }),
                };
                match PacketType::try_from(p.r#type) {
                    Ok(PacketType::PacketReq) => {
                        // Taking the entry out rejects a second request for the same id.
                        let job = files.remove(&p.id).ok_or(FsutilError::InvalidRequest { id: p.id })?;
                        // Fails only when every worker has already failed; the
                        // join below reports why.
                        let _ = job_tx.send((p.id, job));
                    }
                    Ok(PacketType::PacketFin) => {
                        outgoing.send(packet(PacketType::PacketFin)).await.map_err(|_| FsutilError::PeerGone)?;
                        break;
                    }
                    Ok(PacketType::PacketErr) => {
                        return Err(FsutilError::Peer { message: String::from_utf8_lossy(&p.data).into_owned() });
                    }
                    Ok(PacketType::PacketStat) => {
                        return Err(FsutilError::UnexpectedPacket { packet: "PACKET_STAT", context: "from the receiving side" });
                    }
                    Ok(PacketType::PacketData) => {
                        return Err(FsutilError::UnexpectedPacket { packet: "PACKET_DATA", context: "from the receiving side" });
                    }
                    Err(_) => return Err(FsutilError::UnknownPacketType(p.r#type)),
                }
            }
            Some(joined) = workers.join_next() => joined??,
        }
    }
    Ok(SendReport {
        entries,
        files_sent: counters.files.load(Ordering::Relaxed),
        bytes_sent: counters.bytes.load(Ordering::Relaxed),
    })
}

async fn next_walked(
    rx: &mut Option<mpsc::Receiver<Result<Walked, FsutilError>>>,
) -> Option<Result<Walked, FsutilError>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A file reader on a blocking thread: reading small files through async
/// file handles would cost a thread hand-off per open and per read, which for
/// a 100,000-file export dominated everything else.
fn worker(
    queue: Arc<Mutex<mpsc::UnboundedReceiver<(u32, FileJob)>>>,
    outgoing: mpsc::Sender<Packet>,
    counters: Arc<Counters>,
) -> Result<(), FsutilError> {
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        // One worker waits for the next job while the others read.
        let job = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).blocking_recv();
        let Some((id, job)) = job else { return Ok(()) };
        send_file(id, &job, &mut buf, &outgoing, &counters)?;
    }
}

/// Sends one file as `PACKET_DATA` chunks of at most 32 KiB, then an empty
/// one that ends it.
fn send_file(
    id: u32,
    job: &FileJob,
    buf: &mut [u8],
    outgoing: &mpsc::Sender<Packet>,
    counters: &Counters,
) -> Result<(), FsutilError> {
    let data =
        |data: Vec<u8>| Packet { r#type: PacketType::PacketData.into(), id, data, ..Packet::default() };
    let send = |p: Packet| outgoing.blocking_send(p).map_err(|_| FsutilError::PeerGone);
    if !job.socket {
        // The walk saw a file here; never follow a symlink swapped in since.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&job.abs);
        match opened {
            Ok(mut file) => loop {
                let n = file
                    .read(buf)
                    .map_err(|source| FsutilError::ReadFile { path: job.abs.clone(), source })?;
                if n == 0 {
                    break;
                }
                // Counted before it goes: the report may be read as soon as
                // the receiver has what was sent.
                counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                send(data(buf[..n].to_vec()))?;
            },
            // Deleted since the walk: upstream sends it empty rather than fail the build.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                warn!(path = %job.abs.display(), "file vanished after it was listed; sending it empty");
            }
            Err(source) => return Err(FsutilError::OpenFile { path: job.abs.clone(), source }),
        }
    }
    counters.files.fetch_add(1, Ordering::Relaxed);
    send(data(Vec::new()))
}

/// Walks `root` with `filter` and hands every entry to `tx`; an error ends
/// the walk as the last item.
fn walk_tree(root: &Path, filter: &WalkFilter, tx: &mpsc::Sender<Result<Walked, FsutilError>>) {
    let result = walk_filtered(root, filter, &mut |walked| tx.blocking_send(Ok(walked)).is_ok());
    if let Err(error) = result {
        let _ = tx.blocking_send(Err(error));
    }
}

/// A directory being walked.
struct Frame {
    rel: String,
    abs: PathBuf,
    entries: std::vec::IntoIter<super::walk::Listed>,
    include: Option<MatchInfo>,
    exclude: Option<MatchInfo>,
    /// The directory's stat while it is held back: a filtered-out directory
    /// is still sent, just before the first entry inside it that is.
    held: Option<Stat>,
}

/// The walk behind [`send`]: depth-first pre-order, siblings by name bytes,
/// filtered like BuildKit's `FilterFS`. `emit` returns false once nobody
/// listens any more, which ends the walk quietly.
fn walk_filtered(
    root: &Path,
    filter: &WalkFilter,
    emit: &mut dyn FnMut(Walked) -> bool,
) -> Result<(), FsutilError> {
    let root =
        std::fs::canonicalize(root).map_err(|source| FsutilError::Stat { path: root.into(), source })?;
    let meta = std::fs::metadata(&root).map_err(|source| FsutilError::Stat { path: root.clone(), source })?;
    if !meta.is_dir() {
        return Err(FsutilError::NotADirectory { path: root });
    }
    let filter = CompiledFilter::new(&root, filter)?;
    let mut inodes = InodeMap::default();
    let entries =
        read_dir_sorted(&root).map_err(|source| FsutilError::ReadDir { path: root.clone(), source })?;
    let mut stack = vec![Frame {
        rel: String::new(),
        abs: root,
        entries: entries.into_iter(),
        include: None,
        exclude: None,
        held: None,
    }];

    while let Some(top) = stack.last_mut() {
        let Some(listed) = top.entries.next() else {
            stack.pop();
            continue;
        };
        let abs = top.abs.join(&listed.name);
        let name = listed.name.to_str().ok_or_else(|| FsutilError::NonUtf8Path { path: abs.clone() })?;
        let rel = if top.rel.is_empty() { name.to_owned() } else { format!("{}/{name}", top.rel) };
        let is_dir = listed.meta.is_dir();
        let Some(verdict) = filter.verdict(&rel, is_dir, top.include.as_ref(), top.exclude.as_ref()) else {
            continue;
        };
        if !verdict.send && !is_dir {
            continue;
        }
        let stat = stat_of(&abs, &rel, &listed.meta, &mut inodes, Detail::Full)?;
        let mut held = None;
        if verdict.send {
            for frame in &mut stack {
                if let Some(parent) = frame.held.take() {
                    let job = FileJob { abs: frame.abs.clone(), socket: false };
                    if !emit(Walked { stat: parent, job }) {
                        return Ok(());
                    }
                }
            }
            let socket = listed.meta.file_type().is_socket();
            if !emit(Walked { stat: stat.clone(), job: FileJob { abs: abs.clone(), socket } }) {
                return Ok(());
            }
        } else {
            held = Some(stat);
        }
        if is_dir {
            let entries = match read_dir_sorted(&abs) {
                Ok(entries) => entries,
                // Gone since it was listed, or an unreadable directory the filter drops anyway.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !verdict.send => Vec::new(),
                Err(source) => return Err(FsutilError::ReadDir { path: abs, source }),
            };
            stack.push(Frame {
                rel,
                abs,
                entries: entries.into_iter(),
                include: verdict.include,
                exclude: verdict.exclude,
                held,
            });
        }
    }
    Ok(())
}

/// Characters that make a pattern more than a plain path prefix.
const PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

struct CompiledFilter {
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    /// Every include is a plain path, so a directory no include starts
    /// with can be skipped without walking it.
    only_prefix_includes: bool,
    /// Every exception is a plain path, so an excluded directory no
    /// exception starts with can be skipped without walking it.
    only_prefix_exceptions: bool,
}

struct Verdict {
    send: bool,
    include: Option<MatchInfo>,
    exclude: Option<MatchInfo>,
}

impl CompiledFilter {
    fn new(root: &Path, filter: &WalkFilter) -> Result<Self, FsutilError> {
        let mut includes = filter.include_patterns.clone();
        if !filter.follow_paths.is_empty()
            && let Some(targets) = follow_links(root, &filter.follow_paths)?
        {
            includes.extend(targets);
            // A followpath resolving to the root itself lifts the include filter.
            includes = dedupe_paths(includes).unwrap_or_default();
        }
        let include = if includes.is_empty() { None } else { Some(PatternMatcher::new(&includes)?) };
        let exclude = if filter.exclude_patterns.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&filter.exclude_patterns)?)
        };
        let plain = |want_exclusion: bool, m: &Option<PatternMatcher>| {
            m.iter()
                .flat_map(PatternMatcher::patterns)
                .filter(|p| p.is_exclusion() == want_exclusion)
                .all(|p| !without_trailing_glob(p.as_str()).contains(PATTERN_CHARS))
        };
        Ok(Self {
            only_prefix_includes: plain(false, &include),
            only_prefix_exceptions: plain(true, &exclude),
            include,
            exclude,
        })
    }

    /// Whether to send the entry at `rel`, with the match state its
    /// children need; `None` means skip it and everything inside it.
    fn verdict(
        &self,
        rel: &str,
        is_dir: bool,
        parent_include: Option<&MatchInfo>,
        parent_exclude: Option<&MatchInfo>,
    ) -> Option<Verdict> {
        let mut verdict = Verdict { send: true, include: None, exclude: None };
        if let Some(matcher) = &self.include {
            let (hit, info) = matcher.matches_with_parent(rel, parent_include);
            if !hit {
                if is_dir && self.only_prefix_includes && !may_match_inside(matcher, false, rel) {
                    return None;
                }
                verdict.send = false;
            }
            verdict.include = Some(info);
        }
        if let Some(matcher) = &self.exclude {
            let (hit, info) = matcher.matches_with_parent(rel, parent_exclude);
            if hit {
                if is_dir && self.only_prefix_exceptions && !may_match_inside(matcher, true, rel) {
                    return None;
                }
                verdict.send = false;
            }
            verdict.exclude = Some(info);
        }
        Some(verdict)
    }
}

/// Whether a pattern of the given polarity names something below `dir`.
fn may_match_inside(matcher: &PatternMatcher, exclusion: bool, dir: &str) -> bool {
    let dir_slash = format!("{dir}/");
    matcher
        .patterns()
        .iter()
        .filter(|p| p.is_exclusion() == exclusion)
        .any(|p| format!("{}/", without_trailing_glob(p.as_str())).starts_with(&dir_slash))
}

fn without_trailing_glob(pattern: &str) -> &str {
    let p = pattern.strip_suffix("/**").unwrap_or(pattern);
    p.strip_suffix("/*").unwrap_or(p)
}

/// fsutil `dedupePaths`: drops a path inside the one kept before it;
/// `None` when one of them is the root, meaning "no filter".
fn dedupe_paths(paths: Vec<String>) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(paths.len());
    let mut last = String::new();
    for p in paths {
        if p == "." {
            return None;
        }
        if p.starts_with(&format!("{last}/")) {
            continue;
        }
        last.clone_from(&p);
        out.push(p);
    }
    Some(out)
}

/// A followpath through more symlinks than this is a loop.
const MAX_LINK_DEPTH: usize = 255;

/// Resolves the symlinks along `paths` inside `root` (fsutil `FollowLinks`):
/// each symlink met and each final path becomes an include path, and a
/// link's target is followed in turn, always kept inside the root.
fn follow_links(root: &Path, paths: &[String]) -> Result<Option<Vec<String>>, FsutilError> {
    let mut resolver = Resolver { root, resolved: BTreeSet::new() };
    for p in paths {
        resolver.append(p, 0)?;
    }
    Ok(dedupe_paths(resolver.resolved.into_iter().collect()))
}

struct Resolver<'a> {
    root: &'a Path,
    resolved: BTreeSet<String>,
}

impl Resolver<'_> {
    fn append(&mut self, path: &str, depth: usize) -> Result<(), FsutilError> {
        if depth > MAX_LINK_DEPTH {
            return Err(FsutilError::ReadLink {
                path: self.root.join(path),
                source: io::Error::other("too many levels of symbolic links"),
            });
        }
        let mut rest = inside_root(path);
        let mut current = String::from(".");
        loop {
            let (first, tail) = match rest.split_once('/') {
                Some((first, tail)) => (first.to_owned(), tail.to_owned()),
                None => (std::mem::take(&mut rest), String::new()),
            };
            current = gopath::join(&[&current, &first]);
            let targets = self.read_symlink(&current, true)?;
            rest = tail;
            if (rest.is_empty() || targets.is_some()) && self.resolved.contains(&current) {
                return Ok(());
            }
            if let Some(targets) = targets {
                self.resolved.insert(current);
                for target in targets {
                    self.append(&gopath::join(&[&target, &rest]), depth + 1)?;
                }
                return Ok(());
            }
            if rest.is_empty() {
                self.resolved.insert(current);
                return Ok(());
            }
        }
    }

    /// The target(s) of the symlink at `rel`, as root-anchored paths; with
    /// a wildcard in the last component, of every matching symlink.
    fn read_symlink(&self, rel: &str, wildcard: bool) -> Result<Option<Vec<String>>, FsutilError> {
        let (dir, base) = match rel.rsplit_once('/') {
            Some((dir, base)) => (dir, base),
            None => (".", rel),
        };
        if wildcard && contains_wildcards(base) {
            let abs_dir = self.root.join(dir);
            let listing = match read_dir_sorted(&abs_dir) {
                Ok(listing) => listing,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(source) => return Err(FsutilError::ReadDir { path: abs_dir, source }),
            };
            let mut out = Vec::new();
            for entry in listing {
                let Some(name) = entry.name.to_str() else { continue };
                // Upstream ignores a malformed glob here: it simply matches nothing.
                if match_name(base, name).unwrap_or(false)
                    && let Some(targets) = self.read_symlink(&gopath::join(&[dir, name]), false)?
                {
                    out.extend(targets);
                }
            }
            return Ok((!out.is_empty()).then_some(out));
        }
        if rel == "." {
            return Ok(None);
        }
        let abs = self.root.join(rel);
        let meta = match std::fs::symlink_metadata(&abs) {
            Ok(meta) => meta,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(source) => return Err(FsutilError::Stat { path: abs, source }),
        };
        if !meta.file_type().is_symlink() {
            return Ok(None);
        }
        let link =
            std::fs::read_link(&abs).map_err(|source| FsutilError::ReadLink { path: abs.clone(), source })?;
        let link = link.to_str().ok_or(FsutilError::NonUtf8Path { path: abs })?;
        let link = gopath::clean(link);
        if link.starts_with('/') {
            return Ok(Some(vec![link]));
        }
        Ok(Some(vec![gopath::clean(&format!("/{}", gopath::join(&[dir, &link])))]))
    }
}

fn is_not_found(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// `path` as a clean path relative to the root that cannot climb out of it.
fn inside_root(path: &str) -> String {
    let rooted = gopath::clean(&format!("/{path}"));
    match &rooted[1..] {
        "" => ".".into(),
        rel => rel.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(root: &Path, filter: &WalkFilter) -> Vec<String> {
        let mut out = Vec::new();
        walk_filtered(root, filter, &mut |w| {
            out.push(w.stat.path);
            true
        })
        .unwrap();
        out
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f);
            if let Some(d) = f.strip_suffix('/') {
                std::fs::create_dir_all(dir.path().join(d)).unwrap();
            } else {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, f.as_bytes()).unwrap();
            }
        }
        dir
    }

    fn filter(include: &[&str], exclude: &[&str], follow: &[&str]) -> WalkFilter {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        WalkFilter {
            include_patterns: own(include),
            exclude_patterns: own(exclude),
            follow_paths: own(follow),
        }
    }

    #[test]
    fn an_unfiltered_walk_is_pre_order_by_name_bytes() {
        let dir = tree(&["b", "a.txt", "a/y", "a/x/z", "A", "empty/"]);
        assert_eq!(
            walk(dir.path(), &WalkFilter::default()),
            ["A", "a", "a/x", "a/x/z", "a/y", "a.txt", "b", "empty"]
        );
    }

    #[test]
    fn excludes_drop_entries_and_exceptions_bring_them_back_with_their_parents() {
        let dir =
            tree(&["node_modules/m/index.js", "src/main.rs", "src/gen/out.rs", "README.md", "docs/a.md"]);
        let f = filter(&[], &["node_modules", "src/gen", "*.md", "docs", "!docs/a.md"], &[]);
        assert_eq!(walk(dir.path(), &f), ["docs", "docs/a.md", "src", "src/main.rs"]);
    }

    #[test]
    fn includes_send_matches_and_the_directories_leading_to_them() {
        let dir = tree(&["app/src/lib.rs", "app/README", "other/x", "top"]);
        let f = filter(&["app/src"], &[], &[]);
        assert_eq!(walk(dir.path(), &f), ["app", "app/src", "app/src/lib.rs"]);
        let f = filter(&["**/*.rs"], &[], &[]);
        assert_eq!(walk(dir.path(), &f), ["app", "app/src", "app/src/lib.rs"]);
    }

    #[test]
    fn followpaths_include_the_symlink_and_its_target() {
        let dir = tree(&["real/Dockerfile", "real/other", "Dockerfile.dockerignore", "unrelated"]);
        std::os::unix::fs::symlink("real/Dockerfile", dir.path().join("Dockerfile")).unwrap();
        let f = filter(&[], &[], &["Dockerfile", "Dockerfile.dockerignore"]);
        assert_eq!(
            walk(dir.path(), &f),
            ["Dockerfile", "Dockerfile.dockerignore", "real", "real/Dockerfile"]
        );
        // An absolute or escaping link target stays inside the root.
        std::os::unix::fs::symlink("/real/other", dir.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../unrelated", dir.path().join("real/up")).unwrap();
        let f = filter(&[], &[], &["abs", "real/up"]);
        assert_eq!(walk(dir.path(), &f), ["abs", "real", "real/other", "real/up", "unrelated"]);
        // A followpath of the root itself lifts the filter.
        assert_eq!(walk(dir.path(), &filter(&[], &[], &["."])).len(), 8);
    }

    #[test]
    fn followpath_wildcards_and_link_loops_terminate() {
        let dir = tree(&["d/target"]);
        std::os::unix::fs::symlink("target", dir.path().join("d/l1")).unwrap();
        std::os::unix::fs::symlink("l2", dir.path().join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", dir.path().join("l2")).unwrap();
        let f = filter(&[], &[], &["d/l*", "loop1"]);
        assert_eq!(walk(dir.path(), &f), ["d", "d/l1", "d/target", "l2", "loop1"]);
    }

    #[test]
    fn dedupe_keeps_the_outermost_path() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(dedupe_paths(v(&["a", "a/b", "ab", "b/c"])), Some(v(&["a", "ab", "b/c"])));
        assert_eq!(dedupe_paths(v(&["a", "."])), None);
    }
}
