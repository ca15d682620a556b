//! The workloads. Each starts its daemon(s) fresh and yields one or more
//! named rows from that one start (a cold build, then a warm rebuild on the
//! same daemon, …), so a row's number always comes with the same history.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_e2e::llb::{Llb, image_and_run};
use kiln_e2e::{TestEnv, unique};
use kiln_proto::buildkit::pb;

use crate::daemons::{Build, Daemon, Kind, Sample, spawn_bare};
use crate::inputs::{CHANGED_100K, Inputs, REBUILD_CHANGED, REBUILD_EDITED, REBUILD_ORIGINAL, small_content};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
}

#[derive(Debug)]
pub struct Row {
    pub name: &'static str,
    pub description: &'static str,
    pub unit: Unit,
}

const fn secs(name: &'static str, description: &'static str) -> Row {
    Row { name, description, unit: Unit::Seconds }
}

const fn bytes(name: &'static str, description: &'static str) -> Row {
    Row { name, description, unit: Unit::Bytes }
}

const BOTH: &[Kind] = &[Kind::Kilnd, Kind::Buildkitd];
/// The gateway is a third kind in the same alternation, so buildkitd is measured once.
const WITH_GATEWAY: &[Kind] = &[Kind::Kilnd, Kind::Buildkitd, Kind::KilndViaGateway];

pub struct Workload {
    /// The rows one run yields, in the order `run` returns their samples.
    pub rows: Vec<Row>,
    pub kinds: &'static [Kind],
    pub run: fn(&Inputs, Kind) -> Vec<Sample>,
}

impl Workload {
    pub fn name(&self) -> &'static str {
        self.rows[0].name
    }
}

/// Every workload, cheap ones first.
pub fn all() -> Vec<Workload> {
    vec![
        Workload {
            rows: vec![
                secs("cold-build", "FROM base + RUN (LLB), empty cache: resolve, pull, unpack, run"),
                secs("cached-rebuild", "the same build again on the same daemon: everything cached"),
            ],
            kinds: BOTH,
            run: cold_and_cached,
        },
        Workload {
            rows: vec![secs("simple", "Dockerfile: FROM base, COPY foo, RUN cp; empty cache")],
            kinds: BOTH,
            run: simple,
        },
        Workload {
            rows: vec![secs(
                "multi-stage",
                "Dockerfile: busybox stage, then FROM scratch + COPY --from; empty cache",
            )],
            kinds: BOTH,
            run: multi_stage,
        },
        Workload {
            rows: vec![secs("secret-mount", "Dockerfile: RUN --mount=type=secret,id=s cat /run/secrets/s")],
            kinds: BOTH,
            run: secret_mount,
        },
        Workload {
            rows: vec![
                secs("context-10k", "local:// source of 10,000 files of ~100 B (LLB), first transfer"),
                secs(
                    "context-10k-unchanged",
                    "the same context sent again to the same daemon: nothing changed",
                ),
            ],
            kinds: WITH_GATEWAY,
            run: context_10k,
        },
        Workload {
            rows: vec![
                secs(
                    "rebuild-20-step-noop",
                    "cached rebuild of a 3-stage, 20-step Dockerfile (first build untimed)",
                ),
                secs("rebuild-20-step-one-change", "the same after editing a file a late COPY reads"),
            ],
            kinds: BOTH,
            run: rebuild_20_step,
        },
        Workload {
            rows: vec![
                secs(
                    "parallel-16",
                    "16 distinct FROM base + RUN builds at once (base pulled by an untimed build)",
                ),
                secs("parallel-32", "then 32 more at once on the same daemon"),
            ],
            kinds: BOTH,
            run: parallel,
        },
        Workload {
            rows: vec![
                secs("startup", "spawn to the first answered ListWorkers (polled every 5 ms), fresh state"),
                bytes("idle-rss", "VmRSS of the daemon 2 s after startup"),
                bytes("retained-rss-per-build", "(VmRSS after 50 distinct builds − after the first) / 49"),
            ],
            kinds: BOTH,
            run: footprint,
        },
        Workload {
            rows: vec![
                secs(
                    "transfer-160m",
                    "Dockerfile COPY . /ctx of 5,000 files of ~120 B + 1, 10, 50, 100 MB files",
                ),
                secs("transfer-160m-warm", "the same build again on the same daemon, nothing changed"),
            ],
            kinds: WITH_GATEWAY,
            run: transfer,
        },
        Workload {
            rows: vec![secs("add-tar-10k", "Dockerfile ADD of a tar of 100 dirs × 100 files of 1–8 KiB")],
            kinds: BOTH,
            run: add_tar_10k,
        },
        Workload {
            rows: vec![
                secs("context-100k", "local:// source of 100,000 files of ~100 B (LLB), first transfer"),
                secs("context-100k-incremental", "the same context with 2 files changed, same daemon"),
                secs(
                    "export-local-100k",
                    "then the same context exported with --output type=local to a fresh dir",
                ),
            ],
            kinds: WITH_GATEWAY,
            run: context_100k,
        },
        Workload {
            rows: vec![secs("add-tar-512m", "Dockerfile ADD of a tar holding one 512 MiB file")],
            kinds: BOTH,
            run: add_tar_big,
        },
        Workload {
            rows: vec![
                secs(
                    "export-push-gzip",
                    "export + push (gzip) of a cached image with one 512 MiB layer of mixed data, fresh repository",
                ),
                bytes(
                    "peak-rss-export",
                    "VmHWM of the daemon after the gzip export (warm-up build included)",
                ),
            ],
            kinds: BOTH,
            run: export_gzip,
        },
        Workload {
            rows: vec![secs("export-push-zstd", "export-push-gzip with compression=zstd")],
            kinds: BOTH,
            run: export_zstd,
        },
    ]
}

