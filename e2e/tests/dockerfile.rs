//! Dockerfile builds through real buildx on kilnd: caching as a user sees
//! it, incremental context transfer, secrets, and pushes with credentials.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kiln_e2e::{Buildx, Kilnd, Registry, TestEnv, progress_steps, repo_and_tag, run_unchecked, unique};

/// A kilnd with a buildx builder pointing at it.
struct Setup {
    kilnd: Kilnd,
    buildx: Buildx,
}

impl Setup {
    fn new() -> Self {
        let kilnd = Kilnd::start();
        let buildx = Buildx::new();
        buildx.create_remote("kilnd", &kilnd.addr);
        Self { kilnd, buildx }
    }

    /// `buildx build --progress plain ARGS CONTEXT`: whether it worked, and its progress output.
    fn try_build(&self, ctx: &Path, args: &[&str]) -> (bool, String) {
        let out = run_unchecked(
            self.buildx
                .command()
                .args(["build", "--builder", "kilnd", "--progress", "plain"])
                .args(args)
                .arg(ctx),
        );
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// A build that must work; returns its progress output.
    fn build(&self, ctx: &Path, args: &[&str]) -> String {
        let (ok, stderr) = self.try_build(ctx, args);
        assert!(ok, "build failed:\n{stderr}");
        stderr
    }

    /// A build that must fail; returns its progress output with the error.
    fn build_fails(&self, ctx: &Path, args: &[&str]) -> String {
        let (ok, stderr) = self.try_build(ctx, args);
        assert!(!ok, "the build worked:\n{stderr}");
        stderr
    }

    fn metric(&self, name: &str) -> u64 {
        let (_, metrics) = self.kilnd.debug_get("/metrics");
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0, |v| v.parse().unwrap())
    }
}

/// Files of the build context sent to kilnd (the Dockerfile travels on its own, every time, as with buildkitd).
const CONTEXT_FILES: &str = "kilnd_local_files_transferred_total{local=\"context\"}";

/// A build context whose Dockerfile is `FROM <base image>` and then `steps`.
fn context(steps: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {}\n{steps}", TestEnv::get().base_image))
        .unwrap();
    ctx
}

#[test]
fn a_rebuild_is_all_cached_and_a_change_reruns_only_what_reads_it() {
    let s = Setup::new();
    let ctx =
        context("COPY a.txt /a.txt\nRUN cat /a.txt > /from-a\nCOPY b.txt /b.txt\nRUN cat /b.txt > /from-b\n");
    for i in 0..50 {
        std::fs::write(ctx.path().join(format!("other-{i}.txt")), format!("other {i}\n")).unwrap();
    }
    std::fs::write(ctx.path().join("a.txt"), "a\n").unwrap();
    std::fs::write(ctx.path().join("b.txt"), "b\n").unwrap();

    s.build(ctx.path(), &[]);
    let sent_first = s.metric(CONTEXT_FILES);
    assert_eq!(sent_first, 2, "only the two files the COPYs read are sent (followpaths), not the other 50");

    // Nothing changed: every step is CACHED and no file is sent again.
    let progress = s.build(ctx.path(), &[]);
    let all = progress_steps(&progress);
    assert_eq!(all.len(), 5, "{all:?}\n{progress}");
    assert!(all.iter().all(|(_, cached)| *cached), "{all:?}");
    assert_eq!(s.metric(CONTEXT_FILES), sent_first, "an unchanged context sent files");

    // b.txt changes: the steps before its COPY stay cached, the rest re-run,
    // and that one file is all that is sent.
    std::fs::write(ctx.path().join("b.txt"), "b changed\n").unwrap();
    let progress = s.build(ctx.path(), &[]);
    let cached: Vec<bool> = progress_steps(&progress).into_iter().map(|(_, c)| c).collect();
    assert_eq!(cached, [true, true, true, false, false], "{progress}");
    assert_eq!(s.metric(CONTEXT_FILES), sent_first + 1);
}

