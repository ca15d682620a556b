//! The actions on real directories: what a user would find in the layer.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink as ln_s};
use std::path::{Path, PathBuf};

use kiln_proto::buildkit::pb::{
    ChownOpt, FileActionCopy, FileActionMkDir, FileActionMkFile, FileActionRm, FileActionSymlink,
    NamedUserOpt, UserOpt, user_opt,
};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::*;

/// A source root, a destination root, and a directory beside them that
/// stands for the host: no action may touch it.
struct Roots {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dest: PathBuf,
    host: PathBuf,
}

impl Roots {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dest, host) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("host"));
        for d in [&src, &dest, &host] {
            fs::create_dir(d).unwrap();
        }
        fs::write(host.join("victim"), "host data").unwrap();
        Self { _tmp: tmp, src, dest, host }
    }

    fn host_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.host).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["victim"], "the host directory changed");
        assert_eq!(fs::read_to_string(self.host.join("victim")).unwrap(), "host data");
    }

    fn copy(&self, a: &FileActionCopy) -> Result<(), FileOpError> {
        copy(&self.src, &self.dest, a, &UserLookup::in_root(&self.dest))
    }
}

fn put(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn lmeta(root: &Path, rel: &str) -> fs::Metadata {
    fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn perm(root: &Path, rel: &str) -> u32 {
    lmeta(root, rel).mode() & 0o7777
}

fn exists(root: &Path, rel: &str) -> bool {
    fs::symlink_metadata(root.join(rel)).is_ok()
}

fn set_mtime(path: &Path, sec: i64) {
    let t = TimeSpec::new(sec, 0);
    utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

fn chmod_to(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

fn id(n: u32) -> Option<UserOpt> {
    Some(UserOpt { user: Some(user_opt::User::ById(n)) })
}

fn named(name: &str) -> Option<UserOpt> {
    Some(UserOpt { user: Some(user_opt::User::ByName(NamedUserOpt { name: name.into(), input: 0 })) })
}

fn write_users(root: &Path) {
    put(root, "etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1500:1600::/home/app:/bin/sh\n");
    put(root, "etc/group", "root:x:0:\nweb:x:33:\n");
}

/// A copy action with LLB's "no override" values, as BuildKit's client sends them.
fn cp(src: &str, dest: &str) -> FileActionCopy {
    FileActionCopy { src: src.into(), dest: dest.into(), mode: -1, timestamp: -1, ..Default::default() }
}

fn md(path: &str, mode: i32, parents: bool) -> FileActionMkDir {
    FileActionMkDir { path: path.into(), mode, make_parents: parents, owner: None, timestamp: -1 }
}

fn mf(path: &str, data: &str) -> FileActionMkFile {
    FileActionMkFile { path: path.into(), mode: 0o644, data: data.into(), owner: None, timestamp: -1 }
}

fn rm_action(path: &str, allow_not_found: bool, allow_wildcard: bool) -> FileActionRm {
    FileActionRm { path: path.into(), allow_not_found, allow_wildcard }
}

fn none() -> UserLookup {
    UserLookup::default()
}

// ---- mkdir ----

#[test]
fn mkdir_sets_the_mode_whatever_the_umask() {
    let r = Roots::new();
    mkdir(&r.dest, &md("/a", 0o777, false), &none()).unwrap();
    mkdir(&r.dest, &md("b", 0o4750, false), &none()).unwrap();
    assert_eq!(perm(&r.dest, "a"), 0o777);
    assert_eq!(perm(&r.dest, "b"), 0o750, "only permission bits are taken");
}

#[test]
fn mkdir_without_parents_needs_the_parent() {
    let r = Roots::new();
    let err = mkdir(&r.dest, &md("/a/b", 0o755, false), &none()).unwrap_err();
    assert_eq!(err.to_string(), "mkdir /a/b: no such file or directory");
}

#[test]
fn mkdir_with_parents_gives_them_the_same_mode_owner_and_time() {
    let r = Roots::new();
    let mut a = md("/x/y/z", 0o711, true);
    a.owner = Some(ChownOpt { user: id(7), group: id(8) });
    a.timestamp = 1_000_000_000_000_000_000;
    mkdir(&r.dest, &a, &none()).unwrap();
    for d in ["x", "x/y", "x/y/z"] {
        let m = lmeta(&r.dest, d);
        assert!(m.is_dir());
        assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o711, 7, 8), "{d}");
    }
    // The leaf keeps the time; its parents' moved when their child was made, as in BuildKit.
    assert_eq!(lmeta(&r.dest, "x/y/z").mtime(), 1_000_000_000);
}

#[test]
fn mkdir_leaves_existing_entries_alone_unless_parents_meet_a_file() {
    let r = Roots::new();
    fs::create_dir(r.dest.join("d")).unwrap();
    chmod_to(&r.dest, "d", 0o700);
    put(&r.dest, "f", "file");
    mkdir(&r.dest, &md("/d", 0o755, false), &none()).unwrap();
    mkdir(&r.dest, &md("/d", 0o755, true), &none()).unwrap();
    mkdir(&r.dest, &md("/f", 0o755, false), &none()).unwrap();
    assert_eq!(perm(&r.dest, "d"), 0o700);
    assert_eq!(read(&r.dest, "f"), "file");
    let err = mkdir(&r.dest, &md("/f", 0o755, true), &none()).unwrap_err();
    assert_eq!(err.to_string(), "mkdir /f: not a directory");
    let err = mkdir(&r.dest, &md("/f/sub", 0o755, true), &none()).unwrap_err();
    assert_eq!(err.to_string(), "mkdir /f: not a directory");
}

#[test]
fn mkdir_timestamps_minus_one_leaves_now_and_zero_is_1970() {
    let r = Roots::new();
    let mut a = md("/epoch", 0o755, false);
    a.timestamp = 0;
    mkdir(&r.dest, &a, &none()).unwrap();
    mkdir(&r.dest, &md("/now", 0o755, false), &none()).unwrap();
    let mut a = md("/exact", 0o755, false);
    a.timestamp = 1_234_567_890_123_456_789;
    mkdir(&r.dest, &a, &none()).unwrap();
    assert_eq!(lmeta(&r.dest, "epoch").mtime(), 0);
    assert!(lmeta(&r.dest, "now").mtime() > 1_600_000_000);
    let m = lmeta(&r.dest, "exact");
    assert_eq!((m.mtime(), m.mtime_nsec(), m.atime()), (1_234_567_890, 123_456_789, 1_234_567_890));
}

#[test]
fn mkdir_through_escaping_symlinks_stays_in_the_root() {
    let r = Roots::new();
    ln_s(&r.host, r.dest.join("abs")).unwrap();
    ln_s("../../../../../../..", r.dest.join("up")).unwrap();
    mkdir(&r.dest, &md("/abs/new", 0o755, true), &none()).unwrap();
    mkdir(&r.dest, &md("/up/tmp", 0o755, true), &none()).unwrap();
    mkdir(&r.dest, &md("../../../escape", 0o755, false), &none()).unwrap();
    let inside = r.host.strip_prefix("/").unwrap().join("new");
    assert!(r.dest.join(inside).is_dir(), "the absolute link resolves against the root");
    assert!(r.dest.join("tmp").is_dir());
    assert!(r.dest.join("escape").is_dir());
    r.host_untouched();
}

#[test]
fn mkdir_owner_by_name_reads_the_roots_passwd() {
    let r = Roots::new();
    write_users(&r.dest);
    let mut a = md("/home/app", 0o755, true);
    a.owner = Some(ChownOpt { user: named("app"), group: None });
    mkdir(&r.dest, &a, &UserLookup::in_root(&r.dest)).unwrap();
    let m = lmeta(&r.dest, "home/app");
    assert_eq!((m.uid(), m.gid()), (1500, 1600));
}

// ---- mkfile ----

#[test]
fn mkfile_writes_data_with_mode_owner_and_time() {
    let r = Roots::new();
    write_users(&r.dest);
    let mut a = mf("/etc/app.conf", "key=value\n");
    a.mode = 0o640;
    a.owner = Some(ChownOpt { user: named("app"), group: named("web") });
    a.timestamp = 1_500_000_000_000_000_000;
    mkfile(&r.dest, &a, &UserLookup::in_root(&r.dest)).unwrap();
    let m = lmeta(&r.dest, "etc/app.conf");
    assert_eq!(read(&r.dest, "etc/app.conf"), "key=value\n");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()), (0o640, 1500, 33, 1_500_000_000));
}

