use std::collections::BTreeSet;

use kiln_proto::buildkit::pb;
use pb::file_action::Action;
use prost::Message;

use super::*;
use crate::solver::llb::{Graph, Vertex, digest_of};

const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

fn opts() -> MarshalOptions {
    MarshalOptions {
        platform: Some(amd64()),
        caps: Some(caps::ALL.iter().map(|c| (*c).to_owned()).collect()),
        local_unique_id: String::new(),
    }
}

fn graph(state: &State) -> Graph {
    Graph::parse(&marshal(state, &opts()).unwrap()).unwrap()
}

fn busybox() -> State {
    image("busybox", ImageOptions { constraints: Constraints::new().platform(amd64()), ..Default::default() })
}

fn exec_of(v: &Vertex) -> &pb::ExecOp {
    match v.operation() {
        Some(pb::op::Op::Exec(e)) => e,
        other => panic!("not an exec: {other:?}"),
    }
}

fn file_of(v: &Vertex) -> &pb::FileOp {
    match v.operation() {
        Some(pb::op::Op::File(f)) => f,
        other => panic!("not a file op: {other:?}"),
    }
}

fn source_of(v: &Vertex) -> &pb::SourceOp {
    match v.operation() {
        Some(pb::op::Op::Source(s)) => s,
        other => panic!("not a source: {other:?}"),
    }
}

fn caps_of(v: &Vertex) -> Vec<&str> {
    v.metadata.caps.keys().map(String::as_str).collect()
}

fn run(state: &State, args: &[&str]) -> ExecOptions {
    let _ = state;
    ExecOptions { args: args.iter().map(|a| (*a).to_owned()).collect(), ..Default::default() }
}

#[test]
fn an_image_source_is_normalised_pinned_to_its_platform_and_capped() {
    let def = marshal(&busybox(), &opts()).unwrap();
    assert_eq!(def.def.len(), 2, "the source and the return op");
    let g = Graph::parse(&def).unwrap();
    let v = &g.vertices[0];
    assert_eq!(source_of(v).identifier, "docker-image://docker.io/library/busybox:latest");
    assert!(source_of(v).attrs.is_empty());
    let p = v.op.platform.as_ref().unwrap();
    assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "amd64"));
    assert_eq!(v.op.constraints, Some(pb::WorkerConstraints::default()));
    assert_eq!(caps_of(v), ["source.image"]);
    let ret = pb::Op::decode(def.def[1].as_slice()).unwrap();
    assert_eq!(ret.inputs, vec![pb::Input { digest: v.digest.clone(), index: 0 }]);
    assert!(ret.platform.is_none() && ret.op.is_none());
    let ret_caps: Vec<&String> = def.metadata[&digest_of(&def.def[1])].caps.keys().collect();
    assert_eq!(ret_caps, ["constraints", "platform"]);

    let pinned = image(
        &format!("busybox:1.36@{DIGEST}"),
        ImageOptions { resolve_mode: ResolveMode::ForcePull, ..Default::default() },
    );
    let g = graph(&pinned);
    let s = source_of(&g.vertices[0]);
    assert_eq!(s.identifier, format!("docker-image://docker.io/library/busybox:1.36@{DIGEST}"));
    assert_eq!(s.attrs["image.resolvemode"], "pull");
    assert_eq!(caps_of(&g.vertices[0]), ["source.image", "source.image.resolvemode"]);
    let err = marshal(&image("Bad Name", ImageOptions::default()), &opts()).unwrap_err();
    assert!(matches!(err, LlbError::ImageReference { .. }), "{err}");
}

