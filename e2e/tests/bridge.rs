//! The LLBBridge read calls against a running kilnd, driven the way buildx's
//! gateway client drives them: `Control.Solve` with neither frontend nor
//! definition registers a forwarded build, then LLBBridge calls carry its
//! ref in the `buildkit-controlapi-buildid` header (docs/protocol.md §2.2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_e2e::grpc::bridge_for;
use kiln_e2e::{Kilnd, Registry, TestEnv, repo_and_tag, unique};
use kiln_proto::buildkit::moby::buildkit::v1::control_client::ControlClient;
use kiln_proto::buildkit::moby::buildkit::v1::frontend as fe;
use kiln_proto::buildkit::moby::buildkit::v1::{SolveRequest, SolveResponse};
use kiln_proto::buildkit::pb;
use prost::Message;
use tonic::transport::Channel;

/// A FileOp on scratch: `/dir/hello.txt`, `/dir/b.md` and `/dir/sub/deep/x.txt`.
fn files_definition() -> pb::Definition {
    let mkdir = |path: &str, input: i64| pb::FileAction {
        input,
        secondary_input: -1,
        output: -1,
        action: Some(pb::file_action::Action::Mkdir(pb::FileActionMkDir {
            path: path.into(),
            mode: 0o755,
            make_parents: true,
            timestamp: -1,
            ..Default::default()
        })),
    };
    let mkfile = |path: &str, data: &[u8], input: i64| pb::FileAction {
        input,
        secondary_input: -1,
        output: -1,
        action: Some(pb::file_action::Action::Mkfile(pb::FileActionMkFile {
            path: path.into(),
            mode: 0o644,
            data: data.to_vec(),
            timestamp: -1,
            ..Default::default()
        })),
    };
    // Inputs past the op's own (it has none) name earlier actions' results.
    let mut actions = vec![
        mkdir("/dir/sub/deep", -1),
        mkfile("/dir/hello.txt", b"hello from a solved ref\n", 0),
        mkfile("/dir/b.md", b"# b\n", 1),
        mkfile("/dir/sub/deep/x.txt", b"x", 2),
    ];
    actions.last_mut().unwrap().output = 0;
    let file =
        pb::Op { op: Some(pb::op::Op::File(pb::FileOp { actions })), ..Default::default() }.encode_to_vec();
    let digest = kiln_e2e::llb::digest_of(&file);
    let last = pb::Op { inputs: vec![pb::Input { digest, index: 0 }], ..Default::default() }.encode_to_vec();
    pb::Definition { def: vec![file, last], ..Default::default() }
}

