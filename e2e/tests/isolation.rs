//! What a RUN step may do, as a Dockerfile sees it: its network (egress to a
//! server on this machine by a name given with `--add-host`, on kilnd as on
//! the reference buildkitd; DNS from the host's resolver; `--network=none`
//! without it; steps kept away from each other and from kilnd's API), the
//! entitlements daemon and client must both grant, and the default seccomp
//! profile. Nothing here reaches beyond this machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kiln_e2e::{Buildkitd, Buildx, Kilnd, TestEnv, free_port, run, run_unchecked, unique};

/// The address this machine's default route leaves from: a host address
/// that is not loopback. Connecting a UDP socket sends nothing.
fn machine_address() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect("192.0.2.254:9").or_else(|_| socket.connect("10.255.255.254:9")).unwrap();
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "no non-loopback address on this machine");
    ip
}

/// What the file server has been told, by path.
#[derive(Default)]
struct Board {
    notes: Mutex<HashMap<String, String>>,
    changed: Condvar,
}

impl Board {
    fn post(&self, key: &str, value: &str) {
        self.notes.lock().unwrap().insert(key.to_owned(), value.to_owned());
        self.changed.notify_all();
    }

    /// The note under `key`, waiting up to 30 s for it.
    fn wait(&self, key: &str) -> Option<String> {
        let notes = self.notes.lock().unwrap();
        let (notes, _) = self
            .changed
            .wait_timeout_while(notes, Duration::from_secs(30), |n| !n.contains_key(key))
            .unwrap();
        notes.get(key).cloned()
    }
}

/// A small HTTP server on this machine's non-loopback address. `GET
/// /hello.txt` serves a file; `GET /post/KEY/VALUE` leaves a note;
/// `GET /wait/KEY` answers with the note once there is one; `GET /has/KEY`
/// answers 404 until there is one.
struct FileServer {
    ip: IpAddr,
    port: u16,
}

impl FileServer {
    const HELLO: &'static str = "hello from the host\n";

    fn start() -> Self {
        let ip = machine_address();
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let board = Arc::new(Board::default());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let board = Arc::clone(&board);
                std::thread::spawn(move || serve(conn, &board));
            }
        });
        Self { ip, port }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}/{path}", self.port)
    }
}

fn serve(mut conn: TcpStream, board: &Board) {
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    let body = match parts.as_slice() {
        ["hello.txt"] => Some(FileServer::HELLO.to_owned()),
        ["post", key, value] => {
            board.post(key, value);
            Some("ok\n".to_owned())
        }
        ["wait", key] => board.wait(key).map(|v| format!("{v}\n")),
        ["has", key] => board.notes.lock().unwrap().get(*key).map(|v| format!("{v}\n")),
        _ => None,
    };
    let response = match body {
        Some(body) => format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
        None => "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
    };
    let _ = conn.write_all(response.as_bytes());
}

/// A buildx builder on `addr` named `name`, and a build into a local directory.
fn build(buildx: &Buildx, name: &str, dockerfile: &str, args: &[&str]) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    run(buildx
        .command()
        .args(["build", "--builder", name, "--progress", "plain", "-o", &dest])
        .args(args)
        .arg(ctx.path()));
    out
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn a_run_step_downloads_from_a_host_by_an_added_name_on_kilnd_as_on_buildkitd() {
    let env = TestEnv::get();
    let server = FileServer::start();
    let kilnd = Kilnd::start();
    let buildkitd = Buildkitd::start();
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    buildx.create_remote("buildkitd", &buildkitd.addr);

    let url = server.url("files.kiln.test", "hello.txt");
    let dockerfile = format!(
        "FROM {base}\n\
         ARG NONCE\n\
         RUN wget -q -O /fetched {url}\n\
         RUN --network=none wget -q -T 2 -O /offline {url} 2>/dev/null || echo 'no network' > /offline\n",
        base = env.base_image,
    );
    let add_host = format!("files.kiln.test:{}", server.ip);
    for daemon in ["kilnd", "buildkitd"] {
        let nonce = format!("NONCE={}", unique("net"));
        let out = build(&buildx, daemon, &dockerfile, &["--add-host", &add_host, "--build-arg", &nonce]);
        assert_eq!(read(out.path(), "fetched"), FileServer::HELLO, "{daemon}");
        assert_eq!(
            read(out.path(), "offline"),
            "no network\n",
            "{daemon}: --network=none reached the server"
        );
    }
}

