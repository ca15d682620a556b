//! The benchmark's inputs, generated deterministically on the host once per
//! suite run (the first workload that needs one makes it) into one temporary
//! directory that goes away with the suite.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use tempfile::TempDir;

/// splitmix64: fast, seedable, and the same stream on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

const BLOCK: usize = 64 << 10;

/// Data that compresses like a real layer: 64 KiB blocks cycling through
/// log-like text, random bytes, zero runs and repetitive binary records.
#[derive(Debug)]
pub struct Mixed {
    rng: Rng,
    block: u64,
    seq: u64,
    buf: Vec<u8>,
    pos: usize,
    remaining: u64,
}

impl Mixed {
    /// `len` bytes of mixed data from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        Self { rng: Rng::new(seed), block: 0, seq: 0, buf: Vec::new(), pos: 0, remaining: len }
    }

    fn next_block(&mut self) {
        self.buf.clear();
        match self.block % 4 {
            0 => log_lines(&mut self.rng, &mut self.buf, BLOCK),
            1 => {
                self.buf.resize(BLOCK, 0);
                self.rng.fill(&mut self.buf);
            }
            2 => self.buf.resize(BLOCK, 0),
            _ => {
                while self.buf.len() < BLOCK {
                    self.seq += 1;
                    let s = self.seq;
                    self.buf.extend_from_slice(&s.to_le_bytes());
                    self.buf.extend_from_slice(&(1_700_000_000_000 + s * 250).to_le_bytes());
                    self.buf.extend_from_slice(&((s % 7) as u32).to_le_bytes());
                    self.buf.extend_from_slice(&0x0001_0002_u32.to_le_bytes());
                    self.buf.extend_from_slice(&((s % 1000) as f64 * 0.5).to_le_bytes());
                    let mut name = [0u8; 24];
                    let label = format!("sensor-{:02}", s % 32);
                    name[..label.len()].copy_from_slice(label.as_bytes());
                    self.buf.extend_from_slice(&name);
                    self.buf.extend_from_slice(&(self.rng.below(4096) as u32).to_le_bytes());
                    self.buf.extend_from_slice(&[0u8; 4]);
                }
                self.buf.truncate(BLOCK);
            }
        }
        self.block += 1;
        self.pos = 0;
    }
}

impl Read for Mixed {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.buf.len() {
            self.next_block();
        }
        let n = out
            .len()
            .min(self.buf.len() - self.pos)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Appends log-like lines to `out` until it holds `len` bytes.
fn log_lines(rng: &mut Rng, out: &mut Vec<u8>, len: usize) {
    const LEVELS: [&str; 6] = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
    const SERVICES: [&str; 5] = ["api", "auth", "billing", "search", "worker"];
    const RESOURCES: [&str; 4] = ["items", "users", "orders", "sessions"];
    let start = out.len();
    while out.len() - start < len {
        let t = rng.below(86_400_000);
        let line = format!(
            "2025-03-14T{:02}:{:02}:{:02}.{:03}Z {} [{}] req={:016x} GET /api/v1/{}/{} status={} bytes={} took={}ms\n",
            t / 3_600_000,
            t / 60_000 % 60,
            t / 1000 % 60,
            t % 1000,
            LEVELS[rng.below(6) as usize],
            SERVICES[rng.below(5) as usize],
            rng.next_u64(),
            RESOURCES[rng.below(4) as usize],
            rng.below(100_000),
            [200, 200, 200, 201, 304, 404, 500][rng.below(7) as usize],
            rng.below(65_536),
            rng.below(900),
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(start + len);
}

/// Writes `len` bytes of seeded random data to `path`, 1 MiB at a time.
fn write_random(path: &Path, seed: u64, len: u64) {
    let mut rng = Rng::new(seed);
    let mut file = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap();
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
}

/// `dirs` × `files` small text files of about `size` bytes.
pub fn small_files(root: &Path, dirs: usize, files: usize, size: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("f{f:03}.txt")), small_content(d, f, size)).unwrap();
        }
    }
}

/// The content of small file `f` in directory `d`.
pub fn small_content(d: usize, f: usize, size: usize) -> String {
    let line = format!("file {d}/{f}: the quick brown fox jumps over the lazy dog\n");
    let mut s = line.repeat(size / line.len() + 1);
    s.truncate(size);
    s
}

