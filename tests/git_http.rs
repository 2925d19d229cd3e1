//! A real `git` client clones from and pushes to a real `git http-backend`
//! (smart HTTP, protocol v2 for fetches) through the real proxy binary, over TCP
//! and over a unix socket. The upstream is an in-process hyper server that runs
//! `git http-backend` as a CGI program, streaming both bodies.

mod support;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// No git command may take longer; on expiry its whole process group is killed.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Larger than git's default `http.postBuffer` (1 MiB): the push is sent chunked.
const BIG_FILE: usize = 3 << 20;
/// Branch tips besides `main`: enough `want` lines (~50 bytes each) to push the
/// upload-pack request past 1024 bytes, above which git gzips it.
const TOPIC_BRANCHES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clone_and_push_over_tcp() {
    clone_and_push(Transport::Tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clone_and_push_over_unix_socket() {
    clone_and_push(Transport::Unix).await
}

async fn clone_and_push(t: Transport) {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let git = Git::new(tmp.path().join("home"));
    let root = tmp.path().join("repositories");
    let bare = root.join("group/project.git");
    let initial = create_project(&git, tmp.path(), &bare).await;

    let backend = PathBuf::from(git.ok(tmp.path(), &["--exec-path"]).await.trim()).join("git-http-backend");
    let mut up = upstream(t, move |req| http_backend(req, backend.clone(), root.clone())).await;
    let proxy = Proxy::start(&up.target, &[]);
    let url = proxy.url("/group/project.git");

    // Clone through the proxy: protocol v2, with a gzip-encoded fetch request.
    let clone = tmp.path().join("clone");
    git.ok(tmp.path(), &["clone", "-q", &url, path_str(&clone)]).await;
    assert_cloned(&git, &clone, &initial).await;
    assert_fetch_requests(&drain(&mut up));

    // Commit a large incompressible file and push it back through the proxy,
    // deleting a branch on the way.
    let pushed = commit_and_push(&git, &clone).await;
    assert_push_requests(&drain(&mut up));
    assert_bare_holds(&git, &bare, &pushed).await;

    // And a fresh clone through the proxy gets it all back.
    let again = tmp.path().join("again");
    git.ok(tmp.path(), &["clone", "-q", &url, path_str(&again)]).await;
    assert_eq!(git.ok(&again, &["rev-parse", "HEAD"]).await, pushed.head);
    assert!(
        std::fs::read(again.join("big.bin")).unwrap() == pushed.big,
        "big.bin differs in the second clone"
    );
    assert_eq!(
        std::fs::read_to_string(again.join("README")).unwrap(),
        "initial\nsecond\n"
    );
    eprintln!("{t:?}: clone and push took {:?}", started.elapsed());
}

/// Creates the project at `bare`: an initial commit on main plus distinct topic-branch
/// tips. Returns main's commit (with git's trailing newline).
async fn create_project(git: &Git, dir: &Path, bare: &Path) -> String {
    let scratch = dir.join("scratch");
    git.ok(dir, &["init", "-q", "-b", "main", "scratch"]).await;
    std::fs::write(scratch.join("README"), "initial\n").unwrap();
    git.ok(&scratch, &["add", "README"]).await;
    git.ok(&scratch, &["commit", "-q", "-m", "initial"]).await;
    for i in 0..TOPIC_BRANCHES {
        let msg = format!("topic {i}");
        let oid = git
            .ok(&scratch, &["commit-tree", "main^{tree}", "-p", "main", "-m", &msg])
            .await;
        git.ok(&scratch, &["branch", &format!("topic-{i}"), oid.trim()]).await;
    }
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git.ok(dir, &["clone", "-q", "--bare", "scratch", path_str(bare)]).await;
    git.ok(bare, &["config", "http.receivepack", "true"]).await;
    git.ok(bare, &["rev-parse", "refs/heads/main"]).await
}

/// The clone is at `initial` and has every topic branch.
async fn assert_cloned(git: &Git, clone: &Path, initial: &str) {
    assert_eq!(git.ok(clone, &["rev-parse", "HEAD"]).await, initial);
    let remote_refs = git
        .ok(clone, &["for-each-ref", "--format=%(refname)", "refs/remotes/origin/"])
        .await;
    assert_eq!(
        remote_refs.lines().filter(|r| r.contains("/topic-")).count(),
        TOPIC_BRANCHES,
        "{remote_refs}"
    );
}

/// The clone reached the backend as protocol v2, with its large fetch request gzipped.
fn assert_fetch_requests(seen: &[Seen]) {
    let advert = seen
        .iter()
        .find(|s| s.uri == "/group/project.git/info/refs?service=git-upload-pack")
        .unwrap_or_else(|| panic!("no upload-pack advertisement: {seen:#?}"));
    assert_eq!(advert.method, Method::GET);
    assert_eq!(
        advert.headers["git-protocol"], "version=2",
        "Git-Protocol must reach the backend"
    );
    let fetches: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == Method::POST && s.uri == "/group/project.git/git-upload-pack")
        .collect();
    assert!(fetches.len() >= 2, "ls-refs and fetch: {seen:#?}");
    assert!(
        fetches
            .iter()
            .any(|s| s.headers.get("content-encoding").is_some_and(|v| v == "gzip")),
        "git gzips an upload-pack request over 1 KiB: {fetches:#?}"
    );
}

/// What [`commit_and_push`] pushed.
struct Pushed {
    /// The new tip of main.
    head: String,
    big_oid: String,
    big: Vec<u8>,
}

/// Commits a [`BIG_FILE`] of random bytes and an edit of README in `clone`, and pushes
/// main with topic-0 deleted.
async fn commit_and_push(git: &Git, clone: &Path) -> Pushed {
    let mut big = vec![0u8; BIG_FILE];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut big)
        .unwrap();
    std::fs::write(clone.join("big.bin"), &big).unwrap();
    git.ok(clone, &["add", "big.bin"]).await;
    git.ok(clone, &["commit", "-q", "-m", "add big.bin"]).await;
    std::fs::write(clone.join("README"), "initial\nsecond\n").unwrap();
    git.ok(clone, &["commit", "-q", "-a", "-m", "edit README"]).await;
    let head = git.ok(clone, &["rev-parse", "HEAD"]).await;
    let big_oid = git.ok(clone, &["rev-parse", "HEAD:big.bin"]).await;
    git.ok(clone, &["push", "-q", "origin", "main", ":topic-0"]).await;
    Pushed { head, big_oid, big }
}