#[test]
fn a_secret_reaches_its_step_and_nothing_else() {
    let env = TestEnv::get();
    let s = Setup::new();
    let ctx = tempfile::tempdir().unwrap();
    let secret_value = format!("kiln-secret-{}", unique("value"));
    let secret_file = ctx.path().join("secret.txt");
    std::fs::write(&secret_file, &secret_value).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN --mount=type=secret,id=token,required=true \\\n    test \"$(sha256sum < /run/secrets/token | cut -d' ' -f1)\" = \"{}\" && \\\n    touch /saw-the-secret\n",
            env.base_image,
            kiln_e2e::sha256_hex(secret_value.as_bytes())
        ),
    )
    .unwrap();
    std::fs::write(ctx.path().join(".dockerignore"), "secret.txt\n").unwrap();
    let dest = ctx.path().join("out");
    s.build(
        ctx.path(),
        &[
            "--secret",
            &format!("id=token,src={}", secret_file.display()),
            "--output",
            &format!("type=local,dest={}", dest.display()),
        ],
    );
    assert!(dest.join("saw-the-secret").is_file(), "the step saw the secret");
    assert!(!dest.join("run/secrets/token").exists(), "the secret's mount point is not in the result");

    // Not in the output, not anywhere under kilnd's root (layers, cache, metadata), not in its log.
    let found = |dir: &Path| {
        let out = run_unchecked(std::process::Command::new("grep").args(["-rlF", &secret_value]).arg(dir));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(found(&dest), "", "the secret is in the exported tree");
    assert_eq!(found(&s.kilnd.root.path().join("state")), "", "the secret is under kilnd's root");
    assert!(!s.kilnd.daemon.log_text().contains(&secret_value), "the secret is in kilnd's log");

    // A missing secret fails the build with its id.
    let stderr = s.build_fails(ctx.path(), &["--no-cache"]);
    assert!(stderr.contains("secret token not found"), "{stderr}");
}

#[test]
fn push_to_a_registry_that_needs_credentials_uses_the_clients_login() {
    let env = TestEnv::get();
    let s = Setup::new();
    let ctx = context("RUN echo pushed > /pushed\n");
    let image = format!("{}/{}:v1", env.auth_registry, unique("kiln-e2e/auth"));

    // Without a login the registry refuses the push, and the error says so.
    let stderr = s.build_fails(ctx.path(), &["--push", "-t", &image]);
    assert!(stderr.contains("unauthorized") || stderr.contains("401"), "{stderr}");

    // The client's docker config holds the login; kilnd asks for it through the session.
    let auth = format!("{}:{}", env.auth_user, env.auth_password);
    let config =
        serde_json::json!({ "auths": { env.auth_registry.clone(): { "auth": kiln_e2e::base64(&auth) } } });
    let docker_config = s.buildx.config.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    std::fs::write(docker_config.join("config.json"), config.to_string()).unwrap();
    let metadata = ctx.path().join("metadata.json");
    s.build(ctx.path(), &["--push", "-t", &image, "--metadata-file", metadata.to_str().unwrap()]);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    let (name, tag) = repo_and_tag(&image);
    let manifest = Registry::with_auth().manifest(name, tag).unwrap();
    assert_eq!(meta["containerimage.digest"], manifest.digest.as_str());
}

#[test]
fn a_bad_dockerfile_is_an_error_naming_its_line() {
    let env = TestEnv::get();
    let s = Setup::new();
    let ctx = context("RUN true\nFROBNICATE now\n");
    let stderr = s.build_fails(ctx.path(), &[]);
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(stderr.to_lowercase().contains("unknown instruction: frobnicate"), "{stderr}");

    // A base image that does not exist names the image.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {}/kiln-test/no-such-image:1\n", env.registry),
    )
    .unwrap();
    let stderr = s.build_fails(ctx.path(), &[]);
    assert!(stderr.contains("no-such-image") && stderr.contains("not found"), "{stderr}");
    assert!(!s.kilnd.daemon.log_text().contains("panicked"));
}

