//! RUN: mounts and options.

use super::*;

#[tokio::test]
async fn cache_mounts_default_their_id_to_the_target() {
    let mut o = opts();
    o.cache_id_namespace = "ns".into();
    let c = conv_with("FROM busybox\nRUN --mount=type=cache,target=/root/.cache/ --mount=type=cache,id=go,target=/go,sharing=locked go build\n", &o).await;
    let g = graph(&c);
    let run = result(&g);
    assert_eq!(
        run.name(),
        "[stage-0 2/2] RUN --mount=type=cache,target=/root/.cache/ --mount=type=cache,id=go,target=/go,sharing=locked go build"
    );
    let mounts: Vec<(&str, i64, i64, Option<pb::CacheOpt>)> =
        exec(run).mounts.iter().map(|m| (m.dest.as_str(), m.input, m.output, m.cache_opt.clone())).collect();
    assert_eq!(
        mounts,
        [
            ("/", 0, 0, None),
            (
                "/go",
                -1,
                -1,
                Some(pb::CacheOpt { id: "ns/go".into(), sharing: pb::CacheSharingOpt::Locked as i32 })
            ),
            ("/root/.cache/", -1, -1, Some(pb::CacheOpt { id: "ns//root/.cache".into(), sharing: 0 })),
        ]
    );
    for cap in ["exec.mount.cache", "exec.mount.cache.sharing"] {
        assert!(run.metadata.caps.contains_key(cap));
    }
}

#[tokio::test]
async fn cache_mount_ownership_prepares_the_directory() {
    let g = graph(&conv("FROM busybox\nRUN --mount=type=cache,target=/c,uid=1000,mode=0700 true\n").await);
    let prep = by_name(&g, "[internal] setting cache mount permissions");
    let Some(Action::Mkdir(m)) = &file(prep).actions[0].action else { panic!() };
    assert_eq!((m.path.as_str(), m.mode), ("/cache", 0o700));
    assert_eq!(m.owner.as_ref().unwrap().user.as_ref().unwrap().user, Some(pb::user_opt::User::ById(1000)));
    let mount = &exec(result(&g)).mounts[1];
    assert_eq!((mount.dest.as_str(), mount.selector.as_str(), mount.input), ("/c", "/cache", 1));
}

#[tokio::test]
async fn secret_mounts_default_to_run_secrets() {
    let c = conv("FROM busybox\nRUN --mount=type=secret,id=npm --mount=type=secret,id=tok,env=TOKEN,required --mount=type=secret,source=aws,target=/root/.aws/credentials,mode=0440,uid=5 echo $TOKEN\n").await;
    let g = graph(&c);
    let run = result(&g);
    let secrets: Vec<(&str, pb::SecretOpt)> = exec(run)
        .mounts
        .iter()
        .filter(|m| m.mount_type == pb::MountType::Secret as i32)
        .map(|m| (m.dest.as_str(), m.secret_opt.clone().unwrap()))
        .collect();
    assert_eq!(
        secrets,
        [
            (
                "/run/secrets/npm",
                pb::SecretOpt { id: "npm".into(), uid: 0, gid: 0, mode: 0o400, optional: true }
            ),
            (
                "/root/.aws/credentials",
                pb::SecretOpt { id: "aws".into(), uid: 5, gid: 0, mode: 0o440, optional: true }
            ),
        ]
    );
    assert_eq!(
        exec(run).secretenv,
        [pb::SecretEnv { id: "tok".into(), name: "TOKEN".into(), optional: false }]
    );
    assert!(run.name().ends_with("echo ****"), "secret env values are masked in the name: {}", run.name());
    assert!(run.metadata.caps.contains_key("exec.secretenv"));
    let err = conv_err("FROM busybox\nRUN --mount=type=secret,required true\n").await;
    assert!(err.to_string().contains("one of source, target required"), "{err}");
}

#[tokio::test]
async fn ssh_mounts_get_the_agent_socket_and_env() {
    let g = graph(&conv("FROM busybox\nRUN --mount=type=ssh ssh-add -l\n").await);
    let run = result(&g);
    let ssh = exec(run).mounts.iter().find(|m| m.mount_type == pb::MountType::Ssh as i32).unwrap();
    assert_eq!(ssh.dest, "/run/buildkit/ssh_agent.0");
    assert_eq!(
        ssh.ssh_opt,
        Some(pb::SshOpt { id: String::new(), uid: 0, gid: 0, mode: 0o600, optional: true })
    );
    assert!(meta(run).env.contains(&"SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0".to_owned()));
    let err = conv_err("FROM busybox\nRUN --mount=type=ssh,source=x true\n").await;
    assert_eq!(err.to_string(), "Dockerfile:2: ssh does not support source");
}