/// A Dockerfile in a directory of its own (for `--local dockerfile=`).
fn dockerfile(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), text).unwrap();
    dir.to_owned()
}

/// A build context and the directory of its Dockerfile.
#[derive(Debug, Clone)]
pub struct DockerfileInput {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
}

/// Sizes: the real ones, or about a hundredth for a smoke check.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub quick: bool,
}

impl Scale {
    /// `full`, or `full / 100` (at least 1) in quick mode.
    pub fn n(self, full: usize) -> usize {
        if self.quick { (full / 100).max(1) } else { full }
    }

    pub fn bytes(self, full: u64) -> u64 {
        if self.quick { (full / 100).max(1) } else { full }
    }
}

pub const MIB: u64 = 1 << 20;

/// Every input, made on first use.
#[derive(Debug)]
pub struct Inputs {
    dir: TempDir,
    pub scale: Scale,
    base: String,
    context_10k: OnceLock<PathBuf>,
    context_100k: OnceLock<PathBuf>,
    simple: OnceLock<Simple>,
    transfer: OnceLock<DockerfileInput>,
    add_tar_10k: OnceLock<DockerfileInput>,
    add_tar_big: OnceLock<DockerfileInput>,
    export: OnceLock<DockerfileInput>,
    rebuild: OnceLock<DockerfileInput>,
}

/// Where the Dockerfile workloads of workload 1 live.
#[derive(Debug, Clone)]
pub struct Simple {
    pub context: PathBuf,
    pub simple: PathBuf,
    pub multi_stage: PathBuf,
    pub secret: PathBuf,
    pub secret_file: PathBuf,
}

/// The source file the 20-step rebuild's late `COPY` reads, and its two contents.
pub const REBUILD_CHANGED: &str = "late/b.txt";
pub const REBUILD_ORIGINAL: &str = "late b: version 1\n";
pub const REBUILD_EDITED: &str = "late b: version 2, edited\n";

/// The files of the 100k context that the incremental row changes.
pub const CHANGED_100K: [(usize, usize); 2] = [(0, 7), (123, 45)];

impl Inputs {
    pub fn new(scale: Scale, base: &str) -> Self {
        Self {
            // Kept for the whole suite, off the runs' scratch file systems.
            dir: tempfile::Builder::new()
                .prefix("kiln-bench-inputs-")
                .tempdir_in(std::env::temp_dir())
                .unwrap(),
            scale,
            base: base.to_owned(),
            context_10k: OnceLock::new(),
            context_100k: OnceLock::new(),
            simple: OnceLock::new(),
            transfer: OnceLock::new(),
            add_tar_10k: OnceLock::new(),
            add_tar_big: OnceLock::new(),
            export: OnceLock::new(),
            rebuild: OnceLock::new(),
        }
    }