#[test]
fn mkfile_replaces_the_contents_of_an_existing_file() {
    let r = Roots::new();
    put(&r.dest, "f", "a much longer old content");
    chmod_to(&r.dest, "f", 0o600);
    mkfile(&r.dest, &mf("/f", "new"), &none()).unwrap();
    assert_eq!(read(&r.dest, "f"), "new");
    assert_eq!(perm(&r.dest, "f"), 0o600, "like os.WriteFile, an existing file keeps its mode");
}

#[test]
fn mkfile_errors_name_the_path() {
    let r = Roots::new();
    fs::create_dir(r.dest.join("dir")).unwrap();
    assert_eq!(
        mkfile(&r.dest, &mf("/dir", "x"), &none()).unwrap_err().to_string(),
        "mkfile /dir: is a directory"
    );
    assert_eq!(
        mkfile(&r.dest, &mf("/no/such/file", "x"), &none()).unwrap_err().to_string(),
        "mkfile /no/such/file: no such file or directory"
    );
}

#[test]
fn mkfile_through_symlinks_writes_inside_the_root() {
    let r = Roots::new();
    ln_s(r.host.join("victim"), r.dest.join("abs")).unwrap();
    ln_s("../../../../../../../../victim", r.dest.join("rel")).unwrap();
    let err = mkfile(&r.dest, &mf("/abs", "one"), &none()).unwrap_err().to_string();
    assert!(err.ends_with("/host/victim: no such file or directory"), "{err}");
    fs::create_dir_all(r.dest.join(r.host.strip_prefix("/").unwrap())).unwrap();
    mkfile(&r.dest, &mf("/abs", "one"), &none()).unwrap();
    mkfile(&r.dest, &mf("/rel", "two"), &none()).unwrap();
    let inside = r.host.strip_prefix("/").unwrap().join("victim");
    assert_eq!(read(&r.dest, inside.to_str().unwrap()), "one");
    assert_eq!(read(&r.dest, "victim"), "two");
    r.host_untouched();
}

// ---- rm ----

#[test]
fn rm_removes_files_and_whole_directories() {
    let r = Roots::new();
    put(&r.dest, "f", "x");
    put(&r.dest, "d/e/f", "x");
    rm(&r.dest, &rm_action("/f", false, false)).unwrap();
    rm(&r.dest, &rm_action("d", false, false)).unwrap();
    assert!(!exists(&r.dest, "f"));
    assert!(!exists(&r.dest, "d"));
}

