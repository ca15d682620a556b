//! `FileActionCopy`: `cp -a` between two roots with BuildKit's rules for
//! where things land (BuildKit `docopy` in `solver/llbsolver/file/backend.go`,
//! tonistiigi/fsutil `copy/copy.go` and `copy/copy_linux.go`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_proto::buildkit::pb::FileActionCopy;
use nix::sys::stat::{Mode, SFlag, mknod};

use super::meta::{Timestamp, chmod, chown, lstat, mkdir_all, remove_all, set_times, times_of};
use super::mode::SymbolicMode;
use super::pattern::{BadPattern, Glob, PatternList};
use super::root::{shown, split, split_wildcards};
use super::user::{Owner, UserLookup};
use super::{FileOpError, resolve_action_path, unpack};
use crate::util::gopath;

/// What happens to the permission bits of copied entries.
#[derive(Debug)]
enum ModeChange {
    Keep,
    /// `mode`: these bits (`0o7777`) for every entry.
    Fixed(u32),
    /// `mode_str`, applied to each entry's own mode.
    Symbolic(SymbolicMode),
}

#[derive(Debug)]
struct Options {
    owner: Option<Owner>,
    times: Option<Timestamp>,
    mode: ModeChange,
    include: Option<PatternList>,
    exclude: Option<PatternList>,
    contents: bool,
    follow: bool,
    replace: bool,
}

impl Options {
    /// Directories made for the destination get the fixed mode when there is
    /// one (fsutil passes `Mode` to `MkdirAll`), else 0755.
    fn dir_perm(&self) -> u32 {
        match self.mode {
            ModeChange::Fixed(m) => m & 0o777,
            _ => 0o755,
        }
    }
}

pub(super) fn copy(
    src_root: &Path,
    dest_root: &Path,
    a: &FileActionCopy,
    users: &UserLookup,
) -> Result<(), FileOpError> {
    // BuildKit's file backend `cleanPath`: absolute, with a trailing `/` or
    // `/.` kept, since both mean "a directory" to a copy.
    let src = gopath::llb_normalize_path("/", &a.src, true);
    let dest = gopath::llb_normalize_path("/", &a.dest, true);

    if !a.create_dest_path {
        let p = resolve_action_path(dest_root, &a.dest, true)?;
        if p != dest_root {
            let parent = p.parent().unwrap_or(dest_root);
            if let Err(source) = fs::symlink_metadata(parent) {
                return Err(FileOpError::DestParent {
                    dest: a.dest.clone(),
                    parent: shown(dest_root, parent),
                    source,
                });
            }
        }
    }

    let owner = users.resolve(a.owner.as_ref())?;
    let mode = if !a.mode_str.is_empty() {
        let m = SymbolicMode::parse(&a.mode_str)
            .map_err(|_| FileOpError::InvalidMode { mode: a.mode_str.clone() })?;
        ModeChange::Symbolic(m)
    } else if a.mode != -1 {
        ModeChange::Fixed(a.mode as u32 & 0o7777)
    } else {
        ModeChange::Keep
    };
    let patterns = |kind, list: &[String]| {
        PatternList::new(list).map_err(|BadPattern { pattern, reason }| FileOpError::InvalidPattern {
            kind,
            pattern,
            reason,
        })
    };
    let opts = Options {
        owner,
        times: Timestamp::from_llb(a.timestamp),
        mode,
        include: patterns("include", &a.include_patterns)?,
        exclude: patterns("exclude", &a.exclude_patterns)?,
        contents: a.dir_copy_contents,
        follow: a.follow_symlink,
        replace: a.always_replace_existing_dest_paths,
    };

    let sources = if a.allow_wildcard {
        let matches = resolve_wildcards(src_root, &src, a.follow_symlink)?;
        if matches.is_empty() && !a.allow_empty_wildcard {
            return Err(FileOpError::NoMatch { pattern: src });
        }
        matches
    } else {
        vec![src]
    };

    // Source paths (as `/a/b` in the source root) that were copied, kept
    // only when `required_paths` needs them.
    let mut copied = Vec::new();
    let track = !a.required_paths.is_empty();
    for s in &sources {
        if a.attempt_unpack_docker_compatibility
            && let Some(archive) = unpack::unpack(src_root, s, dest_root, &dest, owner, opts.times)?
        {
            copied.push(archive);
            continue;
        }
        copy_source(src_root, s, dest_root, &dest, &opts, track.then_some(&mut copied))?;
    }

    // BuildKit checks these while computing the cache key (contenthash):
    // some copied path must start with each.
    for required in &a.required_paths {
        if !copied.iter().any(|p| p.starts_with(required.as_str())) {
            return Err(FileOpError::RequiredPathMissing { path: required.clone() });
        }
    }
    Ok(())
}

