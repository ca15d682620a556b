//! Sender and receiver wired to each other (or to a scripted peer) through
//! in-memory channels, over real temporary directories.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use kiln_proto::buildkit::fsutil::types::packet::PacketType;
use kiln_proto::buildkit::fsutil::types::{Packet, Stat};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::send::SendReport;
use super::stat::{go_mode, read_xattrs};
use super::*;

// ---------- building and comparing trees ----------

fn set_mtime(path: &Path, ns: i64) {
    let ts = Timespec { tv_sec: ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000 };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps { last_access: ts, last_modification: ts },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives every entry under `root` a distinct mtime with nanoseconds,
/// directories last so writing their children doesn't move them again.
fn stamp_times(root: &Path) {
    let entries: Vec<_> = snapshot(root).into_keys().collect();
    for (i, rel) in entries.iter().enumerate().rev() {
        set_mtime(&root.join(rel), 1_600_000_000_123_456_789 + i as i64 * 1_000_000_007);
    }
}

/// Everything a user would compare between two trees, by relative path.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    content: Option<Vec<u8>>,
    link: Option<String>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
    hardlink_of: Option<String>,
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn visit(root: &Path, rel: &str, out: &mut BTreeMap<String, Entry>, inodes: &mut HashMap<u64, String>) {
        let dir = if rel.is_empty() { root.to_owned() } else { root.join(rel) };
        let mut names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        for name in names {
            let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let path = root.join(&child);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let kind = match () {
                _ if ft.is_dir() => "dir",
                _ if ft.is_symlink() => "symlink",
                _ if ft.is_fifo() => "fifo",
                _ if ft.is_char_device() => "char",
                _ if ft.is_block_device() => "block",
                _ if ft.is_socket() => "socket",
                _ => "file",
            };
            let mut hardlink_of = None;
            if !ft.is_dir() && meta.nlink() > 1 {
                match inodes.get(&meta.ino()) {
                    Some(first) => hardlink_of = Some(first.clone()),
                    None => {
                        inodes.insert(meta.ino(), child.clone());
                    }
                }
            }
            out.insert(
                child.clone(),
                Entry {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                    content: ft.is_file().then(|| std::fs::read(&path).unwrap()),
                    link: ft
                        .is_symlink()
                        .then(|| std::fs::read_link(&path).unwrap().to_str().unwrap().to_owned()),
                    rdev: meta.rdev(),
                    xattrs: read_xattrs(&path)
                        .unwrap()
                        .into_iter()
                        .filter(|(k, _)| k.starts_with("user."))
                        .collect(),
                    hardlink_of,
                },
            );
            if ft.is_dir() {
                visit(root, &child, out, inodes);
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, "", &mut out, &mut HashMap::new());
    out
}

/// A tree with one of everything fsutil carries.
fn rich_tree(root: &Path) {
    write(root, "README.md", b"hello\n", 0o644);
    write(root, "bin/tool", b"#!/bin/sh\necho hi\n", 0o755);
    write(root, "bin/suid", b"setuid binary", 0o4755);
    write(root, "bin/sgid", b"setgid binary", 0o2711);
    write(root, "src/a/b/c/deep.txt", &vec![b'x'; 100_000], 0o600);
    write(root, "src/a.txt", b"a sibling named like the dir", 0o644);
    write(root, "src/empty.txt", b"", 0o644);
    write(root, "owned", b"owned by someone else", 0o640);
    std::os::unix::fs::lchown(root.join("owned"), Some(1234), Some(5678)).unwrap();
    std::fs::create_dir_all(root.join("empty/nested")).unwrap();
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::set_permissions(root.join("shared"), std::fs::Permissions::from_mode(0o3777)).unwrap();
    std::os::unix::fs::symlink("../README.md", root.join("src/readme-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::os::unix::fs::lchown(root.join("dangling"), Some(42), Some(43)).unwrap();
    std::fs::hard_link(root.join("README.md"), root.join("src/hardlink-to-readme")).unwrap();
    rustix::fs::lsetxattr(root.join("README.md"), "user.origin", b"kiln", XattrFlags::empty()).unwrap();
    rustix::fs::lsetxattr(root.join("src"), "user.dir", b"yes", XattrFlags::empty()).unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    std::fs::set_permissions(root.join("null"), std::fs::Permissions::from_mode(0o666)).unwrap();
    stamp_times(root);
}

// ---------- wiring two real ends together ----------

async fn transfer(
    src: &Path,
    dest: &Path,
    filter: &WalkFilter,
    opts: ReceiveOptions,
) -> (SendReport, ReceiveReport) {
    let (to_receiver, from_sender) = mpsc::channel::<Packet>(16);
    let (to_sender, from_receiver) = mpsc::channel::<Packet>(16);
    let (sent, received) = tokio::join!(
        send(src, filter, ReceiverStream::new(from_receiver).map(Ok), to_receiver),
        receive(dest, ReceiverStream::new(from_sender).map(Ok), to_sender, opts),
    );
    (sent.unwrap(), received.unwrap())
}

async fn copy(src: &Path, dest: &Path) -> ReceiveReport {
    transfer(src, dest, &WalkFilter::default(), ReceiveOptions::default()).await.1
}

#[tokio::test]
async fn a_tree_arrives_with_every_kind_of_entry_and_its_metadata() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    rich_tree(src.path());

    let (sent, received) =
        transfer(src.path(), dest.path(), &WalkFilter::default(), ReceiveOptions::default()).await;

    assert_eq!(snapshot(dest.path()), snapshot(src.path()));
    let files = ["README.md", "bin/tool", "bin/suid", "bin/sgid", "src/a/b/c/deep.txt", "src/a.txt"];
    assert_eq!(received.files_requested as usize, files.len() + 2, "+ src/empty.txt and owned");
    assert_eq!(sent.files_sent, received.files_requested);
    assert_eq!(received.bytes_received, sent.bytes_sent);
    assert_eq!(received.entries, sent.entries);
    assert_eq!(received.entries as usize, snapshot(src.path()).len());
    let dest_snapshot = snapshot(dest.path());
    assert_eq!(dest_snapshot["src/hardlink-to-readme"].hardlink_of.as_deref(), Some("README.md"));
    assert_eq!(dest_snapshot["bin/suid"].mode, 0o4755);
    assert_eq!(dest_snapshot["shared"].mode, 0o3777);
    assert_eq!((dest_snapshot["owned"].uid, dest_snapshot["owned"].gid), (1234, 5678));
    assert_eq!(dest_snapshot["README.md"].xattrs["user.origin"], b"kiln");
    assert_eq!(dest_snapshot["null"].rdev, rustix::fs::makedev(1, 3));
    assert_eq!(dest_snapshot["fifo"].kind, "fifo");
}

#[tokio::test]
async fn resending_an_unchanged_tree_transfers_nothing() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    copy(src.path(), dest.path()).await;

    let again = copy(src.path(), dest.path()).await;

    assert_eq!((again.files_requested, again.bytes_received, again.deleted, again.written), (0, 0, 0, 0));
    assert_eq!(snapshot(dest.path()), snapshot(src.path()));
}

#[tokio::test]
async fn a_changed_file_is_requested_again_and_nothing_else() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    copy(src.path(), dest.path()).await;

    std::fs::write(src.path().join("src/a.txt"), b"new content").unwrap();
    let report = copy(src.path(), dest.path()).await;

    assert_eq!((report.files_requested, report.bytes_received), (1, 11));
    assert_eq!(snapshot(dest.path()), snapshot(src.path()));

    // A mode change alone is a change too.
    std::fs::set_permissions(src.path().join("bin/tool"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let report = copy(src.path(), dest.path()).await;
    assert_eq!(report.files_requested, 1);
    assert_eq!(snapshot(dest.path())["bin/tool"].mode, 0o700);
}

#[tokio::test]
async fn entries_deleted_at_the_source_are_deleted_at_the_destination() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    copy(src.path(), dest.path()).await;

    std::fs::remove_file(src.path().join("README.md")).unwrap();
    std::fs::remove_dir_all(src.path().join("src/a")).unwrap();
    std::fs::remove_file(src.path().join("fifo")).unwrap();
    let report = copy(src.path(), dest.path()).await;

    // README.md, src/a (with everything inside it) and fifo. The hardlink
    // to README.md is now an ordinary file with the same content and
    // metadata, so it needs nothing.
    assert_eq!(report.deleted, 3);
    assert_eq!(report.files_requested, 0);
    assert_eq!(snapshot(dest.path()), snapshot(src.path()));
    assert!(!dest.path().join("src/a").exists());
    // Listed as changes in walk order, with the directories whose mtime
    // moved (the root's own is not an entry).
    let changes = report.changes.unwrap();
    assert_eq!(
        changes,
        [
            Change::Deleted("README.md".into()),
            Change::Deleted("fifo".into()),
            Change::Written("src".into()),
            Change::Deleted("src/a".into()),
        ]
    );
}

#[tokio::test]
async fn an_entry_that_changes_type_is_replaced() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    write(src.path(), "x/inner", b"inside", 0o644);
    write(src.path(), "y", b"file", 0o644);
    std::os::unix::fs::symlink("y", src.path().join("z")).unwrap();
    copy(src.path(), dest.path()).await;

    std::fs::remove_dir_all(src.path().join("x")).unwrap();
    write(src.path(), "x", b"now a file", 0o644);
    std::fs::remove_file(src.path().join("y")).unwrap();
    write(src.path(), "y/child", b"now a dir", 0o644);
    std::fs::remove_file(src.path().join("z")).unwrap();
    write(src.path(), "z", b"no longer a link", 0o644);
    copy(src.path(), dest.path()).await;

    assert_eq!(snapshot(dest.path()), snapshot(src.path()));
}

#[tokio::test]
async fn differ_none_takes_every_file_and_merge_keeps_extra_entries() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    write(src.path(), "a", b"aaa", 0o644);
    write(src.path(), "d/b", b"bb", 0o644);
    copy(src.path(), dest.path()).await;

    let none = ReceiveOptions { differ: Differ::None, ..ReceiveOptions::default() };
    let (_, report) = transfer(src.path(), dest.path(), &WalkFilter::default(), none).await;
    assert_eq!((report.files_requested, report.bytes_received), (2, 5));

    write(dest.path(), "extra", b"keep me", 0o644);
    write(dest.path(), "d/extra", b"keep me too", 0o644);
    let merge = ReceiveOptions { merge: true, ..ReceiveOptions::default() };
    let (_, report) = transfer(src.path(), dest.path(), &WalkFilter::default(), merge).await;
    assert_eq!((report.files_requested, report.deleted), (2, 0));
    assert_eq!(std::fs::read(dest.path().join("extra")).unwrap(), b"keep me");
    assert_eq!(std::fs::read(dest.path().join("d/extra")).unwrap(), b"keep me too");
    assert_eq!(std::fs::read(dest.path().join("d/b")).unwrap(), b"bb");
}

