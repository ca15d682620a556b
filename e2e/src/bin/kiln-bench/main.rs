//! kilnd and the reference buildkitd side by side, as ratios.
//!
//! Both daemons run on this machine from the test environment (as root with
//! runc, state under /tmp, garbage collection off), are driven by the same
//! client (`buildctl`: LLB on stdin, or the Dockerfile frontend both have
//! built in), alternate run by run, and are reported as medians with
//! min–max, the daemon's CPU seconds, and the ratio kilnd / buildkitd. Some
//! workloads also run kilnd behind `kiln gateway` as a third kind in the same
//! alternation. Run after `eval "$(e2e/env/up)"`:
//!
//!     cargo build --release -p kiln-builder -p kiln-operator -p kiln-e2e --bins
//!     target/release/kiln-bench --runs 5 [--quick] [ROW...]
//!
//! Writes `target/bench/results.json` and prints a Markdown table; progress
//! goes to stderr. `--list` names the rows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod daemons;
mod inputs;
mod scratch;
mod workloads;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_e2e::TestEnv;
use kiln_e2e::llb::image_and_run;
use serde_json::{Value, json};

use daemons::{Build, Daemon, Kind, Sample};
use inputs::{Inputs, Scale};
use scratch::Scratch;
use workloads::{Unit, Workload};

/// Row names of earlier versions, now columns of the row they compared against.
const RENAMED: &[(&str, &str)] =
    &[("context-10k-gateway", "context-10k"), ("context-10k-unchanged-gateway", "context-10k")];

/// What the runs of one workload gave: per kind, per run, one sample per row;
/// and the first failure of each kind (that kind is not run again).
#[derive(Default)]
struct Outcome {
    samples: HashMap<Kind, Vec<Vec<Sample>>>,
    errors: HashMap<Kind, String>,
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}

fn show(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Seconds => format!("{v:.3}"),
        // Per-build growth is often a few KiB (or negative); sizes of a daemon are MiB.
        Unit::Bytes if v.abs() < 1024.0 * 1024.0 => format!("{:.1} KiB", v / 1024.0),
        Unit::Bytes => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
    }
}

fn run_workload(w: &Workload, inputs: &Inputs, scratch: &Scratch, runs: usize) -> Outcome {
    let mut out = Outcome::default();
    for i in 0..runs {
        // Rotate which kind goes first, so none always runs on a warmer machine.
        let mut order = w.kinds.to_vec();
        let first = i % order.len();
        order.rotate_left(first);
        for kind in order {
            if out.errors.contains_key(&kind) {
                continue;
            }
            let fs = scratch.fresh();
            let start = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| (w.run)(inputs, kind)));
            let took = start.elapsed().as_secs_f64();
            match result {
                Ok(samples) => {
                    assert_eq!(samples.len(), w.rows.len(), "{} yielded the wrong number of rows", w.name());
                    let shown: Vec<String> = w
                        .rows
                        .iter()
                        .zip(&samples)
                        .map(|(r, s)| format!("{} {}", r.name, show(r.unit, s.value)))
                        .collect();
                    eprintln!(
                        "[bench] {} run {}/{runs} {}: {} (whole run {took:.1} s)",
                        w.name(),
                        i + 1,
                        kind.label(),
                        shown.join(", ")
                    );
                    out.samples.entry(kind).or_default().push(samples);
                }
                Err(payload) => {
                    let text = panic_text(payload.as_ref());
                    eprintln!(
                        "[bench] {} run {}/{runs} {}: FAILED after {took:.1} s",
                        w.name(),
                        i + 1,
                        kind.label()
                    );
                    out.errors.insert(kind, text);
                }
            }
            if fs.is_some() {
                drop(fs);
                continue;
            }
            // All runs share one file system: the run's state was just
            // deleted, so write back what it left dirty now, so the next run
            // does not pay for this one's writeback. And after a run that
            // made and removed many files, wait out ext4's window in which
            // freshly freed inodes are skipped one by one (without a journal,
            // `recently_deleted`: 5 s once written back); otherwise the next
            // run's file creations slow down many times.
            let _ = std::process::Command::new("sync").status();
            let pause = if took > 5.0 { 5.5 } else { 0.2 };
            std::thread::sleep(Duration::from_secs_f64(pause));
        }
    }
    out
}

/// Median (the upper one for an even count), min, max.
#[derive(Clone, Copy, Debug)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(values: &[f64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some(Stats { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] })
}