/// The push reached the backend chunked, without a Content-Length.
fn assert_push_requests(seen: &[Seen]) {
    let advert = seen
        .iter()
        .find(|s| s.uri == "/group/project.git/info/refs?service=git-receive-pack")
        .unwrap_or_else(|| panic!("no receive-pack advertisement: {seen:#?}"));
    assert_eq!(advert.method, Method::GET);
    let uploads: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == Method::POST && s.uri == "/group/project.git/git-receive-pack")
        .collect();
    let chunked = uploads
        .iter()
        .find(|s| s.headers.get("transfer-encoding").is_some_and(|v| v == "chunked"))
        .unwrap_or_else(|| panic!("the 3 MiB push must arrive chunked: {uploads:#?}"));
    assert!(!chunked.headers.contains_key("content-length"));
    assert_eq!(
        chunked.headers["content-type"],
        "application/x-git-receive-pack-request"
    );
}

/// The bare repository holds exactly what was pushed.
async fn assert_bare_holds(git: &Git, bare: &Path, pushed: &Pushed) {
    assert_eq!(git.ok(bare, &["rev-parse", "refs/heads/main"]).await, pushed.head);
    assert_eq!(git.ok(bare, &["rev-parse", "main:big.bin"]).await, pushed.big_oid);
    let blob = git.run(bare, &["cat-file", "blob", "main:big.bin"]).await;
    assert!(blob.status.success());
    assert!(blob.stdout == pushed.big, "big.bin differs in the bare repository");
    assert_eq!(
        git.ok(bare, &["cat-file", "blob", "main:README"]).await,
        "initial\nsecond\n"
    );
    let gone = git
        .run(bare, &["rev-parse", "--verify", "-q", "refs/heads/topic-0"])
        .await;
    assert!(!gone.status.success(), "topic-0 was deleted by the push");
    git.ok(bare, &["fsck", "--full", "--no-dangling"]).await;
}

