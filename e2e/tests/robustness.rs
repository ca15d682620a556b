//! kilnd when things go wrong: killed mid-build, stopped mid-build, its
//! client gone mid-build; and clients that send what they should not:
//! oversized messages, out-of-order file streams, ids nobody registered,
//! broken gRPC framing. Each is an error for that call, never a panic, and
//! builds go on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::grpc::{ClientSession, MAX_MESSAGE_SIZE, bridge_for, connect, control, frame, raw_call};
use kiln_e2e::llb::{Llb, image_and_run};
use kiln_e2e::{Kilnd, TestEnv, run, unique};
use kiln_proto::buildkit::fsutil::types::packet::PacketType;
use kiln_proto::buildkit::fsutil::types::{Packet, Stat};
use kiln_proto::buildkit::moby::buildkit::v1::frontend as fe;
use kiln_proto::buildkit::moby::buildkit::v1::{BytesMessage, InfoRequest, SolveRequest, StatusRequest};
use kiln_proto::buildkit::moby::filesync::packet::file_sync_server::{FileSync, FileSyncServer};
use kiln_proto::buildkit::pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::{Code, Streaming};

/// Starts `buildctl build` with the definition on stdin, in the background.
fn start_build(addr: &str, def: &pb::Definition) -> std::process::Child {
    let mut child = TestEnv::get()
        .command("buildctl")
        .args(["--addr", addr, "build", "--progress", "plain"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&def.encode_to_vec()).unwrap();
    child
}

fn build(addr: &str, def: &pb::Definition) -> (bool, String) {
    let out = start_build(addr, def).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stderr}");
    (out.status.success(), stderr)
}

/// The containers kilnd's runtime knows about.
fn containers(kilnd: &Kilnd) -> Vec<String> {
    let root = kilnd.run_dir().join("executor/runc");
    let out = run(Command::new("runc").arg("--root").arg(&root).args(["list", "-q"]));
    out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
}

fn mounts_under(path: &std::path::Path) -> usize {
    let canonical = std::fs::canonicalize(path).unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(canonical.to_str().unwrap())))
        .count()
}

/// Waits until the build's step is running in a container.
fn wait_for_container(kilnd: &Kilnd) {
    let start = Instant::now();
    while containers(kilnd).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the step never started:\n{}",
            kilnd.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_daemon_killed_mid_build_restarts_consistent_and_builds_again() {
    let kilnd = Kilnd::start();
    let state = kilnd.root.path().join("state");
    // A first build leaves cache to keep.
    let (ok, _) = build(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "echo first > /first"));
    assert!(ok);

    let mut client =
        start_build(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "echo started; sleep 60"));
    wait_for_container(&kilnd);
    assert!(mounts_under(&state) > 0, "the running step has its rootfs mounted");
    Command::new("kill").arg("-KILL").arg(kilnd.daemon.pid().to_string()).status().unwrap();
    let _ = client.wait();

    // Restart on the same root: leftovers are cleaned, cache is intact.
    let mut restarted = Kilnd::restart(kilnd);
    assert!(containers(&restarted).is_empty(), "the killed build's container was removed");
    assert_eq!(mounts_under(&state), 0, "the killed build's mounts were removed");
    assert_eq!(std::fs::read_dir(state.join("cache/tmp")).unwrap().count(), 0);
    let (ok, stderr) =
        build(&restarted.addr, &image_and_run(&TestEnv::get().base_image, "echo first > /first"));
    assert!(ok, "{stderr}");
    assert_eq!(stderr.matches("CACHED").count(), 2, "the earlier build's cache survived: {stderr}");
    let (ok, stderr) =
        build(&restarted.addr, &image_and_run(&TestEnv::get().base_image, "echo again; sleep 0.1"));
    assert!(ok, "{stderr}");
    assert!(restarted.daemon.stop(Duration::from_secs(10)));
}