#[test]
fn a_local_source_carries_json_pattern_lists_and_no_platform() {
    let st = local(
        "context",
        LocalOptions {
            session_id: "sess".into(),
            exclude_patterns: vec!["*.md".into(), "a&b".into()],
            follow_paths: vec!["src".into(), "go.mod".into()],
            shared_key_hint: "context".into(),
            constraints: Constraints::new().custom_name("[internal] load build context"),
            ..Default::default()
        },
    );
    let g = graph(&st);
    let v = &g.vertices[0];
    let s = source_of(v);
    assert_eq!(s.identifier, "local://context");
    assert_eq!(s.attrs["local.session"], "sess");
    assert_eq!(s.attrs["local.excludepatterns"], r#"["*.md","a\u0026b"]"#);
    assert_eq!(s.attrs["local.followpaths"], r#"["src","go.mod"]"#);
    assert_eq!(s.attrs["local.sharedkeyhint"], "context");
    assert!(!s.attrs.contains_key("local.unique"));
    assert!(v.op.platform.is_none());
    assert_eq!(
        caps_of(v),
        [
            "source.local",
            "source.local.excludepatterns",
            "source.local.followpaths",
            "source.local.sessionid",
            "source.local.sharedkeyhint"
        ]
    );
    assert_eq!(v.name(), "[internal] load build context");

    let sessionless = local("ctx", LocalOptions { unique_id: Some("u1".into()), ..Default::default() });
    let g = graph(&sessionless);
    assert_eq!(source_of(&g.vertices[0]).attrs["local.unique"], "u1");
    assert!(caps_of(&g.vertices[0]).contains(&"source.local.unique"));
}

#[test]
fn http_and_git_sources_use_upstream_attrs() {
    let st = http(
        "https://example.com/a.tar.gz",
        HttpOptions {
            filename: "a.tar.gz".into(),
            perm: 0o755,
            checksum: DIGEST.into(),
            ..Default::default()
        },
    );
    let g = graph(&st);
    let s = source_of(&g.vertices[0]);
    assert_eq!(s.identifier, "https://example.com/a.tar.gz");
    assert_eq!(s.attrs["http.filename"], "a.tar.gz");
    assert_eq!(s.attrs["http.perm"], "0755");
    assert_eq!(s.attrs["http.checksum"], DIGEST);
    assert_eq!(caps_of(&g.vertices[0]), ["source.http", "source.http.checksum", "source.http.perm"]);

    let st = git(
        "https://github.com/moby/buildkit.git",
        GitOptions {
            git_ref: "v0.29.0".into(),
            subdir: "docs".into(),
            keep_git_dir: true,
            ..Default::default()
        },
    );
    let g = graph(&st);
    let s = source_of(&g.vertices[0]);
    assert_eq!(s.identifier, "git://github.com/moby/buildkit.git#v0.29.0:docs");
    assert_eq!(s.attrs["git.fullurl"], "https://github.com/moby/buildkit.git");
    assert_eq!(s.attrs["git.keepgitdir"], "true");
    assert_eq!(s.attrs["git.authtokensecret"], "GIT_AUTH_TOKEN");
    assert_eq!(s.attrs["git.authheadersecret"], "GIT_AUTH_HEADER");
    assert!(!s.attrs.contains_key("git.mountsshsock"));

    let g = graph(&git("git@github.com:moby/buildkit.git", GitOptions::default()));
    let s = source_of(&g.vertices[0]);
    assert_eq!(s.identifier, "git://github.com/moby/buildkit.git");
    assert_eq!(s.attrs["git.mountsshsock"], "default");
    let g = graph(&git("github.com/a/b", GitOptions::default()));
    assert_eq!(source_of(&g.vertices[0]).attrs["git.fullurl"], "https://github.com/a/b");
}

#[test]
fn an_exec_mounts_its_root_at_slash_and_numbers_outputs() {
    let base = busybox().add_env("A", "1").dir("/work").user("nobody");
    let ctx = local("context", LocalOptions { session_id: "s".into(), ..Default::default() });
    let exec = base.run(
        ExecOptions {
            args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            network: Some(NetMode::None),
            proxy_env: Some(ProxyEnv { http_proxy: "http://p".into(), ..Default::default() }),
            constraints: Constraints::new().custom_name("RUN make"),
            ..Default::default()
        },
        vec![
            Mount::new("/src", &ctx).readonly().selector("/app"),
            Mount::new("/cache", &scratch()).cache("/cache", CacheSharing::Locked),
            Mount::new("/out", &scratch()),
            Mount::new("/tmp", &scratch()).tmpfs(1024),
        ],
    );
    let g = graph(&exec.root());
    let v = g.vertices.last().unwrap();
    let e = exec_of(v);
    let meta = e.meta.as_ref().unwrap();
    assert_eq!(meta.args, ["/bin/sh", "-c", "make"]);
    assert_eq!(meta.env, ["A=1"], "PATH is left to the daemon when it sets it");
    assert_eq!((meta.cwd.as_str(), meta.user.as_str()), ("/work", "nobody"));
    assert!(meta.remove_mount_stubs_recursive);
    assert_eq!(meta.proxy_env.as_ref().unwrap().http_proxy, "http://p");
    assert_eq!(e.network, NetMode::None as i32);
    let mounts: Vec<(&str, i64, i64, bool, i32)> =
        e.mounts.iter().map(|m| (m.dest.as_str(), m.input, m.output, m.readonly, m.mount_type)).collect();
    assert_eq!(
        mounts,
        [
            ("/", 0, 0, false, pb::MountType::Bind as i32),
            ("/cache", -1, -1, false, pb::MountType::Cache as i32),
            ("/out", -1, 1, false, pb::MountType::Bind as i32),
            ("/src", 1, -1, true, pb::MountType::Bind as i32),
            ("/tmp", -1, -1, false, pb::MountType::Tmpfs as i32),
        ]
    );
    assert_eq!(e.mounts[3].selector, "/app");
    assert_eq!(e.mounts[1].cache_opt, Some(pb::CacheOpt { id: "/cache".into(), sharing: 2 }));
    assert_eq!(e.mounts[4].tmpfs_opt, Some(pb::TmpfsOpt { size: 1024 }));
    assert_eq!(v.op.platform.as_ref().unwrap().architecture, "amd64");
    assert_eq!(
        caps_of(v),
        [
            "exec.meta.base",
            "exec.meta.network",
            "exec.meta.proxyenv",
            "exec.meta.setsdefaultpath",
            "exec.mount.bind",
            "exec.mount.cache",
            "exec.mount.cache.sharing",
            "exec.mount.selector",
            "exec.mount.tmpfs",
            "exec.mount.tmpfs.size",
        ]
    );
    assert_eq!(v.name(), "RUN make");
    // Inputs first: the image, then the context, then the exec, then return.
    assert_eq!(g.vertices.len(), 3);
    assert_eq!(v.inputs.len(), 2);
    // The root keeps the base state's settings and is the exec's output 0.
    assert_eq!(exec.root().get_dir(), "/work");
    assert_eq!(g.result.as_ref().unwrap().output, 0);
}

#[test]
fn secrets_and_ssh_sockets_become_mounts_with_defaults() {
    let mut secret = SecretInfo::new("npm", Some("/run/secrets/npm"));
    secret.optional = true;
    let mut env_secret = SecretInfo::new("tok", None);
    env_secret.env = Some("TOKEN".into());
    let exec = busybox().run(
        ExecOptions {
            secrets: vec![secret, env_secret],
            ssh: vec![SshInfo::new("")],
            ..run(&busybox(), &["true"])
        },
        vec![],
    );
    let g = graph(&exec.root());
    let v = g.vertices.last().unwrap();
    let e = exec_of(v);
    let secret = &e.mounts[1];
    assert_eq!((secret.dest.as_str(), secret.input, secret.output), ("/run/secrets/npm", -1, 0));
    assert_eq!(secret.mount_type, pb::MountType::Secret as i32);
    assert_eq!(
        secret.secret_opt,
        Some(pb::SecretOpt { id: "npm".into(), uid: 0, gid: 0, mode: 0o400, optional: true })
    );
    assert_eq!(e.secretenv, vec![pb::SecretEnv { id: "tok".into(), name: "TOKEN".into(), optional: false }]);
    let ssh = &e.mounts[2];
    assert_eq!(ssh.dest, "/run/buildkit/ssh_agent.0");
    assert_eq!(ssh.ssh_opt.as_ref().unwrap().mode, 0o600);
    assert_eq!(e.meta.as_ref().unwrap().env, ["SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0"]);
    for cap in ["exec.mount.secret", "exec.secretenv", "exec.mount.ssh"] {
        assert!(caps_of(v).contains(&cap), "{cap}");
    }
}

#[test]
fn without_the_default_path_cap_the_exec_sets_path_itself() {
    let exec = busybox().add_env("A", "1").run(run(&busybox(), &["true"]), vec![]);
    let mut o = opts();
    o.caps = Some(BTreeSet::new());
    let g = Graph::parse(&marshal(&exec.root(), &o).unwrap()).unwrap();
    let e = exec_of(g.vertices.last().unwrap());
    assert_eq!(e.meta.as_ref().unwrap().env, ["A=1", &format!("PATH={DEFAULT_PATH_UNIX}")]);
    o.caps = None;
    let g = Graph::parse(&marshal(&exec.root(), &o).unwrap()).unwrap();
    assert_eq!(exec_of(g.vertices.last().unwrap()).meta.as_ref().unwrap().env, ["A=1"]);
}

#[test]
fn env_keys_keep_the_order_of_their_last_set() {
    let s = scratch().add_env("A", "1").add_env("B", "2").add_env("A", "3");
    assert_eq!(s.env().to_array(), ["B=2", "A=3"]);
    assert_eq!(s.env().get("A"), Some("3"));
    let s = s.dir("x").dir("../y");
    assert_eq!(s.get_dir(), "/y");
}

#[test]
fn file_actions_number_inputs_first_then_earlier_actions() {
    let ctx = local("context", LocalOptions { session_id: "s".into(), ..Default::default() }).dir("/sub");
    let st = busybox().dir("/app").file(
        FileAction::new()
            .mkdir(
                "data",
                0o755,
                MkdirInfo {
                    make_parents: true,
                    chown: Some(ChownOpt::from_user("app:1")),
                    created_time: None,
                },
            )
            .copy(&ctx, "src/", "./out/", CopyInfo { create_dest_path: true, ..Default::default() })
            .mkfile("/etc/x", 0o644, b"hi", MkfileInfo::default()),
        Constraints::new().custom_name("file stuff"),
    );
    let g = graph(&st);
    let v = g.vertices.last().unwrap();
    assert!(v.op.platform.is_none(), "file ops are not platform specific");
    assert_eq!(caps_of(v), ["file.base"]);
    let f = file_of(v);
    let numbering: Vec<(i64, i64, i64)> =
        f.actions.iter().map(|a| (a.input, a.secondary_input, a.output)).collect();
    assert_eq!(numbering, [(0, -1, -1), (2, 1, -1), (3, -1, 0)]);
    let Some(Action::Mkdir(mkdir)) = &f.actions[0].action else { panic!() };
    assert_eq!(
        (mkdir.path.as_str(), mkdir.mode, mkdir.make_parents, mkdir.timestamp),
        ("/app/data", 0o755, true, -1)
    );
    let owner = mkdir.owner.as_ref().unwrap();
    assert_eq!(
        owner.user.as_ref().unwrap().user,
        Some(pb::user_opt::User::ByName(pb::NamedUserOpt { name: "app".into(), input: 0 }))
    );
    assert_eq!(owner.group.as_ref().unwrap().user, Some(pb::user_opt::User::ById(1)));
    let Some(Action::Copy(copy)) = &f.actions[1].action else { panic!() };
    assert_eq!((copy.src.as_str(), copy.dest.as_str(), copy.mode), ("/sub/src", "/app/out/", -1));
    assert!(copy.create_dest_path);
    let Some(Action::Mkfile(mkfile)) = &f.actions[2].action else { panic!() };
    assert_eq!(mkfile.path, "/etc/x");

    // On scratch there is no base input.
    let st =
        scratch().file(FileAction::new().mkfile("f", 0o600, b"x", MkfileInfo::default()), Constraints::new());
    let g = graph(&st);
    let f = file_of(&g.vertices[0]);
    assert!(g.vertices[0].op.inputs.is_empty());
    assert_eq!((f.actions[0].input, f.actions[0].output), (-1, 0));
    let err = marshal(&scratch().file(FileAction::new(), Constraints::new()), &opts()).unwrap_err();
    assert_eq!(err, LlbError::NoFileAction);
}

#[test]
fn merge_drops_scratch_and_references_inputs_by_position() {
    let a = busybox();
    let b = scratch()
        .file(FileAction::new().mkfile("/f", 0o644, b"x", MkfileInfo::default()), Constraints::new());
    let merged = merge(&[a.clone(), scratch(), b.clone()], Constraints::new().custom_name("merge"));
    let g = graph(&merged);
    let v = g.vertices.last().unwrap();
    let Some(pb::op::Op::Merge(m)) = v.operation() else { panic!() };
    assert_eq!(m.inputs.iter().map(|i| i.input).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(caps_of(v), ["mergeop"]);
    assert!(v.op.platform.is_none());
    assert!(merge(&[scratch(), b.clone()], Constraints::new()).output().is_some());
    assert!(merge(&[scratch()], Constraints::new()).output().is_none());
}

#[test]
fn marshalling_is_deterministic_and_writes_each_op_once_before_its_users() {
    let base = busybox();
    let a = base.run(run(&base, &["a"]), vec![]).root();
    let b = base.run(run(&base, &["b"]), vec![]).root();
    let both = merge(&[a.clone(), b.clone(), busybox()], Constraints::new());
    let first = marshal(&both, &opts()).unwrap();
    let second = marshal(&both, &opts()).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.encode_to_vec(), second.encode_to_vec());
    // busybox twice (two states, one digest), two execs, the merge, the return.
    assert_eq!(first.def.len(), 5);
    let digests: Vec<String> = first.def.iter().map(|d| digest_of(d)).collect();
    for (i, bytes) in first.def.iter().enumerate().take(first.def.len() - 1) {
        let op = pb::Op::decode(bytes.as_slice()).unwrap();
        for input in op.inputs {
            let at = digests.iter().position(|d| *d == input.digest).unwrap();
            assert!(at < i, "input {at} written after its user {i}");
        }
        assert!(first.metadata.contains_key(&digests[i]));
    }
    assert!(marshal(&scratch(), &opts()).unwrap().def.is_empty());
}

#[test]
fn metadata_and_source_locations_are_keyed_by_digest() {
    let map = std::sync::Arc::new(SourceMap {
        filename: "Dockerfile".into(),
        language: "Dockerfile".into(),
        data: b"FROM busybox\n".to_vec(),
        definition: None,
    });
    let range = pb::Range {
        start: Some(pb::Position { line: 1, character: 0 }),
        end: Some(pb::Position { line: 1, character: 0 }),
    };
    let st = image(
        "busybox",
        ImageOptions {
            constraints: Constraints::new()
                .ignore_cache()
                .progress_group("pg", "group", true)
                .location(SourceLocation { map: map.clone(), ranges: vec![range] }),
            ..Default::default()
        },
    );
    let def = marshal(&st, &opts()).unwrap();
    let digest = digest_of(&def.def[0]);
    let md = &def.metadata[&digest];
    assert!(md.ignore_cache);
    assert_eq!(md.progress_group.as_ref().unwrap().id, "pg");
    let ret_caps: Vec<&String> = def.metadata[&digest_of(&def.def[1])].caps.keys().collect();
    assert_eq!(ret_caps, ["constraints", "meta.ignorecache", "platform"]);
    let source = def.source.unwrap();
    assert_eq!(source.infos.len(), 1);
    assert_eq!(source.infos[0].filename, "Dockerfile");
    assert_eq!(
        source.locations[&digest].locations,
        vec![pb::Location { source_index: 0, ranges: vec![range] }]
    );
}

#[test]
fn placeholders_resolve_when_marshalled() {
    let ph = Placeholder::new();
    let user = busybox()
        .file(FileAction::new().copy(&ph.state(), "a", "/a", CopyInfo::default()), Constraints::new());
    assert_eq!(marshal(&user, &opts()).unwrap_err(), LlbError::EmptyPlaceholder);
    ph.fill(&local("context", LocalOptions { session_id: "s".into(), ..Default::default() })).unwrap();
    assert_eq!(ph.fill(&scratch()).unwrap_err(), LlbError::PlaceholderFill);
    let g = graph(&user);
    assert_eq!(source_of(&g.vertices[1]).identifier, "local://context");
}

#[test]
fn execs_without_args_or_with_a_tmpfs_source_fail_to_marshal() {
    let exec = busybox().run(ExecOptions::default(), vec![]);
    assert_eq!(marshal(&exec.root(), &opts()).unwrap_err(), LlbError::NoArgs);
    let exec = busybox().run(run(&busybox(), &["x"]), vec![Mount::new("/t", &busybox()).tmpfs(0)]);
    assert_eq!(marshal(&exec.root(), &opts()).unwrap_err(), LlbError::TmpfsSource);
}

#[test]
fn json_is_escaped_like_go() {
    let v = vec!["<a>&b".to_owned(), "\u{8}\u{c}\n\u{2028}".to_owned()];
    assert_eq!(go_json_string(&v, "test").unwrap(), r#"["\u003ca\u003e\u0026b","\u0008\u000c\n\u2028"]"#);
}

#[test]
fn platforms_format_like_containerd() {
    let p = Platform { os_version: Some("10.0".into()), ..Platform::new("windows", "amd64", None) };
    assert_eq!(format_platform_all(&p), "windows(10.0)/amd64");
    assert_eq!(format_platform(&Platform::new("linux", "arm", Some("v7"))), "linux/arm/v7");
}