#[test]
fn rm_of_a_missing_path_fails_unless_allowed() {
    let r = Roots::new();
    let err = rm(&r.dest, &rm_action("/nope", false, false)).unwrap_err();
    assert_eq!(err.to_string(), "rm /nope: no such file or directory");
    rm(&r.dest, &rm_action("/nope", true, false)).unwrap();
    assert_eq!(rm(&r.dest, &rm_action("/", true, false)).unwrap_err().to_string(), "rm: invalid empty path");
}

#[test]
fn rm_with_wildcards_removes_every_match_and_tolerates_none() {
    let r = Roots::new();
    for f in ["logs/a.log", "logs/b.log", "logs/keep.txt", "logs/sub/c.log"] {
        put(&r.dest, f, "x");
    }
    rm(&r.dest, &rm_action("/logs/*.log", false, true)).unwrap();
    assert!(!exists(&r.dest, "logs/a.log") && !exists(&r.dest, "logs/b.log"));
    assert!(exists(&r.dest, "logs/keep.txt") && exists(&r.dest, "logs/sub/c.log"));
    rm(&r.dest, &rm_action("/logs/*.tmp", false, true)).unwrap();
    rm(&r.dest, &rm_action("/l?gs/s*", false, true)).unwrap();
    assert!(!exists(&r.dest, "logs/sub"));
}

#[test]
fn rm_removes_a_symlink_not_its_target_and_never_reaches_the_host() {
    let r = Roots::new();
    put(&r.dest, "target/file", "kept");
    ln_s("/target", r.dest.join("link")).unwrap();
    ln_s(&r.host, r.dest.join("hostlink")).unwrap();
    rm(&r.dest, &rm_action("/link", false, false)).unwrap();
    assert_eq!(read(&r.dest, "target/file"), "kept");
    assert!(!exists(&r.dest, "link"));
    // Through the link the path is the root's own (missing) one.
    rm(&r.dest, &rm_action("/hostlink/victim", true, false)).unwrap();
    let err = rm(&r.dest, &rm_action("/hostlink/victim", false, false)).unwrap_err();
    assert!(err.to_string().ends_with("no such file or directory"), "{err}");
    // A glob below a link that is itself the last literal part finds nothing.
    rm(&r.dest, &rm_action("/hostlink/*", false, true)).unwrap();
    r.host_untouched();
}

#[test]
fn rm_of_a_dangling_symlink_needs_allow_not_found() {
    let r = Roots::new();
    ln_s("/missing", r.dest.join("dangling")).unwrap();
    rm(&r.dest, &rm_action("/dangling", false, false)).unwrap_err();
    rm(&r.dest, &rm_action("/dangling", true, false)).unwrap();
    assert!(!exists(&r.dest, "dangling"));
}

// ---- symlink ----

#[test]
fn symlink_stores_the_target_verbatim_with_owner_and_time() {
    let r = Roots::new();
    for (old, new) in [("/etc/hosts", "/abs"), ("../../x", "/rel"), ("a b", "/sp")] {
        let a = FileActionSymlink {
            oldpath: old.into(),
            newpath: new.into(),
            owner: Some(ChownOpt { user: id(11), group: id(12) }),
            timestamp: 1_100_000_000_000_000_000,
        };
        symlink(&r.dest, &a, &none()).unwrap();
        let rel = new.trim_start_matches('/');
        assert_eq!(fs::read_link(r.dest.join(rel)).unwrap(), Path::new(old));
        let m = lmeta(&r.dest, rel);
        assert_eq!((m.uid(), m.gid(), m.mtime()), (11, 12, 1_100_000_000));
    }
}

#[test]
fn symlink_over_an_existing_entry_fails() {
    let r = Roots::new();
    put(&r.dest, "f", "x");
    let a = FileActionSymlink { oldpath: "t".into(), newpath: "/f".into(), owner: None, timestamp: -1 };
    assert_eq!(symlink(&r.dest, &a, &none()).unwrap_err().to_string(), "symlink t /f: file exists");
}

// ---- copy: where things land ----

#[test]
fn copy_file_to_a_new_name_an_existing_dir_and_a_trailing_slash() {
    let r = Roots::new();
    put(&r.src, "a.txt", "A");
    fs::create_dir(r.dest.join("existing")).unwrap();
    r.copy(&cp("/a.txt", "/renamed.txt")).unwrap();
    r.copy(&cp("a.txt", "/existing")).unwrap();
    r.copy(&cp("/a.txt", "/newdir/")).unwrap();
    assert_eq!(read(&r.dest, "renamed.txt"), "A");
    assert_eq!(read(&r.dest, "existing/a.txt"), "A");
    assert_eq!(read(&r.dest, "newdir/a.txt"), "A");
    assert_eq!(perm(&r.dest, "newdir"), 0o755);
}

#[test]
fn copy_file_over_an_existing_file_replaces_it() {
    let r = Roots::new();
    put(&r.src, "a", "new");
    put(&r.dest, "a", "old old old");
    r.copy(&cp("/a", "/a")).unwrap();
    assert_eq!(read(&r.dest, "a"), "new");
}