fn cold_and_cached(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let d = Daemon::start(kind);
    let build = Build::llb(image_and_run(inputs.base(), "echo hi > /hello"));
    vec![build.timed(&d, "cold-build"), build.timed(&d, "cached-rebuild")]
}

fn simple(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let s = inputs.simple();
    let d = Daemon::start(kind);
    vec![Build::dockerfile(&s.context, &s.simple).timed(&d, "simple")]
}

fn multi_stage(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let s = inputs.simple();
    let d = Daemon::start(kind);
    vec![Build::dockerfile(&s.context, &s.multi_stage).timed(&d, "multi-stage")]
}

fn secret_mount(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let s = inputs.simple();
    let d = Daemon::start(kind);
    let build = Build::dockerfile(&s.context, &s.secret)
        .with("--secret", format!("id=s,src={}", s.secret_file.display()));
    vec![build.timed(&d, "secret-mount")]
}

/// The LLB of a `local://context` source on `dir`: the transfer and nothing else.
pub fn local_context(dir: &Path) -> Build {
    Build::llb(context_llb()).with("--local", format!("context={}", dir.display()))
}

/// The context workloads' LLB: the local `context`, nothing done with it.
pub fn context_llb() -> pb::Definition {
    let mut llb = Llb::default();
    let ctx = llb.local("context");
    llb.finish(&ctx)
}

fn context_10k(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let build = local_context(&inputs.context_10k());
    let d = Daemon::start(kind);
    vec![build.timed(&d, "context-10k"), build.timed(&d, "context-10k-unchanged")]
}

fn context_100k(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let dir = inputs.context_100k();
    // Every run starts from the same files (the previous run edited two).
    let size = 100;
    for (d, f) in CHANGED_100K {
        std::fs::write(inputs.context_100k_file((d, f)), small_content(d, f, size)).unwrap();
    }
    let build = local_context(&dir);
    let d = Daemon::start(kind);
    let first = build.timed(&d, "context-100k");
    for (d, f) in CHANGED_100K {
        std::fs::write(inputs.context_100k_file((d, f)), format!("edited {d}/{f}\n")).unwrap();
    }
    let incremental = build.timed(&d, "context-100k-incremental");
    let dest = tempfile::Builder::new().prefix("kiln-bench-export-").tempdir().unwrap();
    let export = build
        .with("--output", format!("type=local,dest={}", dest.path().display()))
        .timed(&d, "export-local-100k");
    let files = walkdir_count(dest.path());
    assert_eq!(files, inputs.scale.n(100_000), "export-local-100k wrote {files} files");
    vec![first, incremental, export]
}