    /// The base image every `FROM` but `scratch` names.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn make<T: Clone>(&self, cell: &OnceLock<T>, what: &str, make: impl FnOnce(&Path) -> T) -> T {
        cell.get_or_init(|| {
            let start = Instant::now();
            let path = self.dir.path().join(what);
            std::fs::create_dir_all(&path).unwrap();
            let made = make(&path);
            // Written back now, not during the first run that reads it (a
            // 512 MiB input's writeback doubled that run's time).
            let _ = std::process::Command::new("sync").status();
            eprintln!("[inputs] generated {what} in {:.1} s", start.elapsed().as_secs_f64());
            made
        })
        .clone()
    }

    /// 100 × 100 files of ~100 bytes (quick: 10 × 10).
    pub fn context_10k(&self) -> PathBuf {
        let side = if self.scale.quick { 10 } else { 100 };
        self.make(&self.context_10k, "context-10k", |p| {
            small_files(p, side, side, 100);
            p.to_owned()
        })
    }

    /// 1,000 × 100 files of ~100 bytes (quick: 10 × 100).
    pub fn context_100k(&self) -> PathBuf {
        let dirs = self.scale.n(100_000) / 100;
        self.make(&self.context_100k, "context-100k", |p| {
            small_files(p, dirs.max(1), 100, 100);
            p.to_owned()
        })
    }

    /// Where `(d, f)` of the 100k context is.
    pub fn context_100k_file(&self, (d, f): (usize, usize)) -> PathBuf {
        let dirs = (self.scale.n(100_000) / 100).max(1);
        self.context_100k().join(format!("d{:04}", d % dirs)).join(format!("f{f:03}.txt"))
    }

    /// Workload 1: one small context, three Dockerfiles and a secret.
    pub fn simple(&self) -> Simple {
        let base = self.base.clone();
        self.make(&self.simple, "simple", |p| {
            let context = p.join("context");
            std::fs::create_dir_all(&context).unwrap();
            std::fs::write(context.join("foo"), "foo: a small source file\n").unwrap();
            let secret_file = p.join("secret.txt");
            std::fs::write(&secret_file, "s3cr3t-value\n").unwrap();
            Simple {
                context,
                simple: dockerfile(
                    &p.join("simple"),
                    &format!("FROM {base}\nCOPY foo /foo\nRUN cp /foo /bar\n"),
                ),
                multi_stage: dockerfile(
                    &p.join("multi-stage"),
                    &format!(
                        "FROM {base} AS build\nRUN echo built > /out && cp /bin/busybox /tool\n\
                         FROM scratch\nCOPY --from=build /out /tool /\n"
                    ),
                ),
                secret: dockerfile(
                    &p.join("secret"),
                    &format!("FROM {base}\nRUN --mount=type=secret,id=s cat /run/secrets/s\n"),
                ),
                secret_file,
            }
        })
    }

    /// 5,000 files of ~120 B plus files of 1, 10, 50 and 100 MB; `COPY . /ctx`.
    pub fn transfer(&self) -> DockerfileInput {
        let (scale, base) = (self.scale, self.base.clone());
        self.make(&self.transfer, "transfer", |p| {
            let context = p.join("context");
            small_files(&context, 50, scale.n(5000) / 50, 120);
            for (i, mb) in [1u64, 10, 50, 100].into_iter().enumerate() {
                write_random(
                    &context.join(format!("blob-{mb}m.bin")),
                    100 + i as u64,
                    scale.bytes(mb * 1_000_000),
                );
            }
            DockerfileInput {
                context,
                dockerfile: dockerfile(&p.join("dockerfile"), &format!("FROM {base}\nCOPY . /ctx\n")),
            }
        })
    }

    /// A tar of 100 directories × 100 files of 1–8 KiB of text; `ADD` it.
    pub fn add_tar_10k(&self) -> DockerfileInput {
        let (side, base) = (if self.scale.quick { 10 } else { 100 }, self.base.clone());
        self.make(&self.add_tar_10k, "add-tar-10k", |p| {
            let context = p.join("context");
            std::fs::create_dir_all(&context).unwrap();
            let file =
                BufWriter::with_capacity(1 << 20, std::fs::File::create(context.join("files.tar")).unwrap());
            let mut tar = tar::Builder::new(file);
            let mut rng = Rng::new(7);
            let mut text = Vec::new();
            for d in 0..side {
                tar.append_data(
                    &mut header(tar::EntryType::Directory, 0o755, 0),
                    format!("d{d:03}/"),
                    std::io::empty(),
                )
                .unwrap();
                for f in 0..side {
                    let size = 1024 + rng.below(7 * 1024) as usize;
                    text.clear();
                    log_lines(&mut rng, &mut text, size);
                    let mut h = header(tar::EntryType::Regular, 0o644, size as u64);
                    tar.append_data(&mut h, format!("d{d:03}/f{f:03}.log"), text.as_slice()).unwrap();
                }
            }
            tar.into_inner().unwrap().flush().unwrap();
            DockerfileInput {
                context,
                dockerfile: dockerfile(&p.join("dockerfile"), &format!("FROM {base}\nADD files.tar /x/\n")),
            }
        })
    }

    /// A tar holding one 512 MiB file of mixed data; `ADD` it.
    pub fn add_tar_big(&self) -> DockerfileInput {
        let (len, base) = (self.scale.bytes(512 * MIB), self.base.clone());
        self.make(&self.add_tar_big, "add-tar-big", |p| {
            let context = p.join("context");
            std::fs::create_dir_all(&context).unwrap();
            let file =
                BufWriter::with_capacity(1 << 20, std::fs::File::create(context.join("big.tar")).unwrap());
            let mut tar = tar::Builder::new(file);
            tar.append_data(&mut header(tar::EntryType::Regular, 0o644, len), "big.bin", Mixed::new(11, len))
                .unwrap();
            tar.into_inner().unwrap().flush().unwrap();
            DockerfileInput {
                context,
                dockerfile: dockerfile(&p.join("dockerfile"), &format!("FROM {base}\nADD big.tar /x/\n")),
            }
        })
    }

    /// One 512 MiB file of mixed data copied onto `scratch`: an image of one big layer.
    pub fn export(&self) -> DockerfileInput {
        let len = self.scale.bytes(512 * MIB);
        self.make(&self.export, "export", |p| {
            let context = p.join("context");
            std::fs::create_dir_all(&context).unwrap();
            let mut file =
                BufWriter::with_capacity(1 << 20, std::fs::File::create(context.join("data.bin")).unwrap());
            std::io::copy(&mut Mixed::new(5, len), &mut file).unwrap();
            file.flush().unwrap();
            DockerfileInput {
                context,
                dockerfile: dockerfile(&p.join("dockerfile"), "FROM scratch\nCOPY data.bin /data.bin\n"),
            }
        })
    }

    /// Three stages, 20 steps besides the `FROM`s; the final stage copies
    /// from the other two. `late/b.txt` is read by the last `COPY`.
    pub fn rebuild(&self) -> DockerfileInput {
        let base = self.base.clone();
        self.make(&self.rebuild, "rebuild-20", |p| {
            let context = p.join("context");
            for (path, text) in [
                ("deps/a.txt", "dependency a\n"),
                ("deps/b.txt", "dependency b\n"),
                ("tools/gen.sh", "echo generated by the tool\ndate -u +%Y > /dev/null\n"),
                ("src/main.c", "int main(void) { return helper(); }\n"),
                ("src/helper.c", "int helper(void) { return 0; }\n"),
                ("config/app.conf", "listen = 8080\n"),
                ("late/a.txt", "late a\n"),
                (REBUILD_CHANGED, REBUILD_ORIGINAL),
            ] {
                let path = context.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            let text = format!(
                "FROM {base} AS deps\n\
                 COPY deps/ /deps/\n\
                 RUN cat /deps/* > /deps.all\n\
                 RUN wc -c /deps.all > /deps.size\n\
                 RUN mkdir -p /out && cp /deps.all /deps.size /out/\n\
                 COPY tools/ /tools/\n\
                 RUN sh /tools/gen.sh > /out/gen.txt\n\
                 FROM {base} AS build\n\
                 COPY src/ /src/\n\
                 RUN cat /src/*.c > /build.all\n\
                 RUN sort /build.all > /build.sorted\n\
                 RUN mkdir -p /out && cp /build.sorted /out/\n\
                 COPY --from=deps /out/ /deps-out/\n\
                 RUN ls /deps-out > /out/deps-list\n\
                 FROM {base}\n\
                 COPY --from=deps /out/ /app/deps/\n\
                 COPY --from=build /out/ /app/build/\n\
                 COPY config/ /app/config/\n\
                 RUN ls -R /app > /app/manifest\n\
                 COPY late/ /app/late/\n\
                 RUN cat /app/late/* > /app/late.all\n\
                 RUN sha256sum /app/late.all > /app/late.sum\n\
                 RUN echo done > /app/done\n"
            );
            DockerfileInput { context, dockerfile: dockerfile(&p.join("dockerfile"), &text) }
        })
    }
}

/// A tar header with fixed owner and time, so the archive is the same every run.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_data_is_deterministic_and_of_the_asked_length() {
        let mut a = Vec::new();
        Mixed::new(1, 300_000).read_to_end(&mut a).unwrap();
        let mut b = Vec::new();
        Mixed::new(1, 300_000).read_to_end(&mut b).unwrap();
        assert_eq!(a.len(), 300_000);
        assert_eq!(a, b);
        // Block 0 is text, block 2 zeros.
        assert!(a[..BLOCK].iter().all(|c| c.is_ascii()));
        assert!(a[2 * BLOCK..3 * BLOCK].iter().all(|&c| c == 0));
        let mut c = Vec::new();
        Mixed::new(2, 300_000).read_to_end(&mut c).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn small_content_has_the_asked_size() {
        assert_eq!(small_content(3, 4, 120).len(), 120);
        assert_ne!(small_content(3, 4, 120), small_content(3, 5, 120));
    }
}