#[test]
fn copy_directory_itself_or_its_contents() {
    let r = Roots::new();
    put(&r.src, "dir/x", "X");
    put(&r.src, "dir/sub/y", "Y");
    fs::create_dir(r.dest.join("into")).unwrap();
    put(&r.dest, "merge/old", "kept");

    r.copy(&cp("/dir", "/fresh")).unwrap();
    r.copy(&cp("/dir", "/into")).unwrap();
    r.copy(&FileActionCopy { dir_copy_contents: true, ..cp("/dir", "/merge") }).unwrap();
    r.copy(&FileActionCopy { dir_copy_contents: true, create_dest_path: true, ..cp("/dir", "/made/here") })
        .unwrap();
    r.copy(&cp("/dir/.", "/dotted")).unwrap();

    assert_eq!(read(&r.dest, "fresh/sub/y"), "Y");
    assert_eq!(read(&r.dest, "into/dir/x"), "X");
    assert_eq!(read(&r.dest, "merge/x"), "X");
    assert_eq!(read(&r.dest, "merge/old"), "kept");
    assert_eq!(read(&r.dest, "made/here/sub/y"), "Y");
    assert_eq!(read(&r.dest, "dotted/x"), "X");
    assert!(!exists(&r.dest, "merge/dir"));
}

#[test]
fn copy_root_contents_into_root() {
    let r = Roots::new();
    put(&r.src, "a", "A");
    put(&r.src, "d/b", "B");
    r.copy(&FileActionCopy { dir_copy_contents: true, ..cp("/", "/") }).unwrap();
    assert_eq!(read(&r.dest, "a"), "A");
    assert_eq!(read(&r.dest, "d/b"), "B");
}

#[test]
fn copy_of_a_missing_source_names_it() {
    let r = Roots::new();
    let err = r.copy(&cp("/nope", "/x")).unwrap_err();
    assert_eq!(err.to_string(), "copy /nope: no such file or directory");
}

#[test]
fn copy_without_create_dest_path_needs_the_parent() {
    let r = Roots::new();
    put(&r.src, "a", "A");
    let err = r.copy(&cp("/a", "/no/parent/a")).unwrap_err();
    assert_eq!(err.to_string(), "failed to stat /no/parent/a: lstat /no/parent: no such file or directory");
    r.copy(&FileActionCopy { create_dest_path: true, ..cp("/a", "/no/parent/a") }).unwrap();
    assert_eq!(read(&r.dest, "no/parent/a"), "A");
}

#[test]
fn copy_wildcards_copy_every_match() {
    let r = Roots::new();
    for f in ["a.txt", "b.txt", "c.md", "sub/d.txt"] {
        put(&r.src, f, f);
    }
    r.copy(&FileActionCopy { allow_wildcard: true, ..cp("/*.txt", "/out/") }).unwrap();
    let mut names: Vec<_> =
        fs::read_dir(r.dest.join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["a.txt", "b.txt"]);
    r.copy(&FileActionCopy { allow_wildcard: true, ..cp("/s?b/[c-d].txt", "/one") }).unwrap();
    assert_eq!(read(&r.dest, "one"), "sub/d.txt");
}

#[test]
fn copy_wildcard_directories_copy_their_contents_when_asked() {
    let r = Roots::new();
    put(&r.src, "pkg-a/x", "ax");
    put(&r.src, "pkg-b/y", "by");
    let a = FileActionCopy { allow_wildcard: true, dir_copy_contents: true, ..cp("/pkg-*", "/all/") };
    r.copy(&a).unwrap();
    assert_eq!(read(&r.dest, "all/x"), "ax");
    assert_eq!(read(&r.dest, "all/y"), "by");
    let a = FileActionCopy { allow_wildcard: true, ..cp("/pkg-*", "/each/") };
    r.copy(&a).unwrap();
    assert_eq!(read(&r.dest, "each/pkg-a/x"), "ax");
}

#[test]
fn copy_wildcard_without_matches_fails_unless_allowed() {
    let r = Roots::new();
    let err = r.copy(&FileActionCopy { allow_wildcard: true, ..cp("/*.none", "/x") }).unwrap_err();
    assert_eq!(err.to_string(), "/*.none not found");
    r.copy(&FileActionCopy { allow_wildcard: true, allow_empty_wildcard: true, ..cp("/*.none", "/x") })
        .unwrap();
    assert!(!exists(&r.dest, "x"));
}

#[test]
fn copy_follow_symlink_copies_the_target_else_the_link() {
    let r = Roots::new();
    put(&r.src, "real/file", "R");
    ln_s("real/file", r.src.join("link")).unwrap();
    ln_s("/real", r.src.join("dirlink")).unwrap();
    r.copy(&cp("/link", "/as-link")).unwrap();
    r.copy(&FileActionCopy { follow_symlink: true, ..cp("/link", "/as-file") }).unwrap();
    r.copy(&FileActionCopy { follow_symlink: true, dir_copy_contents: true, ..cp("/dirlink", "/as-dir") })
        .unwrap();
    assert_eq!(fs::read_link(r.dest.join("as-link")).unwrap(), Path::new("real/file"));
    assert!(lmeta(&r.dest, "as-file").is_file());
    assert_eq!(read(&r.dest, "as-file"), "R");
    assert_eq!(read(&r.dest, "as-dir/file"), "R");
}