// ---------------------------------------------------------------- git client

/// Runs git with a clean environment: no system or user config (HOME is empty),
/// no prompts, no proxies, identity and protocol version on the command line.
struct Git {
    home: PathBuf,
}

impl Git {
    fn new(home: PathBuf) -> Git {
        std::fs::create_dir_all(&home).unwrap();
        Git { home }
    }

    /// Runs `git args` in `dir`, bounded by [`GIT_TIMEOUT`].
    async fn run(&self, dir: &Path, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new("git");
        cmd.current_dir(dir)
            .args(["-c", "protocol.version=2"])
            .args(["-c", "user.name=Proxy Test", "-c", "user.email=test@example.com"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout takes git-remote-http etc. with it.
            .process_group(0);
        let child = cmd.spawn().expect("spawn git");
        let pid = child.id() as i32;
        let wait = tokio::task::spawn_blocking(move || child.wait_with_output());
        match tokio::time::timeout(GIT_TIMEOUT, wait).await {
            Ok(output) => output.unwrap().expect("wait for git"),
            Err(_) => {
                // The whole group: git-remote-http and friends go too.
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                panic!("git {args:?} ran longer than {GIT_TIMEOUT:?}");
            }
        }
    }

    /// Runs git, asserts success and returns its stdout.
    async fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args).await;
        assert!(
            out.status.success(),
            "git {args:?} in {}: {}\n{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every request head the upstream has seen so far.
fn drain(up: &mut Upstream) -> Vec<Seen> {
    std::iter::from_fn(|| up.seen.try_recv().ok()).collect()
}

// ---------------------------------------------------------------- CGI bridge

/// Answers one request with `git http-backend` run as a CGI program (RFC 3875):
/// the request body streams into its stdin, and its stdout, after the CGI header
/// block, streams back as the response body.
async fn http_backend(req: Request<Incoming>, backend: PathBuf, root: PathBuf) -> Response<TestBody> {
    let (parts, mut body) = req.into_parts();
    let mut cmd = tokio::process::Command::new(backend);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        // Our paths hold nothing percent-encoded, so no decoding is needed.
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_ADDR", "127.0.0.1");
    // Content-Type and -Length get their own variables; every other header
    // becomes HTTP_*: HTTP_CONTENT_ENCODING (gzip), HTTP_GIT_PROTOCOL (v2), ...
    // Without CONTENT_LENGTH (a chunked request) the backend reads to EOF.
    for (name, value) in &parts.headers {
        let var = match name.as_str() {
            "content-type" => "CONTENT_TYPE".to_owned(),
            "content-length" => "CONTENT_LENGTH".to_owned(),
            other => format!("HTTP_{}", other.to_ascii_uppercase().replace('-', "_")),
        };
        cmd.env(var, OsStr::from_bytes(value.as_bytes()));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn git http-backend");

    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data()
                && stdin.write_all(&data).await.is_err()
            {
                break;
            }
        }
        // Dropping stdin closes it: EOF ends the request body.
    });

    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut resp = Response::builder();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).await.unwrap() == 0 {
            let status = child.wait().await;
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(full(format!("git http-backend sent no headers: {status:?}")))
                .unwrap();
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a CGI header line");
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.trim()[..3].parse().expect("a CGI status code");
            resp = resp.status(code);
        } else {
            resp = resp.header(name, value.trim());
        }
    }

    // The rest of stdout is the body; a backend that fails ends it with an error.
    let chunks = futures_util::stream::unfold(Some((stdout, child)), |state| async move {
        let (mut stdout, mut child) = state?;
        let mut buf = vec![0u8; 64 << 10];
        match stdout.read(&mut buf).await {
            Ok(0) => match child.wait().await {
                Ok(status) if status.success() => None,
                other => Some((Err(format!("git http-backend: {other:?}").into()), None)),
            },
            Ok(n) => {
                buf.truncate(n);
                let frame = Frame::data(Bytes::from(buf));
                Some((Ok(frame), Some((stdout, child))))
            }
            Err(e) => Some((Err(e.into()), None)),
        }
    });
    resp.body(StreamBody::new(chunks).boxed_unsync()).unwrap()
}