#[tokio::test]
async fn a_socket_arrives_as_an_empty_file() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(src.path().join("sock")).unwrap();
    copy(src.path(), dest.path()).await;
    let meta = std::fs::symlink_metadata(dest.path().join("sock")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 0);
}

#[tokio::test]
async fn filters_decide_what_goes_over_the_wire() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "Dockerfile", b"FROM scratch", 0o644);
    write(src.path(), "app/main.go", b"package main", 0o644);
    write(src.path(), "app/main_test.go", b"package main", 0o644);
    write(src.path(), "app/vendor/dep.go", b"package dep", 0o644);
    write(src.path(), "docs/guide.md", b"# guide", 0o644);
    write(src.path(), "docs/KEEP.md", b"# keep", 0o644);
    write(src.path(), "node_modules/x/index.js", b"", 0o644);

    let cases: [(WalkFilter, &[&str]); 4] = [
        (
            WalkFilter {
                exclude_patterns: vec![
                    "node_modules".into(),
                    "**/*_test.go".into(),
                    "docs".into(),
                    "!docs/KEEP.md".into(),
                ],
                ..WalkFilter::default()
            },
            &["Dockerfile", "app", "app/main.go", "app/vendor", "app/vendor/dep.go", "docs", "docs/KEEP.md"],
        ),
        (
            WalkFilter {
                include_patterns: vec!["app/vendor".into(), "*.md".into()],
                ..WalkFilter::default()
            },
            &["app", "app/vendor", "app/vendor/dep.go"],
        ),
        (
            WalkFilter {
                include_patterns: vec!["app".into()],
                exclude_patterns: vec!["app/vendor".into()],
                ..WalkFilter::default()
            },
            &["app", "app/main.go", "app/main_test.go"],
        ),
        (
            WalkFilter {
                follow_paths: vec!["Dockerfile".into(), "Dockerfile.dockerignore".into()],
                ..WalkFilter::default()
            },
            &["Dockerfile"],
        ),
    ];
    for (filter, want) in cases {
        let dest = tempfile::tempdir().unwrap();
        transfer(src.path(), dest.path(), &filter, ReceiveOptions::default()).await;
        let got: Vec<String> = snapshot(dest.path()).into_keys().collect();
        assert_eq!(got, want, "{filter:?}");
    }
}

