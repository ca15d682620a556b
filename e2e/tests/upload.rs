//! Contexts a client streams through its session instead of syncing a
//! directory: `buildx build - < context.tar` (Upload.Pull) and
//! `buildx build - < Dockerfile` (no context at all).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use kiln_e2e::{Buildx, Kilnd, TestEnv, streams};

/// Runs `cmd` with `input` on its stdin; its progress output is echoed.
fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A tar of `files` (path, content), as `tar -c` of a context directory.
fn tar_of(files: &[(&str, &str)], gzip: bool) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append_data(&mut header, path, content.as_bytes()).unwrap();
    }
    let bytes = tar.into_inner().unwrap();
    if !gzip {
        return bytes;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    gz.finish().unwrap()
}

fn build_from_stdin(buildx: &Buildx, dest: &std::path::Path, extra: &[&str], input: &[u8]) -> Output {
    run_with_stdin(
        buildx
            .command()
            .args(["build", "--builder", "kilnd", "--progress", "plain"])
            .args(extra)
            .arg("--output")
            .arg(format!("type=local,dest={}", dest.display()))
            .arg("-"),
        input,
    )
}

#[test]
fn buildx_builds_a_context_tarball_from_stdin() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    let dockerfile = format!(
        "FROM {}\nCOPY app/ /app/\nCOPY notes.txt /\nRUN cat /app/a.txt /notes.txt > /app/joined\n",
        env.base_image
    );
    let files = [
        ("Dockerfile", dockerfile.as_str()),
        ("app/a.txt", "from the tarball\n"),
        ("notes.txt", "notes\n"),
        // Only a client directory is filtered by .dockerignore.
        (".dockerignore", "notes.txt\n"),
    ];
    for gzip in [false, true] {
        let out_dir = tempfile::tempdir().unwrap();
        let out = build_from_stdin(&buildx, out_dir.path(), &[], &tar_of(&files, gzip));
        assert!(out.status.success(), "gzip={gzip}\n{}", streams(&out));
        let joined = std::fs::read_to_string(out_dir.path().join("app/joined")).unwrap();
        assert_eq!(joined, "from the tarball\nnotes\n", "gzip={gzip}");
        assert_eq!(std::fs::read_to_string(out_dir.path().join("notes.txt")).unwrap(), "notes\n");
    }

    // The same tarball again is a cache hit down to the RUN step, although
    // each upload has a new id.
    let stamped = format!("FROM {}\nCOPY a.txt /\nRUN date +%s%N > /stamp\n", env.base_image);
    let files = [("Dockerfile", stamped.as_str()), ("a.txt", "same\n")];
    let stamps: Vec<String> = (0..2)
        .map(|_| {
            let out_dir = tempfile::tempdir().unwrap();
            let out = build_from_stdin(&buildx, out_dir.path(), &[], &tar_of(&files, false));
            assert!(out.status.success(), "{}", streams(&out));
            std::fs::read_to_string(out_dir.path().join("stamp")).unwrap()
        })
        .collect();
    assert_eq!(stamps[0], stamps[1], "the second build ran the RUN step again");

    // A tarball whose Dockerfile has another name, picked with --file.
    let files = [("build/Containerfile", "FROM scratch\nCOPY x /x\n"), ("x", "picked\n")];
    let out_dir = tempfile::tempdir().unwrap();
    let out =
        build_from_stdin(&buildx, out_dir.path(), &["--file", "build/Containerfile"], &tar_of(&files, false));
    assert!(out.status.success(), "{}", streams(&out));
    assert_eq!(std::fs::read_to_string(out_dir.path().join("x")).unwrap(), "picked\n");

    // A tarball without a Dockerfile fails and says what is missing.
    let out_dir = tempfile::tempdir().unwrap();
    let out = build_from_stdin(&buildx, out_dir.path(), &[], &tar_of(&[("x", "no dockerfile\n")], false));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Dockerfile") && stderr.contains("no such file"), "{stderr}");
    assert!(!kilnd.daemon.log_text().contains("panicked"), "{}", kilnd.daemon.log_text());
}

#[test]
fn buildx_builds_a_dockerfile_from_stdin_without_a_context() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    let dockerfile = format!("FROM {}\nRUN echo built from stdin > /out.txt\n", env.base_image);
    let out_dir = tempfile::tempdir().unwrap();
    let out = build_from_stdin(&buildx, out_dir.path(), &[], dockerfile.as_bytes());
    assert!(out.status.success(), "{}", streams(&out));
    assert_eq!(std::fs::read_to_string(out_dir.path().join("out.txt")).unwrap(), "built from stdin\n");

    // With no context, COPY has nothing to copy from.
    let out = build_from_stdin(&buildx, out_dir.path(), &[], b"FROM scratch\nCOPY missing.txt /\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.txt"), "{stderr}");
}
