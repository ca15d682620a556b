//! Hand-built layer tars for the tests, including names the `tar` crate's
//! own builder refuses to write (`..`, absolute paths).

use tar::{EntryType, Header};

use super::diff::pax_record;

pub(super) struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub(super) fn new() -> Self {
        Self { builder: tar::Builder::new(Vec::new()) }
    }

    /// `meta` is (mode, uid, gid, mtime).
    fn append(
        &mut self,
        name: &[u8],
        kind: EntryType,
        meta: (u32, u64, u64, u64),
        data: &[u8],
        link: Option<&[u8]>,
    ) {
        let (mode, uid, gid, mtime) = meta;
        let mut header = Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            header.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
    }

    pub(super) fn dir(&mut self, name: &str, mode: u32, uid: u64, gid: u64, mtime: u64) {
        self.append(name.as_bytes(), EntryType::Directory, (mode, uid, gid, mtime), b"", None);
    }

    pub(super) fn file(&mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64, mtime: u64) {
        self.append(name.as_bytes(), EntryType::Regular, (mode, uid, gid, mtime), data, None);
    }

    /// Extended attributes for the entry appended next.
    pub(super) fn xattrs(&mut self, xattrs: &[(&str, &[u8])]) {
        let mut records = Vec::new();
        for (key, value) in xattrs {
            records.extend(pax_record(&format!("SCHILY.xattr.{key}"), value));
        }
        self.append(b"PaxHeaders/x", EntryType::XHeader, (0o644, 0, 0, 0), &records, None);
    }

    pub(super) fn file_raw_name(&mut self, name: &[u8], data: &[u8]) {
        self.append(name, EntryType::Regular, (0o644, 0, 0, 0), data, None);
    }

    pub(super) fn symlink(&mut self, name: &str, target: &str, mtime: u64) {
        self.append(name.as_bytes(), EntryType::Symlink, (0o777, 0, 0, mtime), b"", Some(target.as_bytes()));
    }

    pub(super) fn hardlink(&mut self, name: &str, target: &str) {
        self.append(name.as_bytes(), EntryType::Link, (0o644, 0, 0, 0), b"", Some(target.as_bytes()));
    }

    pub(super) fn device(&mut self, name: &str, kind: EntryType, major: u32, minor: u32, mode: u32) {
        let mut header = Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        header.set_size(0);
        header.set_cksum();
        self.builder.append(&header, &b""[..]).unwrap();
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}