#[tokio::test]
async fn a_big_tree_round_trips_and_resends_nothing() {
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    for d in 0..20 {
        for f in 0..100 {
            write(src.path(), &format!("d{d:02}/sub/f{f:03}"), format!("{d}-{f}").as_bytes(), 0o644);
        }
    }
    let first = copy(src.path(), dest.path()).await;
    assert_eq!(first.files_requested, 2000);
    assert_eq!(first.entries, 2040);
    let again = copy(src.path(), dest.path()).await;
    assert_eq!(again.files_requested, 0);
    assert_eq!(snapshot(dest.path()), snapshot(src.path()));
}

// ---------- a scripted peer on the other side ----------

fn stat_packet(stat: Stat) -> Packet {
    Packet { r#type: PacketType::PacketStat.into(), stat: Some(stat), ..Packet::default() }
}

fn file(path: &str, size: i64) -> Packet {
    stat_packet(Stat { path: path.into(), mode: 0o644, size, mod_time: 1_000_000_001, ..Stat::default() })
}

fn dir(path: &str) -> Packet {
    stat_packet(Stat { path: path.into(), mode: go_mode::DIR | 0o755, mod_time: 1, ..Stat::default() })
}

fn hardlink(path: &str, target: &str) -> Packet {
    stat_packet(Stat {
        path: path.into(),
        mode: 0o644,
        linkname: target.into(),
        mod_time: 1,
        ..Stat::default()
    })
}

fn end_of_stats() -> Packet {
    packet(PacketType::PacketStat)
}

fn data(id: u32, bytes: &[u8]) -> Packet {
    Packet { r#type: PacketType::PacketData.into(), id, data: bytes.to_vec(), ..Packet::default() }
}

fn req(id: u32) -> Packet {
    Packet { r#type: PacketType::PacketReq.into(), id, ..Packet::default() }
}

fn kind(p: &Packet) -> PacketType {
    PacketType::try_from(p.r#type).unwrap()
}

/// The test's end of a transfer: it writes packets to the function under
/// test and reads what the function answers.
struct Script<T> {
    to_them: Option<mpsc::Sender<Result<Packet, tonic::Status>>>,
    from_them: mpsc::Receiver<Packet>,
    task: JoinHandle<Result<T, FsutilError>>,
}

fn script_receiver(dest: &Path, opts: ReceiveOptions) -> Script<ReceiveReport> {
    let (to_them, incoming) = mpsc::channel(256);
    let (outgoing, from_them) = mpsc::channel(256);
    let dest = dest.to_owned();
    let task =
        tokio::spawn(async move { receive(&dest, ReceiverStream::new(incoming), outgoing, opts).await });
    Script { to_them: Some(to_them), from_them, task }
}

fn script_sender(root: &Path) -> Script<SendReport> {
    let (to_them, incoming) = mpsc::channel(256);
    let (outgoing, from_them) = mpsc::channel(256);
    let root = root.to_owned();
    let task = tokio::spawn(async move {
        send(&root, &WalkFilter::default(), ReceiverStream::new(incoming), outgoing).await
    });
    Script { to_them: Some(to_them), from_them, task }
}

impl<T> Script<T> {
    async fn push(&self, p: Packet) {
        // The function under test may already have failed and gone; its
        // error is what the test then checks.
        if let Some(tx) = &self.to_them {
            let _ = tx.send(Ok(p)).await;
        }
    }

    async fn next(&mut self) -> Packet {
        tokio::time::timeout(Duration::from_secs(10), self.from_them.recv()).await.unwrap().unwrap()
    }

    /// Closes our side and returns the result plus everything it still sent.
    async fn end(mut self) -> (Result<T, FsutilError>, Vec<Packet>) {
        self.to_them = None;
        self.settle().await
    }

    /// Waits for the function to return on its own, our side still open.
    async fn settle(mut self) -> (Result<T, FsutilError>, Vec<Packet>) {
        let result = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await.unwrap().unwrap();
        let mut rest = Vec::new();
        while let Ok(p) = self.from_them.try_recv() {
            rest.push(p);
        }
        (result, rest)
    }
}

fn error_packet_text(packets: &[Packet]) -> String {
    let err = packets.iter().find(|p| kind(p) == PacketType::PacketErr).expect("a PACKET_ERR to the peer");
    String::from_utf8(err.data.clone()).unwrap()
}

/// Sends `packets` to a fresh receiver and expects it to fail with an error
/// containing `want`, which the peer also hears as a PACKET_ERR.
async fn receiver_rejects(packets: Vec<Packet>, want: &str) -> tempfile::TempDir {
    let dest = tempfile::tempdir().unwrap();
    let script = script_receiver(dest.path(), ReceiveOptions::default());
    for p in packets {
        script.push(p).await;
    }
    let (result, sent) = script.end().await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains(want), "error {err:?} should mention {want:?}");
    assert!(error_packet_text(&sent).contains(want), "{sent:?}");
    dest
}

#[tokio::test]
async fn the_receiver_rejects_bad_streams_with_clear_errors() {
    receiver_rejects(vec![file("b", 0), file("a", 0)], "changes out of order: \"a\" after \"b\"").await;
    receiver_rejects(vec![file("a", 0), file("a/x", 0)], "changes out of order").await;
    receiver_rejects(vec![file("x/y", 0)], "changes out of order").await;
    receiver_rejects(vec![file("../x", 0)], "path escapes the destination").await;
    receiver_rejects(vec![file("/etc/passwd", 0)], "absolute path").await;
    receiver_rejects(vec![file("a/../../b", 0)], "unclean path").await;
    receiver_rejects(vec![hardlink("b", "a")], "invalid hardlink \"b\" to \"a\"").await;
    receiver_rejects(vec![dir("a"), hardlink("b", "a")], "invalid hardlink").await;
    receiver_rejects(
        vec![stat_packet(Stat { path: "s".into(), mode: go_mode::SOCKET | 0o755, ..Stat::default() })],
        "unsupported file mode",
    )
    .await;
    receiver_rejects(vec![data(7, b"who asked?")], "PACKET_DATA for file id 7, which was not requested")
        .await;
    receiver_rejects(vec![end_of_stats(), end_of_stats()], "PACKET_STAT after the end of the stat list")
        .await;
    receiver_rejects(vec![file("a", 1), packet(PacketType::PacketFin)], "PACKET_FIN from the sender before")
        .await;
    receiver_rejects(vec![req(0)], "unexpected PACKET_REQ").await;
    receiver_rejects(vec![Packet { r#type: 9, ..Packet::default() }], "unknown packet type 9").await;
    let dest = receiver_rejects(vec![dir("d"), file("d/f", 3)], "stream ended before PACKET_FIN").await;
    assert!(dest.path().join("d").is_dir(), "what was written so far stays");
}

#[tokio::test]
async fn a_truncated_upload_leaves_no_half_written_file() {
    let dest = tempfile::tempdir().unwrap();
    std::fs::write(dest.path().join("f"), b"old").unwrap();
    let mut script = script_receiver(dest.path(), ReceiveOptions::default());
    script.push(file("f", 10)).await;
    assert_eq!((kind(&script.next().await), 0), (PacketType::PacketReq, 0));
    script.push(data(0, b"hello")).await;
    let (result, sent) = script.end().await;

    let err = result.unwrap_err().to_string();
    assert!(err.contains("stream ended before PACKET_FIN"), "{err}");
    assert!(error_packet_text(&sent).contains("stream ended"));
    let names: Vec<_> = std::fs::read_dir(dest.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["f"], "no temporary file is left behind");
    assert_eq!(std::fs::read(dest.path().join("f")).unwrap(), b"old");
}

#[tokio::test]
async fn a_new_file_cut_short_is_taken_anew_by_the_next_transfer() {
    let dest = tempfile::tempdir().unwrap();
    let mut script = script_receiver(dest.path(), ReceiveOptions::default());
    script.push(file("f", 10)).await;
    assert_eq!(kind(&script.next().await), PacketType::PacketReq);
    script.push(data(0, b"hello")).await;
    assert!(script.end().await.0.is_err());

    // The sender now has the whole file, same size as announced before.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), b"helloworld").unwrap();
    let report = copy(src.path(), dest.path()).await;
    assert_eq!(report.files_requested, 1, "the half-written copy is not taken as unchanged");
    assert_eq!(std::fs::read(dest.path().join("f")).unwrap(), b"helloworld");
}

#[tokio::test]
async fn an_error_from_the_sender_ends_the_receive_without_an_echo() {
    let dest = tempfile::tempdir().unwrap();
    let script = script_receiver(dest.path(), ReceiveOptions::default());
    script
        .push(Packet {
            r#type: PacketType::PacketErr.into(),
            data: b"disk on fire".to_vec(),
            ..Packet::default()
        })
        .await;
    let (result, sent) = script.end().await;
    assert_eq!(result.unwrap_err().to_string(), "error from peer: disk on fire");
    assert!(sent.is_empty(), "{sent:?}");
}

#[tokio::test]
async fn interleaved_data_and_deferred_hardlinks_are_written_correctly() {
    let dest = tempfile::tempdir().unwrap();
    let mut script = script_receiver(dest.path(), ReceiveOptions::default());
    script.push(file("a", 5)).await;
    script.push(hardlink("a2", "a")).await;
    script.push(file("b", 5)).await;
    script.push(end_of_stats()).await;
    let mut requested = vec![script.next().await, script.next().await];
    requested.sort_by_key(|p| p.id);
    assert_eq!(requested, [req(0), req(2)], "the hardlink (id 1) is not requested");

    for p in [data(0, b"he"), data(2, b"wo"), data(0, b"llo"), data(2, b"rld"), data(2, b""), data(0, b"")] {
        script.push(p).await;
    }
    assert_eq!(kind(&script.next().await), PacketType::PacketFin);
    script.push(packet(PacketType::PacketFin)).await;
    let (result, _) = script.end().await;
    let report = result.unwrap();
    assert_eq!((report.entries, report.files_requested, report.bytes_received), (3, 2, 10));

    assert_eq!(std::fs::read(dest.path().join("a")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dest.path().join("b")).unwrap(), b"world");
    let ino = |p: &str| std::fs::metadata(dest.path().join(p)).unwrap().ino();
    assert_eq!(ino("a2"), ino("a"));
    assert_eq!(std::fs::metadata(dest.path().join("a")).unwrap().mtime_nsec(), 1);
}

#[tokio::test]
async fn a_peer_interleaving_too_many_files_is_stopped() {
    let limit = receive::MAX_OPEN_FILES;
    let mut packets: Vec<Packet> = (0..=limit).map(|i| file(&format!("f{i:03}"), 1)).collect();
    packets.extend((0..=limit).map(|i| data(i as u32, b"x")));
    receiver_rejects(packets, "files are receiving data at the same time").await;
}

#[tokio::test]
async fn the_sender_serves_requests_in_chunks_and_answers_fin() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "big", &vec![7u8; 100_000], 0o644);
    write(src.path(), "dir/small", b"tiny", 0o644);
    let mut script = script_sender(src.path());
    let mut stats = Vec::new();
    loop {
        let p = script.next().await;
        match p.stat {
            Some(stat) => stats.push(stat.path),
            None => break,
        }
    }
    assert_eq!(stats, ["big", "dir", "dir/small"]);

    script.push(req(0)).await;
    let mut total = 0;
    loop {
        let p = script.next().await;
        assert_eq!((kind(&p), p.id), (PacketType::PacketData, 0));
        assert!(p.data.len() <= DATA_CHUNK, "{} bytes in one chunk", p.data.len());
        if p.data.is_empty() {
            break;
        }
        total += p.data.len();
    }
    assert_eq!(total, 100_000);
    script.push(packet(PacketType::PacketFin)).await;
    assert_eq!(kind(&script.next().await), PacketType::PacketFin);
    let (result, _) = script.end().await;
    assert_eq!(result.unwrap(), SendReport { entries: 3, files_sent: 1, bytes_sent: 100_000 });
}

/// Walks a two-entry tree (dir `d` = id 0, file `d/f` = id 1), then sends
/// `packets` and expects the sender to fail with `want`.
async fn sender_rejects(packets: Vec<Packet>, want: &str) {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "d/f", b"content", 0o644);
    let mut script = script_sender(src.path());
    while script.next().await.stat.is_some() {}
    for p in packets {
        script.push(p).await;
    }
    let (result, mut sent) =
        if want.contains("closed the stream") { script.end().await } else { script.settle().await };
    let err = result.unwrap_err().to_string();
    assert!(err.contains(want), "error {err:?} should mention {want:?}");
    sent.retain(|p| kind(p) == PacketType::PacketErr);
    assert!(error_packet_text(&sent).contains(want));
}

#[tokio::test]
async fn the_sender_rejects_bad_requests() {
    sender_rejects(vec![req(0)], "invalid file request 0").await;
    sender_rejects(vec![req(99)], "invalid file request 99").await;
    sender_rejects(vec![req(1), req(1)], "invalid file request 1").await;
    sender_rejects(vec![file("x", 1)], "unexpected PACKET_STAT from the receiving side").await;
    sender_rejects(vec![], "the receiver closed the stream").await;
}

#[tokio::test]
async fn a_file_deleted_after_the_walk_is_sent_empty() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "gone", b"soon", 0o644);
    let mut script = script_sender(src.path());
    while script.next().await.stat.is_some() {}
    std::fs::remove_file(src.path().join("gone")).unwrap();

    script.push(req(0)).await;
    assert_eq!(script.next().await, data(0, b""));
    script.push(packet(PacketType::PacketFin)).await;
    assert_eq!(kind(&script.next().await), PacketType::PacketFin);
    let (result, _) = script.end().await;
    assert_eq!(result.unwrap(), SendReport { entries: 1, files_sent: 1, bytes_sent: 0 });
}

#[tokio::test]
async fn a_symlink_swapped_in_after_the_walk_is_not_followed() {
    let src = tempfile::tempdir().unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), b"outside the root").unwrap();
    write(src.path(), "f", b"inside", 0o644);
    let mut script = script_sender(src.path());
    while script.next().await.stat.is_some() {}
    std::fs::remove_file(src.path().join("f")).unwrap();
    std::os::unix::fs::symlink(secret.path(), src.path().join("f")).unwrap();

    script.push(req(0)).await;
    let (result, sent) = script.settle().await;
    let err = result.unwrap_err().to_string();
    assert!(err.starts_with("opening "), "{err}");
    assert!(sent.iter().all(|p| !p.data.starts_with(b"outside")), "{sent:?}");
    assert!(error_packet_text(&sent).starts_with("opening "));
}