/// The stats of row `row` for `kind`: its values and its CPU seconds.
fn row_stats(out: &Outcome, kind: Kind, row: usize) -> (Option<Stats>, Option<f64>, usize) {
    let runs = out.samples.get(&kind).map_or(&[][..], Vec::as_slice);
    let values: Vec<f64> = runs.iter().map(|r| r[row].value).collect();
    let cpu: Vec<f64> = runs.iter().filter_map(|r| r[row].cpu).collect();
    (stats(&values), stats(&cpu).map(|s| s.median), values.len())
}

/// The table line and the JSON record of every row of `w`.
fn report(w: &Workload, out: &Outcome, quick: bool, records: &mut Vec<Value>) {
    for (i, row) in w.rows.iter().enumerate() {
        let (k, kcpu, kruns) = row_stats(out, Kind::Kilnd, i);
        let (b, bcpu, bruns) = row_stats(out, Kind::Buildkitd, i);
        let cell = |s: Option<Stats>, kind: Kind| match s {
            Some(s) => {
                format!("{} ({}–{})", show(row.unit, s.median), show(row.unit, s.min), show(row.unit, s.max))
            }
            None if out.errors.contains_key(&kind) => "FAILED".to_owned(),
            None => "–".to_owned(),
        };
        let cpu_cell = |c: Option<f64>| c.map_or("–".to_owned(), |c| format!("{c:.2}"));
        let ratio = k.zip(b).map(|(k, b)| k.median / b.median);
        let mut record = json!({
            "name": row.name,
            "description": row.description,
            "runs": kruns.min(bruns),
            "ratio": ratio,
        });
        let fields = record.as_object_mut().unwrap();
        let put = |fields: &mut serde_json::Map<String, Value>,
                   prefix: &str,
                   s: Option<Stats>,
                   cpu: Option<f64>| {
            let Some(s) = s else { return };
            match row.unit {
                Unit::Seconds => {
                    fields.insert(format!("{prefix}_median_s"), json!(s.median));
                    fields.insert(format!("{prefix}_min_s"), json!(s.min));
                    fields.insert(format!("{prefix}_max_s"), json!(s.max));
                    if let Some(c) = cpu {
                        fields.insert(format!("{prefix}_cpu_s"), json!(c));
                    }
                }
                Unit::Bytes => {
                    fields.insert(format!("{prefix}_bytes"), json!(s.median));
                    fields.insert(format!("{prefix}_min_bytes"), json!(s.min));
                    fields.insert(format!("{prefix}_max_bytes"), json!(s.max));
                }
            }
        };
        put(fields, "kilnd", k, kcpu);
        put(fields, "buildkitd", b, bcpu);
        let mut gateway_cell = "–".to_owned();
        if w.kinds.contains(&Kind::KilndViaGateway) {
            let (g, gcpu, _) = row_stats(out, Kind::KilndViaGateway, i);
            put(fields, "gateway", g, gcpu);
            let to_direct = g.zip(k).map(|(g, k)| g.median / k.median);
            fields.insert("gateway_ratio_to_direct".into(), json!(to_direct));
            gateway_cell = match (g, to_direct) {
                (Some(_), Some(r)) => format!("{}, ÷ direct {r:.2}", cell(g, Kind::KilndViaGateway)),
                _ => cell(g, Kind::KilndViaGateway),
            };
        }
        for (kind, prefix) in
            [(Kind::Kilnd, "kilnd"), (Kind::Buildkitd, "buildkitd"), (Kind::KilndViaGateway, "gateway")]
        {
            if let Some(e) = out.errors.get(&kind) {
                fields.insert(format!("{prefix}_error"), json!(tail(e, 4000)));
            }
        }
        if quick {
            fields.insert("quick".into(), json!(true));
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {gateway_cell} |",
            row.name,
            cell(k, Kind::Kilnd),
            cell(b, Kind::Buildkitd),
            ratio.map_or("–".to_owned(), |r| format!("{r:.2}")),
            cpu_cell(kcpu),
            cpu_cell(bcpu),
        );
        records.push(record);
    }
}