#[test]
fn buildx_bake_builds_targets_that_share_a_context() {
    let s = Setup::new();
    let ctx = context("ARG WHO\nCOPY a.txt /a.txt\nRUN echo \"$WHO $(cat /a.txt)\" > /who\n");
    std::fs::write(ctx.path().join("a.txt"), "shared\n").unwrap();
    let target = |name: &str| {
        format!(
            "target \"{name}\" {{\n  context = \".\"\n  args = {{ WHO = \"{name}\" }}\n  output = [\"type=local,dest=out-{name}\"]\n}}\n"
        )
    };
    std::fs::write(
        ctx.path().join("docker-bake.hcl"),
        format!("group \"default\" {{ targets = [\"one\", \"two\"] }}\n{}{}", target("one"), target("two")),
    )
    .unwrap();
    let out = run_unchecked(s.buildx.command().current_dir(ctx.path()).args([
        "bake",
        "--builder",
        "kilnd",
        "--progress",
        "plain",
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(ctx.path().join("out-one/who")).unwrap(), "one shared\n");
    assert_eq!(std::fs::read_to_string(ctx.path().join("out-two/who")).unwrap(), "two shared\n");
}

/// The client's real ssh-agent, reached from a RUN step through
/// `--mount=type=ssh`. busybox has no SSH client, so the step runs the
/// host's `ssh-add` with its own libraries, copied into the context.
#[test]
fn ssh_agent_forwarding_reaches_the_clients_agent() {
    let env = TestEnv::get();
    let s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = Agent(
        std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "ssh-agent did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let key = dir.path().join("key");
    kiln_e2e::run(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test-key", "-f"])
            .arg(&key),
    );
    kiln_e2e::run(std::process::Command::new("ssh-add").env("SSH_AUTH_SOCK", &sock).arg(&key));

    let ctx = dir.path().join("ctx");
    let tools = ctx.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let ldd = kiln_e2e::run(std::process::Command::new("ldd").arg("/usr/bin/ssh-add"));
    let libs = ldd.split_whitespace().filter(|w| w.starts_with('/')).map(str::to_owned);
    for file in libs.chain(["/usr/bin/ssh-add".to_owned()]) {
        let name = Path::new(&file).file_name().unwrap();
        std::fs::copy(&file, tools.join(name)).unwrap();
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY tools /tools\nRUN --mount=type=ssh,required=true /tools/ld-linux-x86-64.so.2 --library-path /tools /tools/ssh-add -l > /keys\n",
            env.base_image
        ),
    )
    .unwrap();
    let dest = dir.path().join("out");
    s.build(
        &ctx,
        &[
            "--ssh",
            &format!("default={}", sock.display()),
            "--output",
            &format!("type=local,dest={}", dest.display()),
        ],
    );
    let keys = std::fs::read_to_string(dest.join("keys")).unwrap();
    assert!(keys.contains("kiln-test-key"), "{keys}");

    // Without --ssh the step cannot have an agent, and the error says so.
    let stderr = s.build_fails(&ctx, &["--no-cache"]);
    assert!(stderr.contains("no SSH agent \"default\" was forwarded"), "{stderr}");
    drop(agent);
}

/// An ssh-agent that is stopped however the test ends.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--build-context`: a directory that replaces a stage of the same name
/// (its own `.dockerignore` applies) and an image that a FROM names.
#[test]
fn build_contexts_replace_a_stage_with_a_directory_and_a_from_with_an_image() {
    let env = TestEnv::get();
    let s = Setup::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {} AS assets\nRUN echo the stage ran instead of the context && exit 1\n\
             FROM mybase\nCOPY --from=assets . /assets/\n",
            env.base_image
        ),
    )
    .unwrap();
    let assets = tempfile::tempdir().unwrap();
    std::fs::write(assets.path().join("hello.txt"), "from the named context\n").unwrap();
    std::fs::write(assets.path().join("private.key"), "left out\n").unwrap();
    std::fs::write(assets.path().join(".dockerignore"), "*.key\n").unwrap();
    let dest = ctx.path().join("out");
    s.build(
        ctx.path(),
        &[
            "--build-context",
            &format!("assets={}", assets.path().display()),
            "--build-context",
            &format!("mybase=docker-image://{}", env.base_image),
            "--output",
            &format!("type=local,dest={}", dest.display()),
        ],
    );
    assert_eq!(std::fs::read_to_string(dest.join("assets/hello.txt")).unwrap(), "from the named context\n");
    assert!(!dest.join("assets/private.key").exists(), "the context's .dockerignore was not applied");
    assert!(dest.join("bin/busybox").is_file(), "FROM mybase did not start from the image");
}