/// Regular files under `dir`.
fn walkdir_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() { walkdir_count(&e.path()) } else { 1 }
        })
        .sum()
}

fn transfer(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let t = inputs.transfer();
    let build = Build::dockerfile(&t.context, &t.dockerfile);
    let d = Daemon::start(kind);
    vec![build.timed(&d, "transfer-160m"), build.timed(&d, "transfer-160m-warm")]
}

fn add_tar_10k(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let t = inputs.add_tar_10k();
    let d = Daemon::start(kind);
    vec![Build::dockerfile(&t.context, &t.dockerfile).timed(&d, "add-tar-10k")]
}

fn add_tar_big(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let t = inputs.add_tar_big();
    let d = Daemon::start(kind);
    vec![Build::dockerfile(&t.context, &t.dockerfile).timed(&d, "add-tar-512m")]
}

/// Times only the export: an untimed build without an output transfers the
/// context and runs the COPY, then the timed one (its solve cached) exports
/// and pushes to a repository nobody pushed to, so every blob is uploaded.
fn export_push(inputs: &Inputs, kind: Kind, compression: &str) -> (Daemon, Sample) {
    let e = inputs.export();
    let build = Build::dockerfile(&e.context, &e.dockerfile);
    let d = Daemon::start(kind);
    build.untimed(&d, "export warm-up (no output)");
    let name = format!("{}/bench/{}", TestEnv::get().registry, unique(&format!("export-{compression}")));
    let output = format!("type=image,name={name},push=true,compression={compression}");
    let sample = build.with("--output", output).timed(&d, &format!("export-push-{compression}"));
    (d, sample)
}

fn export_gzip(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let (d, sample) = export_push(inputs, kind, "gzip");
    vec![sample, Sample::bytes(d.memory("VmHWM"))]
}

fn export_zstd(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    vec![export_push(inputs, kind, "zstd").1]
}

fn rebuild_20_step(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let r = inputs.rebuild();
    let changed = r.context.join(REBUILD_CHANGED);
    std::fs::write(&changed, REBUILD_ORIGINAL).unwrap();
    let build = Build::dockerfile(&r.context, &r.dockerfile);
    let d = Daemon::start(kind);
    build.untimed(&d, "rebuild-20-step first build");
    let noop = build.timed(&d, "rebuild-20-step-noop");
    std::fs::write(&changed, REBUILD_EDITED).unwrap();
    let one_change = build.timed(&d, "rebuild-20-step-one-change");
    vec![noop, one_change]
}

/// `n` distinct builds at once; a failure panics with the failing build's output.
fn batch(d: &Daemon, base: &str, first: usize, n: usize) -> Sample {
    let builds: Vec<Build> =
        (first..first + n).map(|i| Build::llb(image_and_run(base, &format!("echo {i} > /out")))).collect();
    let cpu = d.cpu();
    let start = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = builds.iter().map(|b| s.spawn(|| b.run(d.addr()))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first_failure) = failed.first() {
        panic!("{} of {n} concurrent builds failed; the first:\n{first_failure}", failed.len());
    }
    Sample { value: wall, cpu: Some(d.cpu() - cpu) }
}

fn parallel(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let d = Daemon::start(kind);
    Build::llb(image_and_run(inputs.base(), "echo warm > /out")).untimed(&d, "parallel warm-up");
    vec![batch(&d, inputs.base(), 0, 16), batch(&d, inputs.base(), 16, 32)]
}

fn footprint(inputs: &Inputs, kind: Kind) -> Vec<Sample> {
    let (d, startup) = spawn_bare(kind);
    std::thread::sleep(Duration::from_secs(2));
    let idle = d.memory("VmRSS");
    let builds = if inputs.scale.quick { 5 } else { 50 };
    let mut after_first = 0.0;
    for i in 0..builds {
        Build::llb(image_and_run(inputs.base(), &format!("echo {i} > /out"))).untimed(&d, "footprint build");
        if i == 0 {
            after_first = d.memory("VmRSS");
        }
    }
    let retained = (d.memory("VmRSS") - after_first) / (builds - 1) as f64;
    vec![Sample { value: startup, cpu: None }, Sample::bytes(idle), Sample::bytes(retained)]
}