#[tokio::test]
async fn received_files_have_their_content_hash_recorded_as_they_arrive() {
    use crate::cache::contenthash::{HashCache, content_hash};
    let src = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    rich_tree(src.path());
    let hashes = std::sync::Arc::new(HashCache::default());
    let opts = ReceiveOptions { hashes: Some(hashes.clone()), ..ReceiveOptions::default() };
    let (_, report) = transfer(src.path(), dest.path(), &WalkFilter::default(), opts.clone()).await;
    // The recorded hashes give the key a fresh read of every file gives, and
    // so does the key the receiver made from its own walk.
    let key = content_hash(dest.path(), &[""], &hashes).unwrap();
    assert_eq!(key, content_hash(dest.path(), &[""], &HashCache::default()).unwrap());
    assert_eq!(report.content_key.as_deref(), Some(key.as_str()));

    // A changed file arrives (in place of its old copy) with its new hash.
    std::fs::write(src.path().join("src/a.txt"), "changed, and longer than before\n").unwrap();
    let (_, report) = transfer(src.path(), dest.path(), &WalkFilter::default(), opts.clone()).await;
    let key2 = content_hash(dest.path(), &[""], &hashes).unwrap();
    assert_ne!(key2, key);
    assert_eq!(key2, content_hash(dest.path(), &[""], &HashCache::default()).unwrap());
    assert_eq!(report.content_key.as_deref(), Some(key2.as_str()));
    assert_eq!(report.changes, Some(vec![Change::Written("src/a.txt".into())]));

    // Unchanged: the key of a walk of entries all kept, and no changes.
    let (_, report) = transfer(src.path(), dest.path(), &WalkFilter::default(), opts).await;
    assert_eq!(report.content_key.as_deref(), Some(key2.as_str()));
    assert_eq!(report.changes, Some(vec![]));

    // And the key really comes from the record: rewrite a file's bytes
    // behind the cache's back, keeping its identity (inode, size, mtime).
    let path = dest.path().join("README.md");
    let meta = std::fs::metadata(&path).unwrap();
    let same_size = vec![b'x'; meta.len() as usize];
    std::fs::write(&path, &same_size).unwrap();
    let times = Timestamps {
        last_access: Timespec { tv_sec: meta.atime(), tv_nsec: meta.atime_nsec() },
        last_modification: Timespec { tv_sec: meta.mtime(), tv_nsec: meta.mtime_nsec() },
    };
    rustix::fs::utimensat(CWD, &path, &times, AtFlags::empty()).unwrap();
    assert_eq!(content_hash(dest.path(), &[""], &hashes).unwrap(), key2);
    assert_ne!(content_hash(dest.path(), &[""], &HashCache::default()).unwrap(), key2);
}
