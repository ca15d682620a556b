//! COPY and ADD.

use super::*;

#[tokio::test]
async fn copy_reads_the_context_with_dockerignore_and_follow_paths() {
    let mut o = opts();
    o.dockerignore = vec!["*.md".into(), "tmp".into()];
    let c = conv_with("FROM busybox\nWORKDIR /app\nCOPY src/ ./\nCOPY go.mod go.sum ./\n", &o).await;
    let g = graph(&c);
    let ctx = context_source(&g);
    assert_eq!(ctx.identifier, "local://context");
    assert_eq!(ctx.attrs["local.session"], "sess1");
    assert_eq!(ctx.attrs["local.sharedkeyhint"], "context");
    assert_eq!(ctx.attrs["local.excludepatterns"], r#"["*.md","tmp"]"#);
    assert_eq!(ctx.attrs["local.followpaths"], r#"["go.mod","go.sum","src"]"#);
    let copy = by_name(&g, "[3/4] COPY src/ ./");
    let a = copy_action(copy, 0);
    assert_eq!((a.src.as_str(), a.dest.as_str(), a.mode), ("/src", "/app/", -1));
    assert!(
        a.follow_symlink
            && a.dir_copy_contents
            && a.allow_wildcard
            && a.allow_empty_wildcard
            && a.create_dest_path
    );
    assert!(!a.attempt_unpack_docker_compatibility);
    let two = by_name(&g, "[4/4] COPY go.mod go.sum ./");
    let actions: Vec<(i64, i64, i64)> =
        file(two).actions.iter().map(|a| (a.input, a.secondary_input, a.output)).collect();
    assert_eq!(actions, [(0, 1, -1), (2, 1, 0)]);
    assert_eq!(config(&c)["history"][4]["created_by"], "COPY go.mod go.sum ./ # buildkit");

    let g = graph(&conv("FROM busybox\nCOPY . /src\n").await);
    assert!(!context_source(&g).attrs.contains_key("local.followpaths"), "the whole context is needed");
}

#[tokio::test]
async fn copy_owner_and_mode_flags() {
    let c =
        conv("FROM busybox\nARG U=1000\nCOPY --chown=$U:$U --chmod=0755 a /b\nCOPY --chmod=u+x,g-w c /d\n")
            .await;
    let g = graph(&c);
    let a = copy_action(by_name(&g, "[2/3] COPY --chown=1000:1000 --chmod=0755 a /b"), 0);
    assert_eq!(a.mode, 0o755);
    let owner = a.owner.as_ref().unwrap();
    assert_eq!(owner.user.as_ref().unwrap().user, Some(pb::user_opt::User::ById(1000)));
    assert_eq!(owner.group.as_ref().unwrap().user, Some(pb::user_opt::User::ById(1000)));
    let b = copy_action(result(&g), 0);
    assert_eq!((b.mode, b.mode_str.as_str()), (0, "u+x,g-w"));
    assert_eq!(config(&c)["history"][3]["created_by"], "COPY --chown=1000:1000 --chmod=0755 a /b # buildkit");
    let err = conv_err("FROM busybox\n\nCOPY --chmod=8 a /b\n").await;
    assert_eq!(
        err.to_string(),
        "Dockerfile:3: invalid chmod parameter: '8'. it should be octal string and between 0 and 07777"
    );
}

#[tokio::test]
async fn copy_link_builds_on_scratch_and_merges() {
    let c = conv("FROM busybox\nCOPY --link a /a\n").await;
    let g = graph(&c);
    let merge = result(&g);
    let Some(pb::op::Op::Merge(m)) = merge.operation() else { panic!("{:?}", names(&g)) };
    assert_eq!(m.inputs.len(), 2);
    assert_eq!(merge.name(), "[2/2] LINK COPY --link a /a");
    let copy = input_vertex(&g, merge, 1);
    assert_eq!(copy.name(), "[2/2] COPY --link a /a");
    assert_eq!(file(copy).actions[0].input, -1, "the copy starts from scratch");
    let (pg_copy, pg_merge) =
        (copy.metadata.progress_group.clone().unwrap(), merge.metadata.progress_group.clone().unwrap());
    assert_eq!(pg_copy.id, pg_merge.id);
    assert_eq!((pg_copy.weak, pg_merge.weak), (true, false));
    assert_eq!(pg_copy.name, "[2/2] COPY --link a /a");
    assert!(merge.metadata.caps.contains_key("mergeop"));
    // With --chmod, or on scratch, there is no merge.
    let g = graph(&conv("FROM busybox\nCOPY --link --chmod=644 a /a\n").await);
    assert!(matches!(result(&g).operation(), Some(pb::op::Op::File(_))));
    let g = graph(&conv("FROM scratch\nCOPY --link a /a\n").await);
    assert!(matches!(result(&g).operation(), Some(pb::op::Op::File(_))));
}

#[tokio::test]
async fn copy_parents_and_exclude_filter_what_is_copied() {
    let g = graph(
        &conv("FROM busybox\nCOPY --parents --exclude=*.tmp src/./app/main.go logs/*.txt /dst/\n").await,
    );
    let copy = result(&g);
    let first = copy_action(copy, 0);
    assert_eq!(
        (first.src.as_str(), first.include_patterns.clone()),
        ("/src", vec!["app/main.go".to_owned()])
    );
    assert_eq!(first.required_paths, ["/src/app/main.go"]);
    assert_eq!(first.exclude_patterns, ["*.tmp"]);
    let second = copy_action(copy, 1);
    assert_eq!((second.src.as_str(), second.include_patterns.clone()), ("/", vec!["logs/*.txt".to_owned()]));
    assert!(second.required_paths.is_empty(), "wildcards make nothing required");
}

#[tokio::test]
async fn copy_heredocs_become_inline_files() {
    let c =
        conv("FROM busybox\nARG NAME=world\nCOPY <<EOF <<'RAW' /etc/\nhello $NAME\nEOF\nkeep $NAME\nRAW\n")
            .await;
    let g = graph(&c);
    let copy = result(&g);
    let inline: Vec<&Vertex> =
        g.vertices.iter().filter(|v| v.name() == "[internal] preparing inline document").collect();
    assert_eq!(inline.len(), 2);
    let data: Vec<String> = inline
        .iter()
        .map(|v| match &file(v).actions[0].action {
            Some(Action::Mkfile(m)) => format!("{}={}", m.path, String::from_utf8_lossy(&m.data)),
            _ => panic!(),
        })
        .collect();
    let mut data = data;
    data.sort();
    assert_eq!(data, ["/EOF=hello world\n", "/RAW=keep $NAME\n"]);
    assert_eq!(copy_action(copy, 0).src, "/EOF");
    assert_eq!(copy_action(copy, 1).dest, "/etc/");
    assert_eq!(config(&c)["history"][3]["created_by"], "COPY <<EOF <<RAW /etc/ # buildkit");
}

#[tokio::test]
async fn add_unpacks_local_archives_unless_told_not_to() {
    let g = graph(&conv("FROM busybox\nADD app.tar.gz /opt/\nADD --unpack=false b.tar /b\n").await);
    assert!(copy_action(by_name(&g, "[2/3] ADD app.tar.gz /opt/"), 0).attempt_unpack_docker_compatibility);
    assert!(!copy_action(result(&g), 0).attempt_unpack_docker_compatibility);
    assert_eq!(context_source(&g).attrs["local.followpaths"], r#"["app.tar.gz","b.tar"]"#);
}

#[tokio::test]
async fn add_of_a_url_downloads_it() {
    let sum = format!("sha256:{}", "ab".repeat(32));
    let df = format!(
        "FROM busybox\nADD --checksum={sum} https://example.com/dl/tool.tar.gz?x=1 /usr/local/bin/\n"
    );
    let g = graph(&conv(&df).await);
    let name = format!("[2/2] ADD --checksum={sum} https://example.com/dl/tool.tar.gz?x=1 /usr/local/bin/");
    let http: Vec<&Vertex> = g.vertices.iter().filter(|v| v.name() == name).collect();
    assert_eq!(http.len(), 2, "the download and the copy share the step's name");
    let s = source(http[0]);
    assert_eq!(s.identifier, "https://example.com/dl/tool.tar.gz?x=1");
    assert_eq!(
        (s.attrs["http.filename"].as_str(), s.attrs["http.checksum"].as_str()),
        ("tool.tar.gz", sum.as_str())
    );
    let a = copy_action(result(&g), 0);
    assert_eq!((a.src.as_str(), a.dest.as_str()), ("/tool.tar.gz", "/usr/local/bin/"));
    assert!(!a.attempt_unpack_docker_compatibility, "downloads are not unpacked");
    assert!(!names(&g).contains(&"[internal] load build context".to_owned()));
}

#[tokio::test]
async fn add_of_a_git_repository_clones_it() {
    let g = graph(
        &conv(
            "FROM busybox\nADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.29.0:docs /src\n",
        )
        .await,
    );
    let git = g.vertices.iter().find(|v| source_is(v, "git://")).unwrap();
    let s = source(git);
    assert_eq!(s.identifier, "git://github.com/moby/buildkit.git#v0.29.0:docs");
    assert_eq!(s.attrs["git.fullurl"], "https://github.com/moby/buildkit.git");
    assert_eq!(s.attrs["git.keepgitdir"], "true");
    let a = copy_action(result(&g), 0);
    assert_eq!((a.src.as_str(), a.dest.as_str()), ("/", "/src"));
}

#[tokio::test]
async fn copy_and_add_source_errors_name_the_line() {
    let cases = [
        ("FROM busybox\nCOPY https://example.com/a /a\n", "Dockerfile:2: source can't be a URL for COPY"),
        (
            "FROM busybox\nCOPY git@github.com:a/b.git /a\n",
            "Dockerfile:2: source can't be a git ref for COPY",
        ),
        (
            "FROM busybox\nADD --checksum=sha256:00 a /a\n",
            "Dockerfile:2: checksum requires HTTP(S) or Git sources",
        ),
        (
            "FROM busybox\nADD --checksum=sha256:00 https://x/a https://x/b /\n",
            "Dockerfile:2: checksum can't be specified for multiple sources",
        ),
        ("FROM busybox\nADD --checksum=md5:00 https://x/a /\n", "Dockerfile:2: unsupported digest algorithm"),
        ("FROM busybox\nADD https://x/y.git?bogus=1 /\n", "Dockerfile:2: unexpected query \"bogus\""),
    ];
    for (df, want) in cases {
        assert_eq!(conv_err(df).await.to_string(), want, "{df}");
    }
}
