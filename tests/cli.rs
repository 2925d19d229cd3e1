//! The command line is a public interface: every option documented with its
//! environment variable, bad values refused with one line and exit status 2.

mod support;

use std::process::{Command, Output};

use support::{BIN, Proxy};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// One option as documented: its flag, its environment variable, and its
/// default (None: no default, such as "none", "off", "required", or one that is
/// worked out, such as "learned from GitLab").
#[derive(Debug, PartialEq)]
struct Documented {
    flag: String,
    env: String,
    default: Option<String>,
}

/// The first `code span` of a Markdown table cell.
fn code_span(cell: &str) -> Option<String> {
    let rest = cell.split_once('`')?.1;
    Some(rest.split_once('`')?.0.to_owned())
}

/// The README's `## Options` table, row by row (`| option | env | default | meaning |`).
fn readme_options() -> Vec<Documented> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## Options\n")
        .nth(1)
        .expect("README has an Options section")
        .split("\n## ")
        .next()
        .unwrap();
    let rows: Vec<Documented> = section
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|row| {
            // Cells are separated by " | "; `\|` inside a cell is an escaped pipe.
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            assert!(cells.len() >= 4, "README options row with too few cells: {row}");
            let flag = code_span(cells[0]).unwrap();
            let flag = flag.split(' ').next().unwrap().to_owned();
            let env = code_span(cells[1]).unwrap_or_else(|| panic!("{flag}: no variable in the README"));
            Documented {
                flag,
                env,
                default: code_span(cells[2]),
            }
        })
        .collect();
    assert!(rows.len() > 40, "only {} README option rows found", rows.len());
    rows
}

/// `serve --help`, option by option: each block runs from its flag's line to the next flag's.
fn help_options(help: &str) -> Vec<Documented> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        // `      --listen <ADDR>` or `  -h, --help`
        let long = trimmed
            .strip_prefix("--")
            .or_else(|| trimmed.split_once(", --").map(|(_, rest)| rest));
        match long {
            Some(rest) if indent <= 6 && trimmed.starts_with('-') => {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                blocks.push((format!("--{name}"), line.to_owned()));
            }
            _ => {
                if let Some((_, block)) = blocks.last_mut() {
                    block.push('\n');
                    block.push_str(line);
                }
            }
        }
    }
    blocks
        .into_iter()
        .filter(|(flag, _)| flag != "--help")
        .map(|(flag, block)| {
            let between = |open: &str| {
                let rest = block.split_once(open)?.1;
                Some(rest.split_once(']')?.0.to_owned())
            };
            let env = between("[env: ")
                .unwrap_or_else(|| panic!("{flag} has no environment variable in --help:\n{block}"))
                .trim_end_matches('=')
                .to_owned();
            Documented {
                env,
                default: between("[default: "),
                flag,
            }
        })
        .collect()
}