#[test]
fn copy_source_symlinks_to_the_host_resolve_in_the_source_root() {
    let r = Roots::new();
    ln_s(r.host.join("victim"), r.src.join("abs")).unwrap();
    ln_s("../../../../../../../../../victim", r.src.join("rel")).unwrap();
    put(&r.src, "victim", "from the source root");
    let err = r.copy(&FileActionCopy { follow_symlink: true, ..cp("/abs", "/a") }).unwrap_err();
    assert!(err.to_string().ends_with("no such file or directory"), "{err}");
    r.copy(&FileActionCopy { follow_symlink: true, ..cp("/rel", "/b") }).unwrap();
    assert_eq!(read(&r.dest, "b"), "from the source root");
    r.host_untouched();
}

#[test]
fn copy_destination_symlinks_resolve_in_the_destination_root() {
    let r = Roots::new();
    put(&r.src, "victim", "payload");
    put(&r.src, "dir/victim", "payload");
    ln_s(&r.host, r.dest.join("app")).unwrap();
    ln_s("../../../../../../..", r.dest.join("up")).unwrap();
    r.copy(&FileActionCopy { create_dest_path: true, ..cp("/victim", "/app/") }).unwrap();
    r.copy(&FileActionCopy { create_dest_path: true, dir_copy_contents: true, ..cp("/dir", "/up/") })
        .unwrap();
    let inside = r.host.strip_prefix("/").unwrap().join("victim");
    assert_eq!(read(&r.dest, inside.to_str().unwrap()), "payload");
    assert_eq!(read(&r.dest, "victim"), "payload");
    r.host_untouched();
}