/// The paths (as `/a/b` in `root`) that a source with glob characters names
/// (fsutil `ResolveWildcards`): the literal directory part resolved in the
/// root, then a walk matching the rest with Go's `filepath.Match`. A matched
/// directory is not searched further. Without glob characters, the path.
pub(super) fn resolve_wildcards(root: &Path, path: &str, follow: bool) -> Result<Vec<String>, FileOpError> {
    let (literal, pattern) = split_wildcards(path);
    if pattern.is_empty() {
        return Ok(vec![literal]);
    }
    let start = resolve_action_path(root, &literal, follow)?;
    let meta = fs::symlink_metadata(&start)
        .map_err(|source| FileOpError::Walk { path: shown(root, &start), source })?;
    let glob = Glob::new(&pattern);
    let depth = pattern.split('/').count();
    let mut out = Vec::new();
    if meta.is_dir() {
        walk_matches(root, &start, "", depth, &glob, &mut out)?;
    }
    Ok(out)
}

fn walk_matches(
    root: &Path,
    dir: &Path,
    rel: &str,
    depth: usize,
    glob: &Glob,
    out: &mut Vec<String>,
) -> Result<(), FileOpError> {
    for name in sorted_names(dir).map_err(|source| FileOpError::Walk { path: shown(root, dir), source })? {
        let path = dir.join(&name);
        let name = name.to_string_lossy();
        let child = if rel.is_empty() { name.into_owned() } else { format!("{rel}/{name}") };
        let is_dir = fs::symlink_metadata(&path)
            .map_err(|source| FileOpError::Walk { path: shown(root, &path), source })?
            .is_dir();
        if glob.matches(&child) {
            out.push(shown(root, &path));
        } else if is_dir && depth > 1 {
            walk_matches(root, &path, &child, depth - 1, glob, out)?;
        }
    }
    Ok(())
}

