//! kilnd and the reference buildkitd side by side, as ratios.
//!
//! Both daemons run on this machine from the test environment, are driven by
//! the same client (`buildctl` with LLB on stdin), alternate run by run, and
//! are reported as medians with min–max, the daemon's CPU seconds, and the
//! ratio kilnd / buildkitd. Run after `eval "$(e2e/env/up)"`:
//!
//!     cargo run --release -p kiln-e2e --bin kiln-bench -- --runs 5
//!
//! Writes `target/bench/results.json` and prints a Markdown table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_e2e::llb::{Llb, image_and_run};
use kiln_e2e::{Buildkitd, Gateway, Kilnd, TestEnv, buildctl_llb};
use kiln_proto::buildkit::pb;
use serde_json::json;

/// The daemon under test, either kind, started fresh; kilnd may sit behind
/// `kiln gateway` (the path a buildx user of `kiln up` takes).
enum Daemon {
    Kilnd(Kilnd),
    Buildkitd(Buildkitd),
    Gateway(Gateway),
}

impl Daemon {
    fn start(kind: Kind) -> Self {
        match kind {
            Kind::Kilnd => Self::Kilnd(Kilnd::start()),
            Kind::Buildkitd => Self::Buildkitd(Buildkitd::start()),
        }
    }

    /// kilnd behind the gateway, or buildkitd as always.
    fn start_via_gateway(kind: Kind) -> Self {
        match kind {
            Kind::Kilnd => Self::Gateway(Gateway::start(1)),
            Kind::Buildkitd => Self::Buildkitd(Buildkitd::start()),
        }
    }

    fn addr(&self) -> &str {
        match self {
            Self::Kilnd(d) => &d.addr,
            Self::Buildkitd(d) => &d.addr,
            Self::Gateway(g) => &g.addr,
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Kilnd(d) => vec![d.daemon.pid()],
            Self::Buildkitd(d) => vec![d.daemon.pid()],
            Self::Gateway(g) => g.builders.iter().map(|b| b.daemon.pid()).chain([g.daemon.pid()]).collect(),
        }
    }

    /// User + system CPU seconds of the daemon(s) and their reaped children.
    fn cpu(&self) -> f64 {
        self.pids().into_iter().map(cpu_of).sum()
    }
}

fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, then stime, cutime, cstime.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    f.get(11..15).map_or(0.0, |t| t.iter().sum::<f64>()) / 100.0
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Kilnd,
    Buildkitd,
}

/// One timed build: wall seconds and the daemon's CPU seconds.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: f64,
    cpu: f64,
}

fn timed(daemon: &Daemon, def: &pb::Definition, args: &[&str]) -> Sample {
    let cpu = daemon.cpu();
    let start = Instant::now();
    let out = buildctl_llb(daemon.addr(), def, args);
    let wall = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Sample { wall, cpu: daemon.cpu() - cpu }
}

/// `dirs` × `files` small files of deterministic content.
fn make_context(root: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("f{f:03}.txt")), format!("file {d}/{f}\n").repeat(8)).unwrap();
        }
    }
}

struct Workload {
    name: String,
    description: String,
    /// Runs the workload once on a fresh daemon and returns the timed sample.
    run: Box<dyn Fn(Kind) -> Sample>,
}

/// The LLB of a `local://context` source and the `--local` value that
/// points it at `context`.
fn local_build(context: &Path) -> (pb::Definition, String) {
    let mut llb = Llb::default();
    let ctx = llb.local("context");
    (llb.finish(&ctx), format!("context={}", context.display()))
}

/// The two context workloads (first upload, unchanged re-send) on daemons
/// that `start` makes.
fn context_workloads(suffix: &str, how: &str, start: fn(Kind) -> Daemon, context: &Path) -> [Workload; 2] {
    let (def, arg) = local_build(context);
    let (d1, d2, a1, a2) = (def.clone(), def, arg.clone(), arg);
    [
        Workload {
            name: format!("context-10k{suffix}"),
            description: format!("upload of a 10,000-file context, first time{how}"),
            run: Box::new(move |kind| timed(&start(kind), &d1, &["--local", &a1])),
        },
        Workload {
            name: format!("context-10k-unchanged{suffix}"),
            description: format!("the same context sent again (incremental){how}"),
            run: Box::new(move |kind| {
                let d = start(kind);
                timed(&d, &d2, &["--local", &a2]);
                timed(&d, &d2, &["--local", &a2])
            }),
        },
    ]
}