#[test]
fn copy_keeps_symlinks_verbatim_and_never_follows_them_in_the_target() {
    let r = Roots::new();
    ln_s("/etc/passwd", r.src.join("abs")).unwrap();
    ln_s("../up", r.src.join("rel")).unwrap();
    put(&r.src, "tree/escape/file", "data");
    // The destination already has `escape` as a link out of the root.
    fs::create_dir(r.dest.join("tree")).unwrap();
    ln_s(&r.host, r.dest.join("tree/escape")).unwrap();
    r.copy(&FileActionCopy { dir_copy_contents: true, ..cp("/", "/") }).unwrap_err();
    r.host_untouched();
    r.copy(&FileActionCopy {
        dir_copy_contents: true,
        always_replace_existing_dest_paths: true,
        ..cp("/", "/")
    })
    .unwrap();
    assert_eq!(fs::read_link(r.dest.join("abs")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(fs::read_link(r.dest.join("rel")).unwrap(), Path::new("../up"));
    assert_eq!(read(&r.dest, "tree/escape/file"), "data");
    r.host_untouched();
}

#[test]
fn copy_preserves_hardlinks_among_copied_files() {
    let r = Roots::new();
    put(&r.src, "d/one", "shared");
    fs::hard_link(r.src.join("d/one"), r.src.join("d/two")).unwrap();
    put(&r.src, "d/lonely", "alone");
    r.copy(&cp("/d", "/out")).unwrap();
    let (one, two) = (lmeta(&r.dest, "out/one"), lmeta(&r.dest, "out/two"));
    assert_eq!(one.ino(), two.ino());
    assert_eq!(one.nlink(), 2);
    assert_ne!(one.ino(), lmeta(&r.src, "d/one").ino());
    assert_eq!(lmeta(&r.dest, "out/lonely").nlink(), 1);
}

#[test]
fn copy_keeps_xattrs() {
    let r = Roots::new();
    put(&r.src, "f", "x");
    xattr::set(r.src.join("f"), "user.kiln.test", b"value").unwrap();
    r.copy(&cp("/f", "/f")).unwrap();
    assert_eq!(xattr::get(r.dest.join("f"), "user.kiln.test").unwrap().as_deref(), Some(&b"value"[..]));
}

#[test]
fn copy_makes_fifos_and_devices_anew() {
    let r = Roots::new();
    nix::unistd::mkfifo(&r.src.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    let null = nix::sys::stat::makedev(1, 3);
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
    nix::sys::stat::mknod(&r.src.join("null"), nix::sys::stat::SFlag::S_IFCHR, mode, null).unwrap();
    r.copy(&FileActionCopy { dir_copy_contents: true, ..cp("/", "/dev") }).unwrap();
    assert!(lmeta(&r.dest, "dev/pipe").file_type().is_fifo());
    assert_eq!(perm(&r.dest, "dev/pipe"), 0o640);
    let m = lmeta(&r.dest, "dev/null");
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), null);
}

// ---- copy: ownership, modes, times ----

#[test]
fn copy_keeps_source_owners_without_an_override() {
    let r = Roots::new();
    put(&r.src, "d/f", "x");
    std::os::unix::fs::lchown(r.src.join("d"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(r.src.join("d/f"), Some(4321), Some(8765)).unwrap();
    // Set after chown, which clears it: the copy must chown before chmod too.
    chmod_to(&r.src, "d/f", 0o4755);
    r.copy(&FileActionCopy { create_dest_path: true, ..cp("/d", "/new/parent/d") }).unwrap();
    let ids = |rel| {
        let m = lmeta(&r.dest, rel);
        (m.uid(), m.gid())
    };
    assert_eq!(ids("new/parent/d"), (1234, 5678));
    assert_eq!(ids("new/parent/d/f"), (4321, 8765));
    assert_eq!(perm(&r.dest, "new/parent/d/f"), 0o4755);
    assert_eq!(ids("new/parent"), (0, 0), "made directories are root's");
}

#[test]
fn copy_owner_override_applies_to_everything_including_made_directories() {
    let r = Roots::new();
    put(&r.src, "d/f", "x");
    ln_s("f", r.src.join("d/link")).unwrap();
    let owner = Some(ChownOpt { user: id(1000), group: id(2000) });
    r.copy(&FileActionCopy { owner, create_dest_path: true, ..cp("/d", "/made/d") }).unwrap();
    for rel in ["made", "made/d", "made/d/f", "made/d/link"] {
        let m = lmeta(&r.dest, rel);
        assert_eq!((m.uid(), m.gid()), (1000, 2000), "{rel}");
    }
}

#[test]
fn copy_owner_by_name_comes_from_the_destination_root() {
    let r = Roots::new();
    write_users(&r.dest);
    // The source has its own, different passwd: it must not be read.
    put(&r.src, "etc/passwd", "app:x:1:1::/:/bin/sh\n");
    put(&r.src, "f", "x");
    let owner = Some(ChownOpt { user: named("app"), group: None });
    r.copy(&FileActionCopy { owner, ..cp("/f", "/f") }).unwrap();
    let m = lmeta(&r.dest, "f");
    assert_eq!((m.uid(), m.gid()), (1500, 1600));
}

#[test]
fn copy_fixed_mode_applies_to_files_and_directories() {
    let r = Roots::new();
    put(&r.src, "d/f", "x");
    chmod_to(&r.src, "d/f", 0o600);
    r.copy(&FileActionCopy { mode: 0o751, create_dest_path: true, ..cp("/d", "/p/d") }).unwrap();
    assert_eq!(perm(&r.dest, "p/d"), 0o751);
    assert_eq!(perm(&r.dest, "p/d/f"), 0o751);
    assert_eq!(perm(&r.dest, "p"), 0o751, "fsutil makes destination directories with the mode too");
}

#[test]
fn copy_mode_str_applies_to_each_entrys_own_mode() {
    let r = Roots::new();
    put(&r.src, "d/ro", "x");
    put(&r.src, "d/exe", "x");
    chmod_to(&r.src, "d/ro", 0o644);
    chmod_to(&r.src, "d/exe", 0o700);
    chmod_to(&r.src, "d", 0o750);
    let cases =
        [("u+x", [0o750, 0o744, 0o700]), ("go-w,a+X", [0o751, 0o644, 0o711]), ("640", [0o640, 0o640, 0o640])];
    for (mode_str, [dir, ro, exe]) in cases {
        let dest = format!("/{}", mode_str.replace(['+', ',', '-'], "_"));
        r.copy(&FileActionCopy { mode_str: mode_str.into(), mode: 0o777, ..cp("/d", &dest) }).unwrap();
        let rel = dest.trim_start_matches('/');
        assert_eq!(perm(&r.dest, rel), dir, "{mode_str} dir");
        assert_eq!(perm(&r.dest, &format!("{rel}/ro")), ro, "{mode_str} ro");
        assert_eq!(perm(&r.dest, &format!("{rel}/exe")), exe, "{mode_str} exe");
    }
    let err = r.copy(&FileActionCopy { mode_str: "u+q".into(), ..cp("/d", "/bad") }).unwrap_err();
    assert_eq!(err.to_string(), "invalid mode \"u+q\": invalid syntax");
}

#[test]
fn copy_timestamps_override_or_keep_source_times() {
    let r = Roots::new();
    put(&r.src, "d/f", "x");
    ln_s("f", r.src.join("d/l")).unwrap();
    set_mtime(&r.src.join("d/f"), 1_000_000_000);
    set_mtime(&r.src.join("d/l"), 1_000_000_001);
    set_mtime(&r.src.join("d"), 1_000_000_002);
    r.copy(&FileActionCopy { create_dest_path: true, ..cp("/d", "/keep/d") }).unwrap();
    assert_eq!(lmeta(&r.dest, "keep/d/f").mtime(), 1_000_000_000);
    assert_eq!(lmeta(&r.dest, "keep/d/l").mtime(), 1_000_000_001);
    assert_eq!(lmeta(&r.dest, "keep/d").mtime(), 1_000_000_002);

    let a =
        FileActionCopy { timestamp: 1_700_000_000_000_000_000, create_dest_path: true, ..cp("/d", "/set/d") };
    r.copy(&a).unwrap();
    for rel in ["set", "set/d", "set/d/f", "set/d/l"] {
        assert_eq!(lmeta(&r.dest, rel).mtime(), 1_700_000_000, "{rel}");
    }
}

#[test]
fn copy_contents_into_an_existing_dir_keeps_its_owner_and_mode_but_takes_the_time() {
    let r = Roots::new();
    put(&r.src, "d/f", "x");
    set_mtime(&r.src.join("d"), 1_200_000_000);
    chmod_to(&r.src, "d", 0o700);
    fs::create_dir(r.dest.join("app")).unwrap();
    chmod_to(&r.dest, "app", 0o775);
    std::os::unix::fs::lchown(r.dest.join("app"), Some(5), Some(5)).unwrap();
    r.copy(&FileActionCopy { dir_copy_contents: true, ..cp("/d", "/app") }).unwrap();
    let m = lmeta(&r.dest, "app");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.mtime()), (0o775, 5, 1_200_000_000));
}

// ---- copy: include / exclude ----

fn tree(root: &Path) {
    for f in
        ["main.go", "util/helper.go", "util/helper_test.go", "README.md", "docs/guide.md", "docs/img/a.png"]
    {
        put(root, f, f);
    }
}

fn files_under(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn copy_include_and_exclude_patterns_filter_like_dockerignore() {
    let cases: &[(&[&str], &[&str], &[&str])] = &[
        (&["**/*.go"], &[], &["main.go", "util/", "util/helper.go", "util/helper_test.go"]),
        (&["**/*.go"], &["**/*_test.go"], &["main.go", "util/", "util/helper.go"]),
        (&[], &["docs", "*.md"], &["main.go", "util/", "util/helper.go", "util/helper_test.go"]),
        (
            &[],
            &["docs", "!docs/img"],
            &[
                "README.md",
                "docs/",
                "docs/img/",
                "docs/img/a.png",
                "main.go",
                "util/",
                "util/helper.go",
                "util/helper_test.go",
            ],
        ),
        (&["docs/*/a.png"], &[], &["docs/", "docs/img/", "docs/img/a.png"]),
        (&["docs"], &["docs/img"], &["docs/", "docs/guide.md"]),
    ];
    for (include, exclude, want) in cases {
        let r = Roots::new();
        tree(&r.src);
        let a = FileActionCopy {
            include_patterns: include.iter().map(|s| s.to_string()).collect(),
            exclude_patterns: exclude.iter().map(|s| s.to_string()).collect(),
            dir_copy_contents: true,
            ..cp("/", "/out")
        };
        r.copy(&a).unwrap();
        assert_eq!(files_under(&r.dest.join("out")), *want, "include {include:?} exclude {exclude:?}");
    }
}

#[test]
fn copy_refuses_malformed_patterns() {
    let r = Roots::new();
    tree(&r.src);
    let a = FileActionCopy { exclude_patterns: vec!["!".into()], ..cp("/", "/out") };
    assert_eq!(
        r.copy(&a).unwrap_err().to_string(),
        "invalid exclude pattern \"!\": illegal exclusion pattern"
    );
}

#[test]
fn copy_required_paths_must_be_among_the_copied() {
    let r = Roots::new();
    tree(&r.src);
    let ok = FileActionCopy {
        include_patterns: vec!["util/helper.go".into()],
        required_paths: vec!["/util/helper.go".into()],
        dir_copy_contents: true,
        ..cp("/", "/out")
    };
    r.copy(&ok).unwrap();
    assert_eq!(read(&r.dest, "out/util/helper.go"), "util/helper.go");
    let missing = FileActionCopy {
        include_patterns: vec!["util/nope.go".into()],
        required_paths: vec!["/util/nope.go".into()],
        dir_copy_contents: true,
        ..cp("/", "/out2")
    };
    assert_eq!(r.copy(&missing).unwrap_err().to_string(), "\"/util/nope.go\": not found");
}

// ---- copy: replacing existing destination paths ----

#[test]
fn copy_type_clashes_fail_unless_replacing_is_asked_for() {
    let r = Roots::new();
    put(&r.src, "t1/a/inner", "dir in source");
    put(&r.dest, "t1/a", "file in dest");
    put(&r.src, "t2/b", "file in source");
    put(&r.dest, "t2/b/inner", "dir in dest");
    let dir_over_file = FileActionCopy { dir_copy_contents: true, ..cp("/t1", "/t1") };
    let file_over_dir = FileActionCopy { dir_copy_contents: true, ..cp("/t2", "/t2") };
    assert_eq!(r.copy(&dir_over_file).unwrap_err().to_string(), "cannot copy to non-directory: /t1/a");
    assert_eq!(
        r.copy(&file_over_dir).unwrap_err().to_string(),
        "cannot replace to directory /t2/b with file"
    );
    r.copy(&FileActionCopy { always_replace_existing_dest_paths: true, ..dir_over_file }).unwrap();
    r.copy(&FileActionCopy { always_replace_existing_dest_paths: true, ..file_over_dir }).unwrap();
    assert_eq!(read(&r.dest, "t1/a/inner"), "dir in source");
    assert_eq!(read(&r.dest, "t2/b"), "file in source");
}

// ---- copy: ADD of archives ----

fn tar_bytes(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if kind.is_dir() { 0o750 } else { 0o640 });
        h.set_uid(1001);
        h.set_gid(1002);
        h.set_mtime(1_300_000_000);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                h.set_size(0);
                b.append_link(&mut h, name, data).unwrap();
            }
            _ => {
                h.set_size(data.len() as u64);
                // Written raw so tests can carry names tar-rs would refuse.
                let name_bytes = name.as_bytes();
                h.as_old_mut().name[..name_bytes.len()].copy_from_slice(name_bytes);
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn simple_tar() -> Vec<u8> {
    tar_bytes(&[
        ("app/", tar::EntryType::Directory, ""),
        ("app/bin.sh", tar::EntryType::Regular, "#!/bin/sh\n"),
        ("app/link", tar::EntryType::Symlink, "bin.sh"),
        ("app/hard", tar::EntryType::Link, "app/bin.sh"),
    ])
}

fn unpack_action(src: &str, dest: &str) -> FileActionCopy {
    FileActionCopy {
        attempt_unpack_docker_compatibility: true,
        allow_wildcard: true,
        create_dest_path: true,
        dir_copy_contents: true,
        follow_symlink: true,
        ..cp(src, dest)
    }
}

#[test]
fn add_extracts_plain_and_compressed_tars() {
    let plain = simple_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    bz.write_all(&plain).unwrap();
    let mut xz = Vec::new();
    lzma_rs::xz_compress(&mut &plain[..], &mut xz).unwrap();
    let zst = zstd::stream::encode_all(&plain[..], 3).unwrap();
    // A skippable frame (magic 0x184D2A5A, 4 bytes of payload) may lead a zstd stream.
    let mut skippable = vec![0x5a, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    skippable.extend_from_slice(&zst);
    let archives = [
        ("a.tar", plain.clone()),
        ("a.tgz", gz.finish().unwrap()),
        ("a.tbz", bz.finish().unwrap()),
        ("a.txz", xz),
        ("a.tar.zst", zst),
        ("skippable.tar.zst", skippable),
    ];
    for (name, bytes) in archives {
        let r = Roots::new();
        fs::write(r.src.join(name), bytes).unwrap();
        r.copy(&unpack_action(&format!("/{name}"), "/opt")).unwrap();
        assert_eq!(read(&r.dest, "opt/app/bin.sh"), "#!/bin/sh\n", "{name}");
        let m = lmeta(&r.dest, "opt/app/bin.sh");
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
            (0o640, 1001, 1002, 1_300_000_000),
            "{name}"
        );
        assert_eq!(perm(&r.dest, "opt/app"), 0o750);
        assert_eq!(lmeta(&r.dest, "opt/app").mtime(), 1_300_000_000, "directory times are set last");
        assert_eq!(fs::read_link(r.dest.join("opt/app/link")).unwrap(), Path::new("bin.sh"));
        assert_eq!(lmeta(&r.dest, "opt/app/hard").ino(), m.ino());
        assert!(!exists(&r.dest, &format!("opt/{name}")));
    }
}

#[test]
fn add_reads_unset_numeric_fields_as_zero_like_go() {
    // What bollard's documented context tar looks like: no uid, gid or mtime.
    let mut h = tar::Header::new_gnu();
    h.set_path("Dockerfile").unwrap();
    h.set_size(4);
    h.set_mode(0o755);
    h.set_cksum();
    assert!(h.uid().is_err(), "the fixture must leave uid unset");
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"FROM"[..]).unwrap();
    let r = Roots::new();
    fs::write(r.src.join("ctx.tar"), b.into_inner().unwrap()).unwrap();
    r.copy(&unpack_action("/ctx.tar", "/")).unwrap();
    assert_eq!(read(&r.dest, "Dockerfile"), "FROM");
    let m = lmeta(&r.dest, "Dockerfile");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()), (0o755, 0, 0, 0));
}