/// Directory entries by name, as Go's `os.ReadDir` returns them.
fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// Copies one source (fsutil `Copy` with `prepareTargetDir`).
fn copy_source(
    src_root: &Path,
    src: &str,
    dest_root: &Path,
    dest: &str,
    opts: &Options,
    copied: Option<&mut Vec<String>>,
) -> Result<(), FileOpError> {
    // "/app/x" needs "/app/"; "/app/" and "/app/." need "/app" itself.
    let (dir, file) = split(dest);
    let ensure = if !file.is_empty() && file != "." { dir } else { dest };
    let ensure = resolve_action_path(dest_root, ensure, true)?;
    let mut made = mkdir_all(dest_root, &ensure, opts.dir_perm(), opts.owner, opts.times)?;

    let mut dst = resolve_action_path(dest_root, dest, true)?;
    let src_path = resolve_action_path(src_root, src, opts.follow)?;
    let src_meta = fs::symlink_metadata(&src_path)
        .map_err(|source| FileOpError::CopySource { path: gopath::join(&["/", src]), source })?;
    let dst_meta = match fs::metadata(&dst) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(FileOpError::CopySource { path: shown(dest_root, &dst), source }),
    };

    // Into an existing directory: a directory goes in unless only its
    // contents are wanted, anything else always goes in.
    let dest_is_dir = dst_meta.as_ref().is_some_and(fs::Metadata::is_dir);
    if (!opts.contents && src_meta.is_dir() && dst_meta.is_some()) || (!src_meta.is_dir() && dest_is_dir) {
        let name = gopath::base(src);
        if name != "." && name != "/" {
            dst.push(name);
        }
    }
    let parent = if opts.contents && src_meta.is_dir() && dst_meta.is_none() {
        dst.clone()
    } else {
        dst.parent().filter(|p| p.starts_with(dest_root)).unwrap_or(dest_root).to_path_buf()
    };
    made.extend(mkdir_all(dest_root, &parent, opts.dir_perm(), opts.owner, opts.times)?);

    let mut copier =
        Copier { opts, src_root, dest_root, inodes: HashMap::new(), parents: Vec::new(), copied };
    copier.copy_entry(&src_path, "", &dst, false, None, None)?;

    // Copying into the directories made above moved their mtimes.
    if let Some(t) = opts.times {
        for d in made.iter().rev() {
            set_times(dest_root, d, t, t)?;
        }
    }
    Ok(())
}

/// A source directory whose copy is made only once something below it is
/// included (so `a/*/c` does not create every `a/b`).
#[derive(Debug)]
struct ParentDir {
    src: PathBuf,
    dst: PathBuf,
    copied: bool,
}

struct Copier<'a> {
    opts: &'a Options,
    src_root: &'a Path,
    dest_root: &'a Path,
    /// First copy of each multiply-linked source inode, to link again.
    inodes: HashMap<(u64, u64), PathBuf>,
    parents: Vec<ParentDir>,
    copied: Option<&'a mut Vec<String>>,
}