/// The last `max` bytes of `s` (where buildctl puts the error), on a char boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
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
fn gateway_overhead(runs: usize, inputs: &Inputs, records: &mut Vec<Value>) {
    let cases = [
        ("cold-build", Build::llb(image_and_run(inputs.base(), "echo hi > /hello"))),
        ("context-10k", workloads::local_context(&inputs.context_10k())),
    ];
    println!();
    println!(
        "| gateway overhead | direct median (min–max) s | through the gateway median (min–max) s | ratio |"
    );
    println!("| --- | --- | --- | --- |");
    for (name, build) in cases {
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for i in 0..runs {
            // A fresh kilnd each time, so both paths start equally cold.
            let gw = Daemon::start(Kind::KilndViaGateway);
            let d = Daemon::start(Kind::Kilnd);
            direct.push(build.timed(&d, name).value);
            through.push(build.timed(&gw, name).value);
            eprintln!(
                "[bench] gateway-overhead/{name} run {}/{runs}: direct {:.3}, through {:.3}",
                i + 1,
                direct[i],
                through[i]
            );
        }
        let (d, t) = (stats(&direct).unwrap(), stats(&through).unwrap());
        println!(
            "| {name} | {:.3} ({:.3}–{:.3}) | {:.3} ({:.3}–{:.3}) | {:.2} |",
            d.median,
            d.min,
            d.max,
            t.median,
            t.min,
            t.max,
            t.median / d.median
        );
        records.push(json!({
            "name": format!("gateway-overhead/{name}"),
            "kilnd_direct_median_s": d.median, "gateway_median_s": t.median, "ratio": t.median / d.median, "runs": runs,
        }));
    }

    // Unary latency: 2,000 `Info` calls on one connection each way, in
    // alternating blocks, against the same kilnd.
    let gw = kiln_e2e::Gateway::start_configured(1, daemons::KILND_CONFIG, &[]);
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

const GATEWAY_OVERHEAD: &str = "gateway-overhead";
const ROOTLESS: &str = "rootless";

/// What rootless costs: the same builds on a fresh kilnd and buildkitd run
/// as root and run rootless (as `KILN_ROOTLESS_USER` under `rootlesskit
/// --net=host`, docs/rootless.md), the four alternating. Rootless, neither
/// gives steps a network namespace of their own, and the files of their
/// roots are owned by the user's ids. Wall time only: the daemons are
/// grandchildren of `runuser`, whose CPU is not theirs.
fn rootless_overhead(runs: usize, inputs: &Inputs, records: &mut Vec<Value>) {
    let user = std::env::var("KILN_ROOTLESS_USER").expect("KILN_ROOTLESS_USER (from e2e/env/up)");
    let cases = [
        ("cold-build", Build::llb(image_and_run(inputs.base(), "echo hi > /hello"))),
        ("context-10k", workloads::local_context(&inputs.context_10k())),
    ];
    println!();
    println!(
        "| rootless | kilnd median (min–max) s | kilnd rootless | ÷ kilnd | buildkitd | buildkitd rootless | ÷ buildkitd | rootless kilnd ÷ rootless buildkitd |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let start = |i: usize| -> Vec<Daemon> {
        let mut daemons = vec![
            Daemon::Kilnd(kiln_e2e::Kilnd::start_configured(daemons::KILND_CONFIG, |_| {})),
            Daemon::Kilnd(kiln_e2e::Kilnd::start_rootless_configured(&user, daemons::KILND_CONFIG, |_| {})),
            Daemon::Buildkitd(kiln_e2e::Buildkitd::start()),
            Daemon::Buildkitd(kiln_e2e::Buildkitd::start_rootless(&user)),
        ];
        daemons.rotate_left(i % 4);
        daemons
    };
    for (name, build) in cases {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 4];
        for i in 0..runs {
            // Fresh daemons each run, timed in a rotating order.
            let daemons = start(i);
            for (j, d) in daemons.iter().enumerate() {
                times[(j + i) % 4].push(build.timed(d, name).value);
            }
            eprintln!("[bench] rootless/{name} run {}/{runs}", i + 1);
        }
        let s: Vec<Stats> = times.iter().map(|t| stats(t).unwrap()).collect();
        let cell = |s: &Stats| format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max);
        let (k, kr, b, br) = (&s[0], &s[1], &s[2], &s[3]);
        println!(
            "| {name} | {} | {} | {:.2} | {} | {} | {:.2} | {:.2} |",
            cell(k),
            cell(kr),
            kr.median / k.median,
            cell(b),
            cell(br),
            br.median / b.median,
            kr.median / br.median
        );
        records.push(json!({
            "name": format!("rootless/{name}"), "runs": runs,
            "kilnd_median_s": k.median, "kilnd_rootless_median_s": kr.median,
            "buildkitd_median_s": b.median, "buildkitd_rootless_median_s": br.median,
            "kilnd_rootless_ratio_to_rootful": kr.median / k.median,
            "buildkitd_rootless_ratio_to_rootful": br.median / b.median,
            "ratio": kr.median / br.median,
        }));
    }
}

fn usage() {
    println!("kiln-bench [--runs N] [--quick] [ROW...]: kilnd vs buildkitd, median of N alternating runs");
    println!("  --quick      sizes ÷ 100 (100k files → 1k, 512 MiB → 5 MiB, 50 builds → 5): a smoke check");
    println!("  ROW          runs the workloads that yield these rows (see --list); default: all");
    println!("kiln-bench --list: the rows and what each measures");
    println!("kiln-bench --write-llb FILE: write the image build's LLB, for profiling by hand");
    println!(
        "kiln-bench --write-context-llb FILE: write the LLB of the context workloads (local \"context\")"
    );
}