/// The files under `dir` whose bytes hold `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
        } else if meta.is_file()
            && std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn a_secret_is_nowhere_under_the_root_after_a_kill_during_its_step() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let secret = format!("kiln-secret-{}", unique("v"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), &secret).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN --mount=type=secret,id=tok,env=TOKEN --mount=type=secret,id=tok,target=/tok \
             test \"$TOKEN\" = \"$(cat /tok)\" && echo started && sleep 60\n",
            env.base_image
        ),
    )
    .unwrap();
    let buildx = kiln_e2e::Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    let mut client = buildx
        .command()
        .args(["build", "--builder", "kilnd", "--progress", "plain"])
        .arg("--secret")
        .arg(format!("id=tok,src={}", dir.path().join("tok").display()))
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_container(&kilnd);
    // The running step holds the secret in its environment and a file: both
    // on the run directory's tmpfs.
    let run_dir = kilnd.run_dir();
    assert!(
        !files_holding(&run_dir, secret.as_bytes()).is_empty(),
        "the step's bundle is not on the run directory"
    );
    Command::new("kill").arg("-KILL").arg(kilnd.daemon.pid().to_string()).status().unwrap();
    let _ = client.kill();
    let _ = client.wait();

    let root = kilnd.root.path().join("state");
    assert_eq!(
        files_holding(&root, secret.as_bytes()),
        Vec::<String>::new(),
        "the secret is under kilnd's root"
    );
    // The next kilnd on the root clears the run directory it left.
    let restarted = Kilnd::restart(kilnd);
    assert_eq!(files_holding(&restarted.run_dir(), secret.as_bytes()), Vec::<String>::new());
}

#[test]
fn sigterm_lets_the_running_build_finish_then_exits() {
    let mut kilnd = Kilnd::start();
    let client = start_build(
        &kilnd.addr,
        &image_and_run(&TestEnv::get().base_image, "sleep 2; echo finished-after-sigterm"),
    );
    wait_for_container(&kilnd);
    Command::new("kill").arg("-TERM").arg(kilnd.daemon.pid().to_string()).status().unwrap();
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the running build completed: {stderr}");
    assert!(stderr.contains("finished-after-sigterm"), "{stderr}");
    let status = kilnd.daemon.wait_exit(Duration::from_secs(10)).expect("kilnd exits once its build is done");
    assert!(status.success(), "{status}");
    assert!(kilnd.daemon.log_text().contains("drained"), "{}", kilnd.daemon.log_text());
}

#[test]
fn a_client_that_goes_away_cancels_its_step() {
    let kilnd = Kilnd::start();
    let mut client = start_build(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "sleep 60"));
    wait_for_container(&kilnd);
    client.kill().unwrap();
    let _ = client.wait();
    let start = Instant::now();
    while !containers(&kilnd).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "the step kept running after its client left");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The daemon goes on serving.
    let (ok, stderr) = build(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "echo still-serving"));
    assert!(ok, "{stderr}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn assert_no_panic(kilnd: &Kilnd) {
    let log = kilnd.daemon.log_text();
    assert!(!log.contains("panicked"), "kilnd panicked:\n{log}");
}

/// The smallest build: a definition whose result is scratch.
fn scratch() -> pb::Definition {
    pb::Definition { def: vec![pb::Op::default().encode_to_vec()], ..Default::default() }
}

fn solve_request(prefix: &str, definition: pb::Definition, session: &str) -> SolveRequest {
    SolveRequest {
        r#ref: unique(prefix),
        definition: Some(definition),
        session: session.to_owned(),
        ..Default::default()
    }
}

/// `local://context` and nothing else: the build is the transfer.
fn local_context() -> pb::Definition {
    let mut llb = Llb::default();
    let ctx = llb.local("context");
    llb.finish(&ctx)
}

/// Fails the test when `fut` takes longer than `limit`: a hang is a defect too.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| panic!("{what} did not end within {limit:?}"))
}

/// The status of a message over the limit. grpc-go says ResourceExhausted;
/// tonic, which decodes for kilnd, says OutOfRange. Either way the message
/// names the limit.
fn assert_too_large(err: &tonic::Status) {
    assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted), "{err}");
    assert!(err.message().contains(&format!("the limit is: {MAX_MESSAGE_SIZE} bytes")), "{err}");
}