/// The README's options table and `serve --help` say the same: every option of
/// one is in the other, with the same variable and the same default.
#[test]
fn help_and_readme_document_the_same_options() {
    let out = run(&["serve", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let in_help = help_options(&help);
    let in_readme = readme_options();
    assert!(
        in_help.len() > 40,
        "only {} options parsed from --help:\n{help}",
        in_help.len()
    );
    for documented in &in_readme {
        let shown = in_help
            .iter()
            .find(|o| o.flag == documented.flag)
            .unwrap_or_else(|| panic!("{} is in the README but not in --help:\n{help}", documented.flag));
        assert_eq!(shown, documented, "--help (left) and the README (right) differ");
    }
    for shown in &in_help {
        assert!(
            in_readme.iter().any(|d| d.flag == shown.flag),
            "{} is in --help but not in the README's options table",
            shown.flag
        );
    }
    for (i, d) in in_readme.iter().enumerate() {
        assert!(
            !in_readme[..i].iter().any(|e| e.flag == d.flag),
            "{} is twice in the README",
            d.flag
        );
    }
    assert!(help.contains("RUST_LOG"), "{help}");
    let top = run(&["--help"], &[]);
    assert!(String::from_utf8(top.stdout).unwrap().contains("serve"));
}

/// Arguments, environment, and a word the one-line error must contain.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_values_exit_2_with_one_line() {
    let cases: [Case; 11] = [
        (&["serve"], &[], "--upstream"),
        (&["serve", "--upstream", "ftp://gitlab"], &[], "scheme"),
        (&["serve", "--upstream", "unix:relative.sock"], &[], "absolute"),
        (&["serve", "--upstream", "http://u:p@gitlab:80"], &[], "credentials"),
        (
            &["serve", "--upstream", "http://gitlab:80", "--listen", "nope"],
            &[],
            "--listen",
        ),
        (
            &["serve", "--upstream", "http://gitlab:80", "--header-timeout", "soon"],
            &[],
            "--header-timeout",
        ),
        (
            &[
                "serve",
                "--upstream",
                "http://gitlab:80",
                "--trusted-proxies",
                "10.0.0.0/8,bogus",
            ],
            &[],
            "bogus",
        ),
        (
            &["serve", "--upstream", "http://gitlab:80", "--forwarded-proto", "gopher"],
            &[],
            "gopher",
        ),
        (
            &["serve", "--upstream", "http://gitlab:80"],
            &[("GITLAB_OIDC_PROXY_SHUTDOWN_GRACE", "-5")],
            "--shutdown-grace",
        ),
        (
            &["serve", "--upstream", "http://gitlab:80", "--assets-cache-size", "lots"],
            &[],
            "--assets-cache-size",
        ),
        // The demo's signing keys are public: it never listens beyond loopback.
        (&["demo", "--once", "--listen", "0.0.0.0:0"], &[], "loopback"),
    ];
    for (args, env, needle) in cases {
        let out = run(args, env);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?} gave more than one line:\n{stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn external_url_and_issuer_on_different_paths_exit_2() {
    let clash = run(
        &[
            "serve",
            "--upstream",
            "http://g:80",
            "--external-url",
            "https://a.example/gitlab",
            "--issuer",
            "https://b.example/gitlab",
        ],
        &[],
    );
    let stderr = String::from_utf8(clash.stderr).unwrap();
    assert_eq!(clash.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("share the path") && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn missing_upstream_ca_exits_2() {
    let (_dir, missing) = support::absent_socket();
    let out = run(
        &[
            "serve",
            "--upstream",
            "https://gitlab:443",
            "--upstream-ca",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--upstream-ca"));
}

#[test]
fn occupied_port_exits_1_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(
        &[
            "serve",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            &addr,
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    // The harness tells this apart, for tests that pick a port before starting on it.
    let taken_addr = taken.local_addr().unwrap();
    assert!(Proxy::try_start_on(taken_addr, "http://127.0.0.1:1", &[]).is_none());
}

#[tokio::test]
async fn environment_configures_and_flags_win() {
    let env = [
        ("GITLAB_OIDC_PROXY_FORWARDED_PROTO", "https"),
        ("GITLAB_OIDC_PROXY_LOG_FORMAT", "text"),
    ];
    // Env alone: https. (The harness passes --log-format json, which beats the env's text.)
    let from_env = Proxy::start_with_env("http://127.0.0.1:1", &[], &env);
    assert!(
        from_env.logs().contains(r#""forwarded_proto":"https""#),
        "{}",
        from_env.logs()
    );
    let flag_wins = Proxy::start_with_env("http://127.0.0.1:1", &["--forwarded-proto", "http"], &env);
    assert!(
        flag_wins.logs().contains(r#""forwarded_proto":"http""#),
        "{}",
        flag_wins.logs()
    );
}

/// `demo --once` with its default scenario on ephemeral ports; its stdout.
fn demo_once(profile: &str) -> String {
    let out = run(
        &[
            "demo",
            "--once",
            "--profile",
            profile,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--gitlab-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{profile}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A table row's two cells: the columns are apart by two spaces or more, never within.
fn row(stdout: &str, name: &str) -> [String; 2] {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no row {name:?}:\n{stdout}"));
    let cells: Vec<String> = line[name.len()..]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    cells.try_into().unwrap_or_else(|c| panic!("{name}: {c:?}"))
}

/// The number a cell starts with ("20/50", "0 (+3 ...)").
fn number(cell: &str) -> usize {
    cell.split([' ', '/']).next().unwrap().parse().unwrap()
}

/// The headline of `demo --once` with its default scenario (a busy GitLab, 50
/// jobs). Straight to GitLab STS's fetches miss their 5 s on every version
/// (and on 14.4 the CI kid is missing too); through the proxy every
/// verification passes and no request reaches GitLab during the run.
#[test]
fn demo_once_shows_the_failure_and_the_fix_for_each_profile() {
    for (profile, keys_cache_control) in [
        ("14.4", "max-age=0, private, must-revalidate"),
        ("17.0", "max-age=86400, public, must-revalidate, no-transform=true"),
    ] {
        let stdout = demo_once(profile);
        let context = format!("{profile}:\n{stdout}");
        let row = |name: &str| row(&stdout, name);
        assert!(stdout.contains("Rails workers (a busy GitLab"), "{context}");
        assert!(stdout.contains("50 CI jobs call STS"), "{context}");
        let [direct, proxied] = row("verifications passed");
        assert_eq!(proxied, "50/50", "{context}");
        let passed = number(&direct);
        assert!(direct.ends_with("/50") && passed < 50, "{context}");
        let [timeouts, proxied] = row("  failed: no answer within 5 s");
        assert!(number(&timeouts) > 0 && proxied == "0", "{context}");
        let [unknown_kid, proxied] = row("  failed: kid not in the key set");
        assert_eq!(proxied, "0", "{context}");
        if profile == "14.4" {
            // Both causes, counted apart: the jobs answered in time lack the CI key.
            assert_eq!(passed, 0, "{context}");
            assert!(number(&unknown_kid) > 0, "{context}");
        } else {
            assert_eq!(unknown_kid, "0", "{context}");
        }
        assert_eq!(passed + number(&timeouts) + number(&unknown_kid), 50, "{context}");
        let [direct, proxied] = row("requests that reached GitLab");
        assert!(number(&direct) >= 50 && proxied.starts_with("0 (+"), "{context}");
        let cache_control = [row("Cache-Control, discovery"), row("Cache-Control, key set")];
        let expected = [
            ["max-age=0, private, must-revalidate", "public, max-age=3600"],
            [keys_cache_control, "public, max-age=3600"],
        ];
        assert_eq!(cache_control, expected.map(|r| r.map(str::to_owned)), "{context}");
        // The verdict follows from the stated numbers: a threshold below 50 jobs.
        let threshold = stdout
            .split("start to miss the 5 s from ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no threshold line: {context}"));
        assert!(threshold <= 50, "{context}");
    }
}

#[test]
fn demo_needs_a_free_gitlab_worker() {
    let out = run(&["demo", "--once", "--gitlab-workers", "2", "--gitlab-busy", "2"], &[]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--gitlab-busy"), "{stderr}");
}

/// The demo's options (no environment variables: the demo is run by hand) and
/// their defaults, as the README's demo section lists them.
const DEMO_OPTIONS: [(&str, Option<&str>); 11] = [
    ("--profile", Some("14.4")),
    ("--jobs", Some("50")),
    ("--jobs-spread", Some("1s")),
    ("--gitlab-workers", Some("8")),
    ("--gitlab-busy", Some("6")),
    ("--gitlab-service-time", Some("300ms")),
    ("--once", None),
    ("--listen", Some("127.0.0.1:8080")),
    ("--admin-listen", Some("127.0.0.1:9090")),
    ("--gitlab-listen", Some("127.0.0.1:8081")),
    ("--gitlab-only", None),
];

#[test]
fn demo_help_documents_every_option_with_its_default() {
    let out = run(&["demo", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (flag, default) in DEMO_OPTIONS {
        let name = flag.trim_start_matches('-');
        let block = help
            .split("\n      --")
            .find(|b| b.starts_with(&format!("{name} ")) || b.starts_with(&format!("{name}\n")))
            .unwrap_or_else(|| panic!("{flag} missing from demo --help:\n{help}"));
        if let Some(default) = default {
            assert!(block.contains(&format!("[default: {default}]")), "{flag}:\n{block}");
        }
        assert!(readme.contains(&format!("`{flag}")), "{flag} missing from the README");
    }
    assert!(help.contains("busy GitLab") && help.contains("5 s"), "{help}");
}

/// The allocator is mimalloc as `malloc` itself (README, Performance): it
/// announces itself when asked to, which glibc's malloc cannot.
#[cfg(not(feature = "system-allocator"))]
#[test]
fn mimalloc_is_the_allocator() {
    let out = run(&["--version"], &[("MIMALLOC_VERBOSE", "1")]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mimalloc: process init"), "{stderr}");
}