#[test]
fn add_with_an_owner_chowns_the_extracted_entries() {
    let r = Roots::new();
    fs::write(r.src.join("a.tar"), simple_tar()).unwrap();
    let owner = Some(ChownOpt { user: id(7), group: id(9) });
    r.copy(&FileActionCopy { owner, ..unpack_action("/a.tar", "/opt/") }).unwrap();
    for rel in ["opt", "opt/app", "opt/app/bin.sh", "opt/app/link"] {
        let m = lmeta(&r.dest, rel);
        assert_eq!((m.uid(), m.gid()), (7, 9), "{rel}");
    }
}

#[test]
fn add_copies_files_that_are_not_tars() {
    let r = Roots::new();
    put(&r.src, "notes.txt", "just text, not an archive");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"compressed but not a tar").unwrap();
    fs::write(r.src.join("data.gz"), gz.finish().unwrap()).unwrap();
    r.copy(&unpack_action("/notes.txt", "/opt/")).unwrap();
    r.copy(&unpack_action("/data.gz", "/opt/")).unwrap();
    assert_eq!(read(&r.dest, "opt/notes.txt"), "just text, not an archive");
    assert!(lmeta(&r.dest, "opt/data.gz").is_file());
    // Without the flag a tar is just a file.
    fs::write(r.src.join("a.tar"), simple_tar()).unwrap();
    r.copy(&FileActionCopy {
        attempt_unpack_docker_compatibility: false,
        ..unpack_action("/a.tar", "/raw/")
    })
    .unwrap();
    assert!(lmeta(&r.dest, "raw/a.tar").is_file());
}