#[tokio::test]
async fn bind_mounts_read_other_stages_and_the_context() {
    let c = conv("FROM busybox AS build\nRUN make\nFROM busybox\nRUN --mount=from=build,source=/out,target=/in --mount=target=/src,rw ls /in /src\n").await;
    let g = graph(&c);
    let run = result(&g);
    let e = exec(run);
    let mounts: Vec<(&str, &str, bool, i64)> =
        e.mounts.iter().map(|m| (m.dest.as_str(), m.selector.as_str(), m.readonly, m.output)).collect();
    assert_eq!(mounts, [("/", "", false, 0), ("/in", "/out", true, -1), ("/src", "", false, -1)]);
    assert_eq!(input_vertex(&g, run, e.mounts[1].input as usize).name(), "[build 2/2] RUN make");
    assert_eq!(source(input_vertex(&g, run, e.mounts[2].input as usize)).identifier, "local://context");
    assert!(run.metadata.caps.contains_key("exec.mount.bind"));
    assert!(run.metadata.caps.contains_key("exec.mount.selector"));
    let err =
        conv_err("FROM busybox AS a\nRUN --mount=from=b,target=/x true\nFROM alpine AS b\nFROM a\n").await;
    assert_eq!(
        err.to_string(),
        "Dockerfile:2: cannot mount from stage \"b\" to \"/x\", stage needs to be defined before current command"
    );
    let err = conv_err("FROM busybox\nWORKDIR /\nRUN --mount=type=bind,target=. true\n").await;
    assert_eq!(err.to_string(), "Dockerfile:3: invalid mount target \"/\"");
}

#[tokio::test]
async fn tmpfs_mounts_are_sized_and_need_the_whole_context() {
    let g = graph(&conv("FROM busybox\nCOPY a /a\nRUN --mount=type=tmpfs,target=/tmp,size=1m true\n").await);
    let tmpfs = &exec(result(&g)).mounts[1];
    assert_eq!((tmpfs.dest.as_str(), tmpfs.input, tmpfs.output), ("/tmp", -1, -1));
    assert_eq!(tmpfs.tmpfs_opt, Some(pb::TmpfsOpt { size: 1 << 20 }));
    assert!(!context_source(&g).attrs.contains_key("local.followpaths"));
}

#[tokio::test]
async fn network_and_security_flags_and_daemon_options_reach_the_exec() {
    let mut o = opts();
    o.extra_hosts = vec![HostIp { host: "db".into(), ip: "10.0.0.2".into() }];
    o.hostname = "builder".into();
    o.ulimits = vec![Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 }];
    o.shm_size = 64 << 20;
    o.cgroup_parent = "kiln".into();
    let g = graph(
        &conv_with(
            "FROM busybox\nRUN --network=none --security=insecure true\nRUN --network=host true\n",
            &o,
        )
        .await,
    );
    let first = by_name(&g, "[2/3] RUN --network=none --security=insecure true");
    let e = exec(first);
    assert_eq!((e.network, e.security), (NetMode::None as i32, pb::SecurityMode::Insecure as i32));
    let m = meta(first);
    assert_eq!(m.extra_hosts, [pb::HostIp { host: "db".into(), ip: "10.0.0.2".into() }]);
    assert_eq!((m.hostname.as_str(), m.cgroup_parent.as_str()), ("builder", "kiln"));
    assert_eq!(m.ulimit, [pb::Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 }]);
    let shm = e.mounts.iter().find(|m| m.dest == "/dev/shm").unwrap();
    assert_eq!(shm.tmpfs_opt, Some(pb::TmpfsOpt { size: 64 << 20 }));
    for cap in ["exec.meta.network", "exec.meta.security", "exec.meta.ulimit"] {
        assert!(first.metadata.caps.contains_key(cap), "{cap}");
    }
    assert_eq!(exec(result(&g)).network, NetMode::Host as i32);

    let mut o = opts();
    o.force_network_mode = NetMode::None;
    let g = graph(&conv_with("FROM busybox\nRUN true\n", &o).await);
    assert_eq!(exec(result(&g)).network, NetMode::None as i32);
}

#[tokio::test]
async fn devices_need_the_labs_frontend() {
    let err = conv_err("FROM busybox\nRUN --device=nvidia.com/gpu=all true\n").await;
    assert_eq!(
        err.to_string(),
        "Dockerfile:2: device feature is only supported in Dockerfile frontend 1.14.0-labs or later"
    );
}