impl Copier<'_> {
    fn entry_err(&self, src: &Path, dst: &Path, source: io::Error) -> FileOpError {
        FileOpError::CopyEntry { src: shown(self.src_root, src), dest: shown(self.dest_root, dst), source }
    }

    /// Copies `src` (at `rel` below the copied source) to `target`.
    /// `overwrite` is false only for the top entry, whose existing
    /// directory keeps its owner and mode.
    fn copy_entry(
        &mut self,
        src: &Path,
        rel: &str,
        target: &Path,
        overwrite: bool,
        parent_include: Option<&[bool]>,
        parent_exclude: Option<&[bool]>,
    ) -> Result<(), FileOpError> {
        let mut include = true;
        let mut excluded = false;
        let (mut include_info, mut exclude_info) = (None, None);
        if !rel.is_empty() {
            if let Some(list) = &self.opts.include {
                let (hit, info) = list.matches(rel, parent_include);
                include = hit;
                include_info = Some(info);
            }
            if let Some(list) = &self.opts.exclude {
                let (hit, info) = list.matches(rel, parent_exclude);
                if hit {
                    include = false;
                    excluded = true;
                }
                exclude_info = Some(info);
            }
            if !include && self.opts.include.is_none() && !self.exceptions() {
                return Ok(());
            }
        }

        let meta = fs::symlink_metadata(src).map_err(|e| self.entry_err(src, target, e))?;
        if !include && !meta.is_dir() {
            return Ok(());
        }
        let target_meta = lstat(target).map_err(|e| self.entry_err(src, target, e))?;
        if include {
            if self.opts.replace && target_meta.as_ref().is_some_and(|t| !(meta.is_dir() && t.is_dir())) {
                remove_all(target).map_err(|e| self.entry_err(src, target, e))?;
            }
            self.create_parent_dirs(overwrite)?;
            self.record(src);
        }

        let file_type = meta.file_type();
        let mut copy_info = include;
        let mut restore_times = false;
        if file_type.is_dir() {
            let created = self.copy_directory(
                src,
                rel,
                target,
                &meta,
                overwrite,
                include,
                excluded,
                include_info,
                exclude_info,
            )?;
            if !overwrite {
                copy_info = created;
                restore_times = !created;
            }
        } else {
            self.clear_file_target(src, target)?;
            if file_type.is_file() {
                self.copy_file(src, target, &meta)?;
            } else if file_type.is_symlink() {
                let link = fs::read_link(src).map_err(|e| self.entry_err(src, target, e))?;
                std::os::unix::fs::symlink(&link, target).map_err(|e| self.entry_err(src, target, e))?;
            } else {
                self.copy_special(src, target, &meta)?;
            }
        }

        if copy_info {
            self.copy_file_info(&meta, target)?;
            copy_xattrs(src, target);
        } else if restore_times && target_meta.is_some() {
            self.copy_times(&meta, target)?;
        }
        Ok(())
    }

    fn record(&mut self, src: &Path) {
        if let Some(copied) = self.copied.as_deref_mut() {
            copied.push(shown(self.src_root, src));
        }
    }

    fn exceptions(&self) -> bool {
        self.opts.exclude.as_ref().is_some_and(PatternList::has_exclusions)
    }

    /// Returns whether the target directory was made now.
    #[allow(clippy::too_many_arguments)]
    fn copy_directory(
        &mut self,
        src: &Path,
        rel: &str,
        dst: &Path,
        meta: &fs::Metadata,
        overwrite: bool,
        include: bool,
        excluded: bool,
        include_info: Option<Vec<bool>>,
        exclude_info: Option<Vec<bool>>,
    ) -> Result<bool, FileOpError> {
        let created = if include { self.copy_directory_only(src, dst, meta, overwrite)? } else { false };
        self.parents.push(ParentDir { src: src.to_path_buf(), dst: dst.to_path_buf(), copied: include });
        let result = self.copy_children(src, rel, dst, excluded, include_info, exclude_info);
        self.parents.pop();
        result.map(|()| created)
    }

    fn copy_children(
        &mut self,
        src: &Path,
        rel: &str,
        dst: &Path,
        excluded: bool,
        include_info: Option<Vec<bool>>,
        exclude_info: Option<Vec<bool>>,
    ) -> Result<(), FileOpError> {
        // An excluded directory is walked only for `!` exceptions below it.
        if excluded && !self.exceptions() {
            return Ok(());
        }
        for name in sorted_names(src).map_err(|e| self.entry_err(src, dst, e))? {
            let lossy = name.to_string_lossy();
            let child_rel = if rel.is_empty() { lossy.into_owned() } else { format!("{rel}/{lossy}") };
            self.copy_entry(
                &src.join(&name),
                &child_rel,
                &dst.join(&name),
                true,
                include_info.as_deref(),
                exclude_info.as_deref(),
            )?;
        }
        Ok(())
    }

    /// Makes the directory `dst` for `src`; an existing one is merged into
    /// (taking the source's mode when `overwrite`). Returns whether it was made.
    fn copy_directory_only(
        &self,
        src: &Path,
        dst: &Path,
        meta: &fs::Metadata,
        overwrite: bool,
    ) -> Result<bool, FileOpError> {
        match lstat(dst).map_err(|e| self.entry_err(src, dst, e))? {
            None => {
                fs::create_dir(dst).map_err(|e| self.entry_err(src, dst, e))?;
                Ok(true)
            }
            Some(t) if !t.is_dir() => Err(FileOpError::CopyToNonDir { path: shown(self.dest_root, dst) }),
            Some(_) => {
                if overwrite {
                    chmod(self.dest_root, dst, meta.mode())?;
                }
                Ok(false)
            }
        }
    }

    /// Makes the not yet copied directories above an included entry.
    fn create_parent_dirs(&mut self, overwrite: bool) -> Result<(), FileOpError> {
        for i in 0..self.parents.len() {
            if self.parents[i].copied {
                continue;
            }
            let (src, dst) = (self.parents[i].src.clone(), self.parents[i].dst.clone());
            let meta = fs::metadata(&src).map_err(|e| self.entry_err(&src, &dst, e))?;
            if self.copy_directory_only(&src, &dst, &meta, overwrite)? {
                self.copy_file_info(&meta, &dst)?;
                copy_xattrs(&src, &dst);
            }
            self.record(&src);
            self.parents[i].copied = true;
        }
        Ok(())
    }

    /// A file may replace a non-directory only (fsutil `ensureEmptyFileTarget`).
    fn clear_file_target(&self, src: &Path, target: &Path) -> Result<(), FileOpError> {
        match lstat(target).map_err(|e| self.entry_err(src, target, e))? {
            None => Ok(()),
            Some(t) if t.is_dir() => {
                Err(FileOpError::ReplaceDirWithFile { path: shown(self.dest_root, target) })
            }
            Some(_) => fs::remove_file(target).map_err(|e| self.entry_err(src, target, e)),
        }
    }

    /// Copies a regular file's data, or links it to the copy of a file
    /// already copied that shares its inode.
    fn copy_file(&mut self, src: &Path, target: &Path, meta: &fs::Metadata) -> Result<(), FileOpError> {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.inodes.get(&key) {
                return fs::hard_link(first, target).map_err(|e| self.entry_err(src, target, e));
            }
            self.inodes.insert(key, target.to_path_buf());
        }
        let mut from = fs::File::open(src).map_err(|e| self.entry_err(src, target, e))?;
        let mut to = fs::File::create(target).map_err(|e| self.entry_err(src, target, e))?;
        io::copy(&mut from, &mut to).map_err(|e| self.entry_err(src, target, e))?;
        Ok(())
    }

    /// Devices and fifos are made anew; a socket becomes an empty file, as
    /// fsutil copies it "as a stub".
    fn copy_special(&self, src: &Path, target: &Path, meta: &fs::Metadata) -> Result<(), FileOpError> {
        let ft = meta.file_type();
        let kind = if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFREG
        };
        let perm = Mode::from_bits_truncate(meta.mode() & 0o7777);
        mknod(target, kind, perm, meta.rdev()).map_err(|e| self.entry_err(src, target, e.into()))
    }

    /// Owner, mode and times (fsutil `copyFileInfo`): the owner override or
    /// the source's ids, the mode change applied to the source's mode.
    fn copy_file_info(&self, meta: &fs::Metadata, target: &Path) -> Result<(), FileOpError> {
        let (uid, gid) = self.opts.owner.map_or((meta.uid(), meta.gid()), |o| (o.uid, o.gid));
        chown(self.dest_root, target, uid, gid)?;
        if !meta.file_type().is_symlink() {
            let mode = match &self.opts.mode {
                ModeChange::Keep => meta.mode() & 0o7777,
                ModeChange::Fixed(m) => *m,
                ModeChange::Symbolic(s) => s.apply(meta.mode(), meta.is_dir()),
            };
            chmod(self.dest_root, target, mode)?;
        }
        self.copy_times(meta, target)
    }

    fn copy_times(&self, meta: &fs::Metadata, target: &Path) -> Result<(), FileOpError> {
        let (atime, mtime) = match self.opts.times {
            Some(t) => (t, t),
            None => times_of(meta),
        };
        set_times(self.dest_root, target, atime, mtime)
    }
}

/// Extended attributes of `src` onto `dst`. Like BuildKit, failures are
/// logged, not fatal: the target file system may not take them.
fn copy_xattrs(src: &Path, dst: &Path) {
    let copy_all = || -> io::Result<()> {
        for name in xattr::list(src)? {
            if let Some(value) = xattr::get(src, &name)? {
                xattr::set(dst, &name, &value)?;
            }
        }
        Ok(())
    };
    if let Err(error) = copy_all() {
        tracing::warn!(src = %src.display(), %error, "extended attributes not copied");
    }
}