#[test]
fn dns_in_a_step_answers_when_the_hosts_resolver_does() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);

    // NXDOMAIN is an answer: it proves the query reached a resolver and came
    // back, without any name needing to exist beyond this machine.
    let answered = |output: &str| output.contains("can't find kiln-probe.invalid");
    let host = run_unchecked(std::process::Command::new("busybox").args(["nslookup", "kiln-probe.invalid"]));
    let host_answered = answered(&String::from_utf8_lossy(&host.stdout));

    let dockerfile = format!(
        "FROM {}\nARG NONCE\nRUN nslookup kiln-probe.invalid > /dns 2>&1; cat /etc/resolv.conf >> /dns; true\n",
        env.base_image
    );
    let nonce = format!("NONCE={}", unique("dns"));
    let out = build(&buildx, "kilnd", &dockerfile, &["--build-arg", &nonce]);
    let step = read(out.path(), "dns");
    assert_eq!(
        answered(&step),
        host_answered,
        "the host's resolver answered: {host_answered}; the step saw:\n{step}"
    );
}

#[test]
fn steps_cannot_reach_each_other_or_kilnds_api() {
    let env = TestEnv::get();
    let server = FileServer::start();
    // kilnd also serves its API on every address, as in a pod.
    let api_port = free_port();
    let kilnd = Kilnd::start_with(|cmd| {
        cmd.arg("--addr").arg(format!("tcp://0.0.0.0:{api_port}"));
    });
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    let host = server.ip;
    let board = |path: &str| server.url(&host.to_string(), path);

    // A listens and says where; B looks A up and tries to connect, then
    // tries kilnd's API port on the host; both report to the board.
    let listener = format!(
        "FROM {base}\nARG NONCE\n\
         RUN ip=$(ip -o -4 addr show eth0 | awk '{{print $4}}' | cut -d/ -f1); \
             nc -l -p 8080 > /got & pid=$!; \
             wget -q -O /dev/null {announce}$ip; \
             for i in $(seq 150); do wget -q -O /dev/null {done} && break; sleep 0.2; done; kill $pid; true\n",
        base = env.base_image,
        announce = board("post/listener/"),
        done = board("has/tried"),
    );
    let prober = format!(
        "FROM {base}\nARG NONCE\n\
         RUN peer=$(wget -q -O- {wait}); \
             (echo hello | nc -w 2 $peer 8080 && echo reached || echo unreachable) > /peer; \
             (echo ping | nc -w 2 {host} {api_port} && echo reached || echo refused) > /api; \
             wget -q -O- {hello} > /control; \
             wget -q -O /dev/null {tried}\n",
        base = env.base_image,
        wait = board("wait/listener"),
        hello = board("hello.txt"),
        tried = board("post/tried/yes"),
    );
    let nonce = format!("NONCE={}", unique("peers"));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| build(&buildx, "kilnd", &listener, &["--build-arg", &nonce]));
        let b = s.spawn(|| build(&buildx, "kilnd", &prober, &["--build-arg", &nonce]));
        (a.join().unwrap(), b.join().unwrap())
    });
    // B reached the host (so its commands work) but neither A nor kilnd.
    assert_eq!(read(b.path(), "control"), FileServer::HELLO);
    assert_eq!(read(b.path(), "peer"), "unreachable\n");
    assert_eq!(read(b.path(), "api"), "refused\n");
    assert_eq!(read(a.path(), "got"), "", "the listening step received data from the other step");
    let log = kilnd.daemon.log_text();
    assert!(log.contains("step network ready"), "{log}");
}

/// A Dockerfile whose one step needs `entitlement`, and what it wrote.
fn entitled_step(entitlement: &str, base: &str, port: u16) -> String {
    match entitlement {
        // Privileged: every capability, and it may mount.
        "security.insecure" => format!(
            "FROM {base}\nRUN --security=insecure grep CapEff /proc/self/status > /out && \
             mkdir -p /m && mount -t tmpfs none /m && echo mounted >> /out\n"
        ),
        // kilnd's own network: its loopback is the host's.
        _ => format!("FROM {base}\nRUN --network=host wget -q -O /out http://127.0.0.1:{port}/hello.txt\n"),
    }
}

/// A server of files on the host's loopback only.
fn loopback_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let board = Arc::new(Board::default());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            serve(conn, &board);
        }
    });
    port
}