fn workloads(context: PathBuf) -> Vec<Workload> {
    let base = TestEnv::get().base_image.clone();
    let build = image_and_run(&base, "echo hi > /hello");
    let (b1, b2) = (build.clone(), build);
    let mut all = vec![
        Workload {
            name: "cold-build".into(),
            description: "FROM base + RUN, empty cache (pull, unpack, run)".into(),
            run: Box::new(move |kind| timed(&Daemon::start(kind), &b1, &[])),
        },
        Workload {
            name: "cached-rebuild".into(),
            description: "the same build again on the same daemon".into(),
            run: Box::new(move |kind| {
                let d = Daemon::start(kind);
                timed(&d, &b2, &[]);
                timed(&d, &b2, &[])
            }),
        },
    ];
    all.extend(context_workloads("", "", Daemon::start, &context));
    all.extend(context_workloads(
        "-gateway",
        ", kilnd behind kiln gateway",
        Daemon::start_via_gateway,
        &context,
    ));
    all
}

/// The `q` quantile (0..=1) of `v`, sorted in place.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// What the gateway costs: the same build on one kilnd, direct and through
/// `kiln gateway` (the gateway's own kilnd, so the daemon is the same), and
/// the latency of a forwarded unary call (`Control.Info`).
fn gateway_overhead(runs: usize, context: &Path, records: &mut Vec<serde_json::Value>) {
    let base = TestEnv::get().base_image.clone();
    let build = image_and_run(&base, "echo hi > /hello");
    let (local_def, ctx_arg) = local_build(context);
    println!();
    println!(
        "| gateway overhead | direct median (min–max) s | through the gateway median (min–max) s | ratio |"
    );
    println!("| --- | --- | --- | --- |");
    type Case<'a> = (&'static str, &'a pb::Definition, Vec<&'a str>);
    let cases: [Case<'_>; 2] =
        [("cold-build", &build, Vec::new()), ("context-10k", &local_def, vec!["--local", ctx_arg.as_str()])];
    for (name, def, args) in cases {
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            // A fresh kilnd each time, so both paths start equally cold.
            let gw = Gateway::start(1);
            let d = Daemon::Kilnd(Kilnd::start());
            direct.push(timed(&d, def, &args).wall);
            through.push(timed(&Daemon::Gateway(gw), def, &args).wall);
        }
        let range =
            |v: &[f64]| (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
        let ((dmin, dmax), (tmin, tmax)) = (range(&direct), range(&through));
        let (d, t) = (median(&mut direct), median(&mut through));
        println!("| {name} | {d:.3} ({dmin:.3}–{dmax:.3}) | {t:.3} ({tmin:.3}–{tmax:.3}) | {:.2} |", t / d);
        records.push(json!({
            "name": format!("gateway-overhead/{name}"),
            "kilnd_direct_median_s": d, "gateway_median_s": t, "ratio": t / d, "runs": runs,
        }));
    }

    // Unary latency: 2,000 `Info` calls on one connection each way, in
    // alternating blocks, against the same kilnd.
    let gw = Gateway::start(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (direct, through) = runtime.block_on(async {
        use kiln_proto::buildkit::moby::buildkit::v1::InfoRequest;
        let mut direct_client = kiln_e2e::grpc::control(kiln_e2e::grpc::connect(&gw.builders[0].addr).await);
        let mut gateway_client = kiln_e2e::grpc::control(kiln_e2e::grpc::connect(&gw.addr).await);
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for block in 0..20 {
            for _ in 0..100 {
                let (client, out) = if block % 2 == 0 {
                    (&mut direct_client, &mut direct)
                } else {
                    (&mut gateway_client, &mut through)
                };
                let start = Instant::now();
                client.info(InfoRequest {}).await.unwrap();
                out.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        (direct, through)
    });
    let (mut direct, mut through) = (direct, through);
    let (d50, d99) = (quantile(&mut direct, 0.5), quantile(&mut direct, 0.99));
    let (t50, t99) = (quantile(&mut through, 0.5), quantile(&mut through, 0.99));
    println!(
        "| unary Info latency | p50 {d50:.3} ms, p99 {d99:.3} ms | p50 {t50:.3} ms, p99 {t99:.3} ms | +{:.3} ms p50, +{:.3} ms p99 |",
        t50 - d50,
        t99 - d99
    );
    records.push(json!({
        "name": "gateway-overhead/unary-info",
        "direct_p50_ms": d50, "direct_p99_ms": d99, "gateway_p50_ms": t50, "gateway_p99_ms": t99,
        "added_p50_ms": t50 - d50, "added_p99_ms": t99 - d99, "calls": direct.len() + through.len(),
    }));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut runs = 5;
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            // For profiling one daemon by hand: the LLB of the image build, for `buildctl build < FILE`.
            "--write-llb" => {
                let path = args.next().expect("--write-llb FILE");
                let def = image_and_run(&TestEnv::get().base_image, "echo hi > /hello");
                std::fs::write(&path, prost::Message::encode_to_vec(&def)).unwrap();
                return;
            }
            "--help" | "-h" => {
                println!(
                    "kiln-bench [--runs N] [WORKLOAD...]: kilnd vs buildkitd, median of N alternating runs"
                );
                println!("kiln-bench --write-llb FILE: write the image build's LLB, for profiling by hand");
                return;
            }
            name => only.push(name.to_owned()),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    make_context(dir.path(), 100, 100);
    let mut records = Vec::new();
    println!(
        "| workload | kilnd median (min–max) s | buildkitd median (min–max) s | ratio | kilnd CPU s | buildkitd CPU s |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for w in workloads(dir.path().to_owned()) {
        if !only.is_empty() && !only.contains(&w.name) {
            continue;
        }
        let mut samples = [Vec::new(), Vec::new()];
        for i in 0..runs {
            // Alternate which daemon goes first, so neither always runs on a warmer machine.
            let order =
                if i % 2 == 0 { [Kind::Kilnd, Kind::Buildkitd] } else { [Kind::Buildkitd, Kind::Kilnd] };
            for kind in order {
                samples[usize::from(kind == Kind::Buildkitd)].push((w.run)(kind));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let stats = |s: &[Sample]| {
            let mut wall: Vec<f64> = s.iter().map(|x| x.wall).collect();
            let mut cpu: Vec<f64> = s.iter().map(|x| x.cpu).collect();
            let (min, max) =
                (wall.iter().copied().fold(f64::MAX, f64::min), wall.iter().copied().fold(0.0, f64::max));
            (median(&mut wall), min, max, median(&mut cpu))
        };
        let (k, kmin, kmax, kcpu) = stats(&samples[0]);
        let (b, bmin, bmax, bcpu) = stats(&samples[1]);
        let ratio = k / b;
        println!(
            "| {} | {k:.3} ({kmin:.3}–{kmax:.3}) | {b:.3} ({bmin:.3}–{bmax:.3}) | {ratio:.2} | {kcpu:.2} | {bcpu:.2} |",
            w.name
        );
        records.push(json!({
            "name": w.name,
            "description": w.description,
            "kilnd_median_s": k,
            "buildkitd_median_s": b,
            "ratio": ratio,
            "runs": runs,
            "kilnd_min_s": kmin, "kilnd_max_s": kmax,
            "buildkitd_min_s": bmin, "buildkitd_max_s": bmax,
            "kilnd_cpu_s": kcpu, "buildkitd_cpu_s": bcpu,
        }));
    }
    if only.is_empty() || only.iter().any(|o| o == "gateway-overhead") {
        gateway_overhead(runs, dir.path(), &mut records);
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&records).unwrap()).unwrap();
    eprintln!("wrote {}", out.join("results.json").display());
}