#[test]
fn an_oversized_solve_is_refused_and_the_daemon_serves_on() {
    let kilnd = Kilnd::start();
    runtime().block_on(async {
        let channel = connect(&kilnd.addr).await;
        // One op larger than the limit makes the whole request larger.
        let huge = pb::Definition { def: vec![vec![0u8; MAX_MESSAGE_SIZE + 1024]], ..Default::default() };
        let result = within(
            Duration::from_secs(30),
            "an oversized Solve",
            control(channel.clone()).solve(solve_request("huge", huge, "")),
        )
        .await;
        assert_too_large(&result.unwrap_err());

        // The same connection goes on with a normal build.
        let ok = within(
            Duration::from_secs(30),
            "a build after the oversized one",
            control(channel).solve(solve_request("after-huge", scratch(), "")),
        )
        .await;
        ok.unwrap();
    });
    assert_no_panic(&kilnd);
}

#[test]
fn an_oversized_session_message_ends_that_session_with_an_error() {
    let kilnd = Kilnd::start();
    runtime().block_on(async {
        let channel = connect(&kilnd.addr).await;
        let (tx, rx) = mpsc::channel(1);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert("x-docker-expose-session-uuid", unique("big").parse().unwrap());
        request.metadata_mut().insert("x-docker-expose-session-sharedkey", "".parse().unwrap());
        let mut from_daemon = control(channel.clone()).session(request).await.unwrap().into_inner();
        tx.send(BytesMessage { data: vec![0u8; MAX_MESSAGE_SIZE + 1] }).await.unwrap();
        // The daemon's HTTP/2 preface may come first; then the stream must end in an error.
        let end = within(Duration::from_secs(15), "the oversized session", async {
            loop {
                match from_daemon.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        })
        .await;
        assert_too_large(&end.expect("the session ended without an error"));
        drop(tx);

        // Sessions and builds go on.
        let session =
            ClientSession::open(channel.clone(), &unique("next"), &[], Routes::default()).await.unwrap();
        within(
            Duration::from_secs(30),
            "a build after the oversized session",
            control(channel).solve(solve_request("after-big", scratch(), &session.id)),
        )
        .await
        .unwrap();
    });
    assert_no_panic(&kilnd);
}

/// The client's fsutil sender (docs/protocol.md §4.1), scripted: it sends
/// `stats` in the order given however wrong, serves the files the daemon
/// requests from `files` (by stat index), and once the daemon has ended the
/// call reports every packet it got from it.
#[derive(Debug, Clone)]
struct ScriptedSender {
    stats: Vec<Stat>,
    files: HashMap<u32, Vec<u8>>,
    done: mpsc::UnboundedSender<Vec<Packet>>,
}

fn packet(kind: PacketType, id: u32, data: Vec<u8>) -> Packet {
    Packet { r#type: kind as i32, id, data, stat: None }
}

#[tonic::async_trait]
impl FileSync for ScriptedSender {
    type DiffCopyStream = ReceiverStream<Result<Packet, tonic::Status>>;

    async fn diff_copy(
        &self,
        request: tonic::Request<Streaming<Packet>>,
    ) -> Result<tonic::Response<Self::DiffCopyStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let mut incoming = request.into_inner();
        tokio::spawn(async move {
            // The stat list ends with a stat packet that has no stat.
            for stat in me.stats.iter().cloned().map(Some).chain([None]) {
                let _ = tx.send(Ok(Packet { stat, ..packet(PacketType::PacketStat, 0, vec![]) })).await;
            }
            let mut seen = Vec::new();
            while let Ok(Some(p)) = incoming.message().await {
                seen.push(p.clone());
                match PacketType::try_from(p.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let data = me.files.get(&p.id).cloned().unwrap_or_default();
                        if !data.is_empty() {
                            let _ = tx.send(Ok(packet(PacketType::PacketData, p.id, data))).await;
                        }
                        let _ = tx.send(Ok(packet(PacketType::PacketData, p.id, vec![]))).await;
                    }
                    Ok(PacketType::PacketFin) => {
                        let _ = tx.send(Ok(packet(PacketType::PacketFin, 0, vec![]))).await;
                        break;
                    }
                    // After an error the daemon ends its side, which ends the loop.
                    _ => {}
                }
            }
            let _ = me.done.send(seen);
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    type TarStreamStream = ReceiverStream<Result<Packet, tonic::Status>>;

    async fn tar_stream(
        &self,
        _request: tonic::Request<Streaming<Packet>>,
    ) -> Result<tonic::Response<Self::TarStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("only diffcopy"))
    }
}

const MTIME: i64 = 1_700_000_000_000_000_000;

fn dir(path: &str) -> Stat {
    Stat { path: path.into(), mode: (1 << 31) | 0o755, mod_time: MTIME, ..Default::default() }
}

fn file(path: &str, size: i64) -> Stat {
    Stat { path: path.into(), mode: 0o644, size, mod_time: MTIME, ..Default::default() }
}

/// Builds `local://context` through a fresh session whose sender sends
/// `stats`; returns the build's outcome and what the daemon sent the sender.
async fn build_from_stats(
    channel: &tonic::transport::Channel,
    stats: Vec<Stat>,
    files: HashMap<u32, Vec<u8>>,
) -> (Result<(), tonic::Status>, Vec<Packet>) {
    let (done, mut daemon_sent) = mpsc::unbounded_channel();
    let sender = ScriptedSender { stats, files, done };
    let session = ClientSession::open(
        channel.clone(),
        &unique("fsutil"),
        &["/moby.filesync.v1.FileSync/DiffCopy"],
        Routes::new(FileSyncServer::new(sender)),
    )
    .await
    .unwrap();
    let result = within(
        Duration::from_secs(30),
        "a build of a scripted context",
        control(channel.clone()).solve(solve_request("fsutil", local_context(), &session.id)),
    )
    .await;
    // The Solve may answer before the sender has read the daemon's last packet.
    let packets = within(Duration::from_secs(10), "the daemon's side of DiffCopy", daemon_sent.recv()).await;
    drop(session);
    (result.map(drop), packets.unwrap_or_default())
}

#[test]
fn an_out_of_order_context_stream_fails_the_build_and_the_next_one_works() {
    let kilnd = Kilnd::start();
    runtime().block_on(async {
        let channel = connect(&kilnd.addr).await;
        let cases = [
            (vec![file("b", 1), file("a", 1)], r#""a" after "b""#),
            (vec![file("x/y", 1)], r#""x/y" after """#),
            // `a/x` belongs right after `a`, before its sibling `a.txt`.
            (vec![dir("a"), file("a.txt", 1), file("a/x", 1)], r#""a/x" after "a.txt""#),
            (vec![file("a", 1), file("a", 1)], r#""a" after "a""#),
        ];
        for (stats, names) in cases {
            let (result, daemon_sent) = build_from_stats(&channel, stats.clone(), HashMap::new()).await;
            let err = result.expect_err("an out-of-order stream was accepted");
            assert!(err.message().contains("changes out of order"), "{stats:?}: {err}");
            assert!(err.message().contains(names), "{stats:?}: the entries are named: {err}");
            // The daemon ended the call, so the client's sender is not left waiting
            // (build_from_stats bounds that), and never asked for the bad entry,
            // the last of each case. A PACKET_ERR telling the sender why is best-effort.
            let bad = u32::try_from(stats.len() - 1).unwrap();
            assert!(
                !daemon_sent.iter().any(|p| p.r#type == PacketType::PacketReq as i32 && p.id == bad),
                "{stats:?}: the out-of-order entry was requested: {daemon_sent:?}"
            );
        }

        // A well-ordered stream works right after: ids count every stat.
        let stats = vec![dir("a"), file("a/x", 6), file("a.txt", 0)];
        let files = HashMap::from([(1, b"hello\n".to_vec())]);
        let (result, daemon_sent) = build_from_stats(&channel, stats, files).await;
        result.unwrap();
        let requested: Vec<u32> =
            daemon_sent.iter().filter(|p| p.r#type == PacketType::PacketReq as i32).map(|p| p.id).collect();
        assert!(requested.contains(&1), "the daemon asked for a/x: {daemon_sent:?}");
        assert!(daemon_sent.iter().any(|p| p.r#type == PacketType::PacketFin as i32), "{daemon_sent:?}");
    });
    assert_no_panic(&kilnd);
}

async fn timed<T>(fut: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = fut.await;
    (out, start.elapsed())
}

/// An error that came after waiting about `wait` (kilnd's bounded wait for
/// the id to appear), not at once and not much later.
fn assert_waited(what: &str, took: Duration, wait: Duration) {
    assert!(
        took >= wait.mul_f32(0.9) && took < wait + Duration::from_secs(4),
        "{what} answered after {took:?}; the documented wait is {wait:?}"
    );
}

#[test]
fn unknown_ids_fail_clearly_within_the_documented_waits() {
    let kilnd = Kilnd::start();
    runtime().block_on(async {
        let channel = connect(&kilnd.addr).await;
        let nobody = unique("nobody");

        // Status waits for the Solve that would create the job (docs/protocol.md §3.4: 6 s).
        let mut client = control(channel.clone());
        let request = StatusRequest { r#ref: nobody.clone() };
        let status = timed(async move { client.status(request).await });

        // A local source of a Solve whose session never opens (docs/protocol.md §3.3: 5 s).
        let mut client = control(channel.clone());
        let request = solve_request("no-session", local_context(), &nobody);
        let local = timed(async move { client.solve(request).await });

        // The Dockerfile frontend reading its Dockerfile through that session.
        let mut client = control(channel.clone());
        let request = SolveRequest {
            r#ref: unique("no-session-frontend"),
            frontend: "dockerfile.v0".into(),
            session: nobody.clone(),
            ..Default::default()
        };
        let frontend = timed(async move { client.solve(request).await });

        // Every LLBBridge call with a build id no Solve registered (docs/protocol.md §3.4: 3 s).
        let bridge = || bridge_for(channel.clone(), &nobody);
        type Call<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + 'a>>;
        let calls: Vec<(&str, Call<'_>)> = vec![
            ("Ping", Box::pin(async { bridge().ping(fe::PingRequest {}).await.map(drop) })),
            ("Solve", Box::pin(async { bridge().solve(fe::SolveRequest::default()).await.map(drop) })),
            ("Return", Box::pin(async { bridge().r#return(fe::ReturnRequest::default()).await.map(drop) })),
            ("Inputs", Box::pin(async { bridge().inputs(fe::InputsRequest {}).await.map(drop) })),
            ("Warn", Box::pin(async { bridge().warn(fe::WarnRequest::default()).await.map(drop) })),
            (
                "ReadFile",
                Box::pin(async { bridge().read_file(fe::ReadFileRequest::default()).await.map(drop) }),
            ),
            ("ReadDir", Box::pin(async { bridge().read_dir(fe::ReadDirRequest::default()).await.map(drop) })),
            (
                "StatFile",
                Box::pin(async { bridge().stat_file(fe::StatFileRequest::default()).await.map(drop) }),
            ),
            (
                "Evaluate",
                Box::pin(async { bridge().evaluate(fe::EvaluateRequest::default()).await.map(drop) }),
            ),
            (
                "ResolveImageConfig",
                Box::pin(async {
                    bridge().resolve_image_config(fe::ResolveImageConfigRequest::default()).await.map(drop)
                }),
            ),
            (
                "ResolveSourceMeta",
                Box::pin(async {
                    bridge().resolve_source_meta(fe::ResolveSourceMetaRequest::default()).await.map(drop)
                }),
            ),
        ];
        let bridge_calls = futures::future::join_all(
            calls.into_iter().map(|(name, call)| async move { (name, timed(call).await) }),
        );

        // All waits run at once: the test takes as long as the longest.
        let ((status, status_took), (local, local_took), (frontend, frontend_took), bridge_results) =
            within(Duration::from_secs(20), "the calls with unknown ids", async {
                tokio::join!(status, local, frontend, bridge_calls)
            })
            .await;

        let err = status.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "Status: {err}");
        assert!(err.message().contains(&nobody), "Status names the ref: {err}");
        assert_waited("Status", status_took, Duration::from_secs(6));

        let err = local.unwrap_err();
        assert!(err.message().contains(&format!("no active session {nobody}")), "local source: {err}");
        assert!(err.message().contains("\"context\""), "the local is named: {err}");
        assert_waited("a local source", local_took, Duration::from_secs(5));

        let err = frontend.unwrap_err();
        assert!(err.message().contains(&format!("no active session {nobody}")), "frontend: {err}");
        assert_waited("the Dockerfile frontend", frontend_took, Duration::from_secs(5));

        for (name, (result, took)) in bridge_results {
            let err = result.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "LLBBridge.{name}: {err}");
            assert!(err.message().contains(&nobody), "LLBBridge.{name} names the build: {err}");
            assert_waited(&format!("LLBBridge.{name}"), took, Duration::from_secs(3));
        }

        // No build id at all, and a session without an id, are refused at once.
        let (result, took) = timed(
            kiln_proto::buildkit::moby::buildkit::v1::frontend::llb_bridge_client::LlbBridgeClient::new(
                channel.clone(),
            )
            .ping(fe::PingRequest {}),
        )
        .await;
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains("buildkit-controlapi-buildid"), "{err}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        let (_tx, rx) = mpsc::channel::<BytesMessage>(1);
        let err = control(channel.clone()).session(ReceiverStream::new(rx)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains("x-docker-expose-session-uuid"), "{err}");

        // The daemon still serves.
        control(channel).info(InfoRequest {}).await.unwrap();
    });
    assert_no_panic(&kilnd);
}

#[test]
fn corrupt_grpc_framing_is_an_error_not_a_panic() {
    let kilnd = Kilnd::start();
    runtime().block_on(async {
        let channel = connect(&kilnd.addr).await;
        let solve = "/moby.buildkit.v1.Control/Solve";
        let message = solve_request("framing", scratch(), "").encode_to_vec();
        let len = u32::try_from(message.len()).unwrap();
        let with_length = |declared: u32| {
            let mut body = frame(0, &message);
            body[1..5].copy_from_slice(&declared.to_be_bytes());
            body
        };
        let limit = u32::try_from(MAX_MESSAGE_SIZE).unwrap();
        let call = |body: Vec<u8>| raw_call(channel.clone(), solve, &[], body, Duration::from_secs(15));

        // The raw client itself: well-framed bytes are a build that succeeds.
        let status = call(frame(0, &message)).await.unwrap();
        assert_eq!(status.code(), Code::Ok, "{status:?}");

        let cases: Vec<(&str, Vec<u8>, Code)> = vec![
            ("compressed flag without grpc-encoding", frame(1, &message), Code::Internal),
            ("compressed flag 2", frame(2, &message), Code::Internal),
            ("a length past the end of the body", with_length(len + 100), Code::Internal),
            ("a length over the limit", with_length(limit + 1), Code::OutOfRange),
            ("a header cut short", vec![0, 0, 0], Code::Internal),
            ("bytes that are no SolveRequest", frame(0, &[0xff; 7]), Code::Internal),
        ];
        for (what, body, code) in cases {
            let status = call(body).await;
            let status = status.unwrap_or_else(|e| panic!("{what}: the call ended without a status: {e}"));
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(!status.message().is_empty(), "{what}: the error says what is wrong");
        }

        // The same inside a session's byte stream: the session ends with the error.
        let id = unique("framing-session");
        let status = raw_call(
            channel.clone(),
            "/moby.buildkit.v1.Control/Session",
            &[("x-docker-expose-session-uuid", &id)],
            frame(1, &BytesMessage { data: b"PRI * HTTP/2.0".to_vec() }.encode_to_vec()),
            Duration::from_secs(15),
        )
        .await;
        let status =
            status.unwrap_or_else(|e| panic!("a corrupt session stream ended without a status: {e}"));
        assert_eq!(status.code(), Code::Internal, "{status:?}");

        control(channel).info(InfoRequest {}).await.unwrap();
    });
    assert_no_panic(&kilnd);
}