/// A build on `kilnd` through a builder of its own; whether it worked, its
/// progress output and what it exported.
fn try_build(kilnd: &Kilnd, dockerfile: &str, args: &[&str]) -> (bool, String, tempfile::TempDir) {
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let result = run_unchecked(
        buildx
            .command()
            .args(["build", "--builder", "kilnd", "--progress", "plain", "-o", &dest])
            .args(args)
            .arg(ctx.path()),
    );
    (result.status.success(), String::from_utf8_lossy(&result.stderr).into_owned(), out)
}

#[test]
fn entitlements_need_the_daemon_and_the_client_even_when_every_step_is_cached() {
    let env = TestEnv::get();
    let port = loopback_server();
    for entitlement in ["security.insecure", "network.host"] {
        let dockerfile = entitled_step(entitlement, &env.base_image, port);
        let allow = ["--allow", entitlement];

        // A daemon that allows nothing refuses the build before it starts.
        let kilnd = Kilnd::start();
        let (ok, stderr, _) = try_build(&kilnd, &dockerfile, &allow);
        assert!(!ok, "{entitlement} granted by a daemon that does not allow it:\n{stderr}");
        let refusal =
            format!("granting entitlement {entitlement} is not allowed by build daemon configuration");
        assert!(
            stderr.contains(&refusal)
                && stderr.contains(&format!("--allow-insecure-entitlement {entitlement}")),
            "{stderr}"
        );

        // Allowed by the daemon and asked for by the client: the step gets it.
        let kilnd = Kilnd::restart_with(kilnd, |cmd| {
            cmd.args(["--allow-insecure-entitlement", entitlement]);
        });
        let (ok, stderr, out) = try_build(&kilnd, &dockerfile, &allow);
        assert!(ok, "{entitlement}: {stderr}");
        let wrote = read(out.path(), "out");
        if entitlement == "security.insecure" {
            let own = std::fs::read_to_string("/proc/self/status").unwrap();
            let caps = own.lines().find(|l| l.starts_with("CapEff:")).unwrap().to_owned();
            assert_eq!(wrote, format!("{caps}\nmounted\n"), "the insecure step is not privileged");
        } else {
            assert_eq!(wrote, FileServer::HELLO, "the host-network step did not reach the host's loopback");
        }

        // The same step, now cached, without the client asking: refused.
        let (ok, stderr, _) = try_build(&kilnd, &dockerfile, &[]);
        assert!(!ok, "a cached {entitlement} step ran without --allow:\n{stderr}");
        assert!(
            stderr.contains(&format!("{entitlement} is not allowed"))
                && stderr.contains(&format!("--allow {entitlement}")),
            "{stderr}"
        );

        // Cached and asked for, on a daemon that no longer allows it: refused.
        let kilnd = Kilnd::restart(kilnd);
        let (ok, stderr, _) = try_build(&kilnd, &dockerfile, &allow);
        assert!(!ok, "a cached {entitlement} step ran on a daemon that no longer allows it:\n{stderr}");
        assert!(stderr.contains(&refusal), "{stderr}");
    }
}

#[test]
fn a_syscall_the_default_profile_blocks_fails_on_kilnd_as_on_buildkitd() {
    let env = TestEnv::get();
    let allow = ["--allow-insecure-entitlement", "security.insecure"];
    let kilnd = Kilnd::start_with(|cmd| {
        cmd.args(allow);
    });
    let buildkitd = Buildkitd::start_with(&allow);
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    buildx.create_remote("buildkitd", &buildkitd.addr);
    // unshare(2) for a user namespace needs no capability; the default
    // profile allows it only with CAP_SYS_ADMIN. Its errno shows in the
    // message busybox prints.
    let dockerfile = format!(
        "FROM {}\nARG NONCE\n\
         RUN unshare -U true 2> /sandboxed; echo $? >> /sandboxed\n\
         RUN --security=insecure unshare -U true 2> /insecure; echo $? >> /insecure\n",
        env.base_image
    );
    let mut seen = Vec::new();
    for daemon in ["kilnd", "buildkitd"] {
        let nonce = format!("NONCE={}", unique("seccomp"));
        let out =
            build(&buildx, daemon, &dockerfile, &["--allow", "security.insecure", "--build-arg", &nonce]);
        let (sandboxed, insecure) = (read(out.path(), "sandboxed"), read(out.path(), "insecure"));
        assert!(
            sandboxed.contains("Operation not permitted") && sandboxed.ends_with("1\n"),
            "{daemon}: {sandboxed}"
        );
        assert_eq!(insecure, "0\n", "{daemon}: the insecure step was filtered");
        seen.push(sandboxed);
    }
    assert_eq!(seen[0], seen[1], "kilnd and buildkitd refuse the call differently");
}