fn list(all: &[Workload]) {
    for w in all {
        let gateway = if w.kinds.contains(&Kind::KilndViaGateway) { " (+ kilnd via gateway)" } else { "" };
        println!("workload {}{gateway}:", w.name());
        for r in &w.rows {
            println!("  {:<28} {}", r.name, r.description);
        }
    }
    println!("workload {ROOTLESS}:");
    println!(
        "  {:<28} cold-build and context-10k on kilnd and buildkitd, as root and rootless (rootlesskit)",
        ROOTLESS
    );
    println!("workload {GATEWAY_OVERHEAD}:");
    println!(
        "  {:<28} cold-build and context-10k direct vs through the gateway on one kilnd; unary Info latency",
        GATEWAY_OVERHEAD
    );
}

fn main() {
    let mut runs = 5;
    let mut quick = false;
    let mut only: Vec<String> = Vec::new();
    let all = workloads::all();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0).expect("--runs N (N ≥ 1)")
            }
            "--quick" => quick = true,
            "--list" => return list(&all),
            // For profiling one daemon by hand: the LLB of the image build, for `buildctl build < FILE`.
            "--write-llb" => {
                let path = args.next().expect("--write-llb FILE");
                let def = image_and_run(&TestEnv::get().base_image, "echo hi > /hello");
                std::fs::write(&path, prost::Message::encode_to_vec(&def)).unwrap();
                return;
            }
            // The LLB of the context workloads (one `local://context`), for `--local context=DIR`.
            "--write-context-llb" => {
                let path = args.next().expect("--write-context-llb FILE");
                std::fs::write(&path, prost::Message::encode_to_vec(&workloads::context_llb())).unwrap();
                return;
            }
            "--help" | "-h" => return usage(),
            name => {
                let name = RENAMED.iter().find(|(old, _)| *old == name).map_or(name, |(_, new)| new);
                let known = name == GATEWAY_OVERHEAD
                    || name == ROOTLESS
                    || all.iter().any(|w| w.rows.iter().any(|r| r.name == name));
                if !known {
                    eprintln!("unknown row {name}; `kiln-bench --list` names them");
                    std::process::exit(2);
                }
                only.push(name.to_owned());
            }
        }
    }
    let selected: Vec<&Workload> = all
        .iter()
        .filter(|w| only.is_empty() || w.rows.iter().any(|r| only.iter().any(|o| o == r.name)))
        .collect();
    let scratch = Scratch::new();
    eprintln!("[bench] daemon state and client outputs on {}", scratch.describe());
    let inputs = Inputs::new(Scale { quick }, &TestEnv::get().base_image);
    let suite = Instant::now();
    let mut records = Vec::new();
    let mut failed = false;
    if !selected.is_empty() {
        if quick {
            println!("Quick mode: sizes ÷ 100, for a smoke check; the figures are not the benchmark's.\n");
        }
        println!(
            "| row | kilnd median (min–max) | buildkitd median (min–max) | ratio | kilnd CPU s | buildkitd CPU s | kilnd via gateway median (min–max) |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- |");
    }
    for w in selected {
        let start = Instant::now();
        let out = run_workload(w, &inputs, &scratch, runs);
        eprintln!("[bench] workload {} took {:.1} s", w.name(), start.elapsed().as_secs_f64());
        failed |= !out.errors.is_empty();
        report(w, &out, quick, &mut records);
    }
    if only.is_empty() || only.iter().any(|o| o == GATEWAY_OVERHEAD) {
        let start = Instant::now();
        let fs = scratch.fresh();
        gateway_overhead(runs, &inputs, &mut records);
        drop(fs);
        eprintln!("[bench] gateway-overhead took {:.1} s", start.elapsed().as_secs_f64());
    }
    if only.is_empty() || only.iter().any(|o| o == ROOTLESS) {
        let start = Instant::now();
        let fs = scratch.fresh();
        rootless_overhead(runs, &inputs, &mut records);
        drop(fs);
        eprintln!("[bench] rootless took {:.1} s", start.elapsed().as_secs_f64());
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&records).unwrap()).unwrap();
    eprintln!("wrote {} after {:.1} s", out.join("results.json").display(), suite.elapsed().as_secs_f64());
    drop(inputs);
    if failed {
        eprintln!("some builds failed: see the FAILED cells and the *_error fields of results.json");
        std::process::exit(1);
    }
}