#[tokio::test]
async fn a_plain_heredoc_runs_its_body_in_the_shell() {
    let c = conv("FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\n").await;
    let g = graph(&c);
    let run = result(&g);
    assert_eq!(run.name(), "[2/2] RUN <<EOF (echo a...)");
    assert_eq!(meta(run).args, ["/bin/sh", "-c", "echo a\necho b\n"]);
}

#[tokio::test]
async fn a_heredoc_with_a_shebang_runs_as_a_mounted_script() {
    let g =
        graph(&conv("FROM busybox\nRUN <<-SCRIPT\n\t#!/usr/bin/env python3\n\tprint(1)\n\tSCRIPT\n").await);
    let run = result(&g);
    assert_eq!(meta(run).args, ["/bin/sh", "-c", "/dev/pipes/SCRIPT"]);
    let pipe = exec(run).mounts.iter().find(|m| m.dest == "/dev/pipes/").unwrap();
    assert!(pipe.readonly);
    assert_eq!(pipe.selector, "/");
    let script = by_name(&g, "[internal] preparing inline document");
    let Some(Action::Mkfile(m)) = &file(script).actions[0].action else { panic!() };
    assert_eq!((m.path.as_str(), m.mode), ("/SCRIPT", 0o755));
    assert_eq!(String::from_utf8_lossy(&m.data), "#!/usr/bin/env python3\nprint(1)\n");
}

#[tokio::test]
async fn heredocs_feeding_commands_are_passed_to_the_shell_whole() {
    let g = graph(&conv("FROM busybox\nRUN cat <<EOF > /x\nhello\nEOF\n").await);
    assert_eq!(meta(result(&g)).args, ["/bin/sh", "-c", "cat <<EOF > /x\nhello\nEOF"]);
}

#[tokio::test]
async fn no_cache_stages_ignore_the_cache() {
    let df = "FROM busybox AS a\nRUN one\nFROM a AS b\nRUN two\nCOPY x /x\n";
    let mut o = opts();
    o.no_cache_stages = Some(vec!["B".into()]);
    let c = conv_with(df, &o).await;
    let g = graph(&c);
    assert!(!by_name(&g, "[a 2/2] RUN one").ignore_cache());
    assert!(by_name(&g, "[b 1/2] RUN two").ignore_cache());
    assert!(result(&g).ignore_cache());
    let ret = c.definition.def.last().unwrap();
    assert!(c.definition.metadata[&digest_of(ret)].caps.contains_key("meta.ignorecache"));
    o.no_cache_stages = Some(Vec::new());
    let g = graph(&conv_with(df, &o).await);
    assert!(by_name(&g, "[a 2/2] RUN one").ignore_cache());
}

#[tokio::test]
async fn multi_platform_builds_name_the_platform() {
    let mut o = opts();
    o.multi_platform = true;
    o.target_platform = Some(arm64());
    let g = graph(&conv_with("FROM --platform=$BUILDPLATFORM busybox\nARG TARGETARCH\nRUN echo\n", &o).await);
    assert_eq!(names(&g)[1], "[linux/amd64->arm64 2/2] RUN echo");
    assert!(names(&g)[0].starts_with("[linux/amd64 1/2] FROM "));
}

#[tokio::test]
async fn an_image_for_another_supported_platform_is_kept_when_the_target_is_implicit() {
    let c = conv("FROM amd64only\n").await;
    assert_eq!(config(&c)["architecture"], "amd64");
    let mut o = opts();
    o.build_platform = arm64();
    let c = conv_with("FROM amd64only\n", &o).await;
    assert!(rules(&c).contains(&"InvalidBaseImagePlatform"));
    let w = c.warnings.iter().find(|w| w.rule.name == "InvalidBaseImagePlatform").unwrap();
    assert_eq!(
        w.message,
        "Base image amd64only was pulled with platform \"linux/amd64\", expected \"linux/arm64\" for current build"
    );
}

#[tokio::test]
async fn ops_point_back_to_their_dockerfile_lines() {
    let mut o = opts();
    o.dockerfile_name = "build.Dockerfile".into();
    let c = conv_with("FROM busybox\n\nRUN echo \\\n  hi\n", &o).await;
    let source = c.definition.source.clone().unwrap();
    assert_eq!(source.infos[0].filename, "build.Dockerfile");
    assert_eq!(source.infos[0].language, "Dockerfile");
    let run_digest = &graph(&c).vertices[1].digest;
    let lines: Vec<i32> =
        source.locations[run_digest].locations[0].ranges.iter().map(|r| r.start.unwrap().line).collect();
    assert_eq!(lines, [3, 4]);
}