#[test]
fn add_refuses_entries_that_climb_out() {
    let r = Roots::new();
    let evil = tar_bytes(&[("../../host/victim", tar::EntryType::Regular, "pwned")]);
    fs::write(r.src.join("evil.tar"), evil).unwrap();
    let err = r.copy(&unpack_action("/evil.tar", "/opt")).unwrap_err().to_string();
    assert_eq!(err, "unpack /evil.tar: ../../host/victim: invalid entry name");
    r.host_untouched();
}

#[test]
fn add_resolves_links_from_the_archive_inside_the_extraction_directory() {
    let r = Roots::new();
    let host = r.host.to_string_lossy().into_owned();
    let sneaky = tar_bytes(&[
        ("out", tar::EntryType::Symlink, &host),
        ("out/victim", tar::EntryType::Regular, "through the link"),
        ("up", tar::EntryType::Symlink, "../../../../../../.."),
        ("up/escaped", tar::EntryType::Regular, "stays"),
    ]);
    fs::write(r.src.join("s.tar"), sneaky).unwrap();
    r.copy(&unpack_action("/s.tar", "/opt")).unwrap();
    let inside = Path::new("opt").join(r.host.strip_prefix("/").unwrap()).join("victim");
    assert_eq!(read(&r.dest, inside.to_str().unwrap()), "through the link");
    assert_eq!(read(&r.dest, "opt/escaped"), "stays");
    r.host_untouched();
}