/// One build for two platforms pushes an index whose entries name their
/// platforms, each image with that platform's config.
#[test]
fn a_two_platform_push_is_an_index_with_one_image_per_platform() {
    let env = TestEnv::get();
    let s = Setup::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}\nARG TARGETARCH\nENV BUILT_FOR=$TARGETARCH\nCOPY a.txt /a.txt\n",
            env.base_image_multi
        ),
    )
    .unwrap();
    std::fs::write(ctx.path().join("a.txt"), "a\n").unwrap();
    let image = format!("{}/{}:v1", env.registry, unique("kiln-e2e/multi"));
    s.build(ctx.path(), &["--platform", "linux/amd64,linux/arm64", "--push", "-t", &image]);

    let (name, tag) = repo_and_tag(&image);
    let registry = Registry::plain();
    let index = registry.manifest(name, tag).unwrap();
    assert!(index.media_type.contains("list") || index.media_type.contains("index"), "{}", index.media_type);
    let entries = index.json["manifests"].as_array().unwrap();
    let platforms: Vec<(String, String)> = entries
        .iter()
        .map(|m| {
            let p = &m["platform"];
            (p["os"].as_str().unwrap().to_owned(), p["architecture"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        platforms,
        [("linux".to_owned(), "amd64".to_owned()), ("linux".to_owned(), "arm64".to_owned())]
    );
    for (entry, (_, arch)) in entries.iter().zip(&platforms) {
        let manifest = registry.manifest(name, entry["digest"].as_str().unwrap()).unwrap();
        let config_digest = manifest.json["config"]["digest"].as_str().unwrap();
        let url = format!("http://{}/v2/{name}/blobs/{config_digest}", env.registry);
        let config: serde_json::Value =
            serde_json::from_str(&ureq::get(&url).call().unwrap().body_mut().read_to_string().unwrap())
                .unwrap();
        assert_eq!(config["architecture"], arch.as_str());
        let built_for = format!("BUILT_FOR={arch}");
        assert!(
            config["config"]["Env"].as_array().unwrap().iter().any(|e| e == built_for.as_str()),
            "{config}"
        );
    }
}

/// Without an emulator a RUN on a foreign platform cannot execute: the
/// build fails, and the failing step carries its platform.
#[test]
fn a_run_for_a_platform_the_host_cannot_execute_fails_naming_it() {
    if Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        eprintln!("this host runs arm64 binaries through qemu; nothing to check");
        return;
    }
    let env = TestEnv::get();
    let s = Setup::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {}\nRUN true\n", env.base_image_multi))
        .unwrap();
    let stderr = s.build_fails(ctx.path(), &["--platform", "linux/amd64,linux/arm64"]);
    assert!(stderr.contains("[linux/arm64 2/2] RUN true"), "{stderr}");
    assert!(stderr.contains("exec format error"), "{stderr}");
}

/// bake's target-to-target context (`contexts = { base = "target:base" }`):
/// buildx builds `base` first, evaluates it (LLBBridge `Evaluate`), and
/// hands its result to `app` as a frontend input (`input:base`), which
/// replaces `FROM base` with its image config.
#[test]
fn buildx_bake_passes_one_targets_result_to_another_as_a_context() {
    let env = TestEnv::get();
    let s = Setup::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("base.Dockerfile"),
        format!("FROM {}\nRUN echo from-base > /base.txt\nENV FROM_BASE=yes\n", env.base_image),
    )
    .unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM base\nRUN cat /base.txt > /copied && echo \"$FROM_BASE\" > /env\n",
    )
    .unwrap();
    std::fs::write(
        ctx.path().join("docker-bake.hcl"),
        "target \"base\" {\n  dockerfile = \"base.Dockerfile\"\n}\n\
         target \"app\" {\n  contexts = { base = \"target:base\" }\n  output = [\"type=local,dest=out\"]\n}\n",
    )
    .unwrap();
    let out = run_unchecked(s.buildx.command().current_dir(ctx.path()).args([
        "bake",
        "--builder",
        "kilnd",
        "--progress",
        "plain",
        "app",
    ]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(ctx.path().join("out/copied")).unwrap(), "from-base\n");
    assert_eq!(std::fs::read_to_string(ctx.path().join("out/env")).unwrap(), "yes\n");
}
