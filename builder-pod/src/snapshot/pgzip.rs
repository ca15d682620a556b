//! gzip on several threads whose output does not depend on how many.
//!
//! The stream is cut into fixed 1 MiB chunks of input. Each chunk is deflated
//! on its own, primed with the 32 KiB of input before it (deflate's whole
//! window, so matches across the cut are still found), and ends with a sync
//! flush, which byte-aligns it so the pieces can simply be concatenated; the
//! last ends the deflate stream. A chunk's bytes depend only on its input and
//! the input before it, so one thread or eight write the same blob, and the
//! blob is one ordinary gzip member that any reader accepts (pigz's layout).
//! BuildKit's default, Go's `compress/gzip`, runs on one core.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, FlushCompress, Status};

/// Input per chunk: large enough that the per-chunk flush costs nothing
/// measurable in size, small enough to spread a 10 MiB layer over the cores.
const CHUNK: usize = 1 << 20;
/// Deflate's window: the most a chunk can refer back into the one before.
const WINDOW: usize = 32 << 10;
/// gzip header: magic, deflate, no flags, mtime 0, then XFL and OS 255
/// (unknown); with mtime 0 the same input always gives the same bytes.
const HEADER: [u8; 8] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0];
const OS_UNKNOWN: u8 = 255;

/// How many threads compress a layer: the CPUs this process may use (the
/// cgroup's quota in a pod), at most 8.
pub(super) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

struct Job {
    dictionary: Vec<u8>,
    data: Vec<u8>,
    last: bool,
    reply: SyncSender<io::Result<Vec<u8>>>,
}