fn names(entries: &[kiln_proto::buildkit::fsutil::types::Stat]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn a_forwarded_build_reads_files_of_its_refs_and_resolves_images() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let addr = kilnd.addr.trim_start_matches("tcp://").to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let build_ref = unique("bridge");
        let mut control = ControlClient::new(channel.clone());
        let solve = tokio::spawn({
            let build_ref = build_ref.clone();
            async move { control.solve(SolveRequest { r#ref: build_ref, ..Default::default() }).await }
        });
        let mut bridge = bridge_for(channel.clone(), &build_ref);

        let pong = bridge.ping(fe::PingRequest {}).await.unwrap().into_inner();
        let caps: Vec<&str> = pong.frontend_api_caps.iter().map(|c| c.id.as_str()).collect();
        for cap in
            ["readfile", "readdir", "statfile", "gateway.evaluate", "resolveimage", "source.metaresolver"]
        {
            assert!(caps.contains(&cap), "Ping lacks {cap}: {caps:?}");
        }

        let solved = bridge
            .solve(fe::SolveRequest {
                definition: Some(files_definition()),
                allow_result_array_ref: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let Some(fe::result::Result::Ref(r)) = solved.result.and_then(|r| r.result) else {
            panic!("Solve returned no ref");
        };
        let id = r.id;
        assert!(!id.is_empty());

        // ReadFile: the whole file, then a range of it.
        let read = |path: &str, range: Option<fe::FileRange>| fe::ReadFileRequest {
            r#ref: id.clone(),
            file_path: path.into(),
            range,
            ..Default::default()
        };
        let data = bridge.read_file(read("dir/hello.txt", None)).await.unwrap().into_inner().data;
        assert_eq!(data, b"hello from a solved ref\n");
        let range = Some(fe::FileRange { offset: 6, length: 4 });
        let data = bridge.read_file(read("/dir/hello.txt", range)).await.unwrap().into_inner().data;
        assert_eq!(data, b"from");
        let err = bridge.read_file(read("dir/missing.txt", None)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        assert!(err.message().contains("dir/missing.txt"), "{err}");

        // ReadDir: direct entries in order; a pattern keeps matches and the
        // directories that hold them.
        let list = |dir: &str, pattern: &str| fe::ReadDirRequest {
            r#ref: id.clone(),
            dir_path: dir.into(),
            include_pattern: pattern.into(),
            ..Default::default()
        };
        let entries = bridge.read_dir(list("dir", "")).await.unwrap().into_inner().entries;
        assert_eq!(names(&entries), ["b.md", "hello.txt", "sub"]);
        let hello = &entries[1];
        assert_eq!((hello.mode, hello.size), (0o644, 24));
        assert_eq!(entries[2].mode & (1 << 31), 1 << 31, "sub is a directory in Go FileMode bits");
        let entries = bridge.read_dir(list("/dir", "**/*.txt")).await.unwrap().into_inner().entries;
        assert_eq!(names(&entries), ["hello.txt", "sub"]);

        // StatFile, and a missing path.
        let stat =
            |path: &str| fe::StatFileRequest { r#ref: id.clone(), path: path.into(), ..Default::default() };
        let st = bridge.stat_file(stat("dir/b.md")).await.unwrap().into_inner().stat.unwrap();
        assert_eq!((st.path.as_str(), st.size, st.mode), ("b.md", 4, 0o644));
        let err = bridge.stat_file(stat("dir/nothing")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

        // An unknown ref fails for every read call.
        let err = bridge
            .read_file(fe::ReadFileRequest {
                r#ref: "no-such-ref".into(),
                file_path: "x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        assert!(err.message().contains("no-such-ref"), "{err}");
        bridge.evaluate(fe::EvaluateRequest { r#ref: id.clone() }).await.unwrap();
        let err = bridge.evaluate(fe::EvaluateRequest { r#ref: "no-such-ref".into() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

        // ResolveImageConfig answers with the digest the registry serves.
        let (name, tag) = repo_and_tag(&env.base_image);
        let manifest = Registry::plain().manifest(name, tag).unwrap();
        let resolved = bridge
            .resolve_image_config(fe::ResolveImageConfigRequest {
                r#ref: env.base_image.clone(),
                platform: Some(pb::Platform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    ..Default::default()
                }),
                resolve_mode: "default".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resolved.digest, manifest.digest);
        let config: serde_json::Value = serde_json::from_slice(&resolved.config).unwrap();
        assert_eq!(config["architecture"], "amd64", "{config}");
        assert_eq!(config["rootfs"]["type"], "layers", "{config}");
        let err = bridge
            .resolve_image_config(fe::ResolveImageConfigRequest {
                r#ref: format!("{}/kiln-test/does-not-exist:1", env.registry),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(err.message().contains("does-not-exist"), "{err}");

        // ResolveSourceMeta: images resolve the same way; other sources come back as sent.
        let image_op =
            pb::SourceOp { identifier: format!("docker-image://{}", env.base_image), ..Default::default() };
        let meta = bridge
            .resolve_source_meta(fe::ResolveSourceMetaRequest {
                source: Some(image_op.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(meta.source, Some(image_op));
        let image = meta.image.unwrap();
        assert_eq!(image.digest, manifest.digest);
        assert_eq!(image.config, resolved.config);
        let local_op = pb::SourceOp { identifier: "local://context".into(), ..Default::default() };
        let meta = bridge
            .resolve_source_meta(fe::ResolveSourceMetaRequest {
                source: Some(local_op.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((meta.source, meta.image), (Some(local_op), None));

        bridge
            .r#return(fe::ReturnRequest {
                result: Some(fe::Result {
                    result: Some(fe::result::Result::Ref(fe::Ref { id, def: None })),
                    ..Default::default()
                }),
                error: None,
            })
            .await
            .unwrap();
        let response: SolveResponse = solve.await.unwrap().unwrap().into_inner();
        assert!(response.exporter_response.is_empty(), "{response:?}");
    });
    assert!(!kilnd.daemon.log_text().contains("panicked"), "{}", kilnd.daemon.log_text());
}