/// Worker threads for one stream; they end when the job sender is dropped.
struct Pool {
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(threads: usize, level: flate2::Compression) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(threads * 2);
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..threads)
            .map(|i| {
                let queue = Arc::clone(&queue);
                std::thread::Builder::new().name(format!("kilnd-gzip-{i}")).spawn(move || {
                    loop {
                        // The lock is held only to take the next job.
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let out = deflate_chunk(level, &job.dictionary, &job.data, job.last);
                        let _ = job.reply.send(out);
                    }
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self { jobs: Some(jobs), workers })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A chunk deflated raw, primed with `dictionary`, ending byte-aligned (a
/// sync flush) or, for the `last`, with the final block.
fn deflate_chunk(
    level: flate2::Compression,
    dictionary: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<Vec<u8>> {
    let mut deflate = Compress::new(level, false);
    if !dictionary.is_empty() {
        deflate.set_dictionary(dictionary).map_err(io::Error::other)?;
    }
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        let consumed = usize::try_from(deflate.total_in()).map_err(io::Error::other)?;
        let status = deflate.compress_vec(&data[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = deflate.total_in() == data.len() as u64;
        // Done when the stream ended, or for a sync flush when everything
        // went in and the flush fit with room to spare.
        if status == Status::StreamEnd || (!last && all_in && out.len() < out.capacity()) {
            return Ok(out);
        }
        out.reserve(64 << 10);
    }
}

/// Compresses what is written into it to `inner` as gzip; see the module.
pub(super) struct GzipWriter<W: Write> {
    inner: W,
    level: flate2::Compression,
    threads: usize,
    pool: Option<Pool>,
    /// The chunk being filled.
    chunk: Vec<u8>,
    /// The last [`WINDOW`] bytes before `chunk`.
    dictionary: Vec<u8>,
    /// Compressed chunks on their way, oldest first.
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    crc: crc32fast::Hasher,
    size: u64,
}

impl<W: Write> GzipWriter<W> {
    /// Writes the gzip header to `inner`; `threads` (at least 1) only
    /// changes how fast, never the bytes.
    pub(super) fn new(mut inner: W, level: u32, threads: usize) -> io::Result<Self> {
        // XFL says "best" for 9 and "fastest" for 1, as gzip(1) writes it.
        let xfl = match level {
            9 => 2,
            1 => 4,
            _ => 0,
        };
        inner.write_all(&HEADER)?;
        inner.write_all(&[xfl, OS_UNKNOWN])?;
        Ok(Self {
            inner,
            level: flate2::Compression::new(level),
            threads: threads.max(1),
            pool: None,
            chunk: Vec::with_capacity(CHUNK),
            dictionary: Vec::new(),
            pending: VecDeque::new(),
            crc: crc32fast::Hasher::new(),
            size: 0,
        })
    }

    /// Hands the current chunk to a worker (or deflates it here when there
    /// is one thread), then writes out whatever is done beyond the backlog.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.chunk, Vec::with_capacity(if last { 0 } else { CHUNK }));
        self.crc.update(&data);
        self.size += data.len() as u64;
        let dictionary = std::mem::take(&mut self.dictionary);
        self.dictionary = data[data.len().saturating_sub(WINDOW)..].to_vec();
        if self.threads == 1 {
            let out = deflate_chunk(self.level, &dictionary, &data, last)?;
            return self.inner.write_all(&out);
        }
        if self.pool.is_none() {
            self.pool = Some(Pool::start(self.threads, self.level)?);
        }
        let (reply, done) = mpsc::sync_channel(1);
        let jobs = self.pool.as_ref().and_then(|p| p.jobs.as_ref());
        jobs.ok_or_else(|| io::Error::other("gzip workers stopped"))?
            .send(Job { dictionary, data, last, reply })
            .map_err(|_| io::Error::other("gzip workers stopped"))?;
        self.pending.push_back(done);
        while self.pending.len() > self.threads * 2 {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(done) = self.pending.pop_front() {
            let out = done.recv().map_err(|_| io::Error::other("a gzip worker stopped"))??;
            self.inner.write_all(&out)?;
        }
        Ok(())
    }

    /// Ends the stream (last chunk, CRC-32 and length) and returns `inner`.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.pool = None;
        let crc = std::mem::take(&mut self.crc).finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        // ISIZE is the length modulo 2^32 (RFC 1952).
        self.inner.write_all(&(self.size as u32).to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK {
            self.submit(false)?;
        }
        Ok(n)
    }

    /// Passes the flush on without cutting a chunk: where the chunks end
    /// must not depend on when a caller flushes.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Mixed data: text, pseudo-random bytes and zero runs, several chunks
    /// long and not a multiple of the chunk size.
    fn mixed(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = 0;
        while out.len() < len {
            match block % 3 {
                0 => {
                    (0..800).for_each(|i| out.extend_from_slice(format!("line {block} {i} ok\n").as_bytes()))
                }
                1 => (0..4096).for_each(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    out.extend_from_slice(&x.to_le_bytes());
                }),
                _ => out.resize(out.len() + 20_000, 0),
            }
            block += 1;
        }
        out.truncate(len);
        out
    }

    fn gzip(data: &[u8], threads: usize, write_size: usize) -> Vec<u8> {
        let mut w = GzipWriter::new(Vec::new(), 6, threads).unwrap();
        for piece in data.chunks(write_size) {
            w.write_all(piece).unwrap();
            w.flush().unwrap();
        }
        w.finish().unwrap()
    }

    fn gunzip(blob: &[u8]) -> Vec<u8> {
        // The single-member decoder: the blob must be one gzip member.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(blob).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn the_bytes_do_not_depend_on_threads_or_write_sizes() {
        let data = mixed(5 * CHUNK + 12_345);
        let one = gzip(&data, 1, 1 << 16);
        for (threads, write_size) in [(2, 1 << 16), (4, 777), (8, 3 * CHUNK)] {
            assert!(gzip(&data, threads, write_size) == one, "{threads} threads, writes of {write_size}");
        }
        assert_eq!(gunzip(&one), data);
        assert!(one.len() < data.len() * 3 / 4, "mixed data compressed to {} of {}", one.len(), data.len());
    }

    #[test]
    fn compresses_about_as_well_as_one_stream() {
        let data = mixed(4 * CHUNK);
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap();
        let parallel = gzip(&data, 2, 1 << 16);
        // The dictionary keeps matches across the cuts: within 1 %.
        assert!(
            parallel.len() <= single.len() + single.len() / 100,
            "{} vs {}",
            parallel.len(),
            single.len()
        );
    }

    #[test]
    fn edge_sizes_round_trip() {
        for len in [0, 1, WINDOW, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK] {
            let data = mixed(len);
            for threads in [1, 3] {
                assert_eq!(gunzip(&gzip(&data, threads, 4096)), data, "{len} bytes, {threads} threads");
            }
        }
    }

    #[test]
    fn the_system_gzip_reads_it() {
        let mut child = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let data = mixed(3 * CHUNK + 5);
        let blob = gzip(&data, 2, 1 << 16);
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&blob).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        assert!(out.stdout == data);
    }
}
