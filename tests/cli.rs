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

#[test]
fn demo_once_shows_the_fix_for_each_profile() {
    for profile in ["14.4", "17.0"] {
        let out = run(
            &[
                "demo",
                "--once",
                "--profile",
                profile,
                "--jobs",
                "8",
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
        let row = |name: &str| {
            stdout
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_default()
                .to_owned()
        };
        let passed = row("verifications passed");
        // 14.4 lacks the CI key where discovery points: nothing verifies straight against it.
        let direct = if profile == "14.4" { "0/8" } else { "8/8" };
        assert!(
            passed.contains(direct) && passed.trim_end().ends_with("8/8"),
            "{profile}: {passed}"
        );
        assert!(
            row("Cache-Control, discovery").contains("public, max-age=3600"),
            "{stdout}"
        );
        assert!(row("requests that reached GitLab").contains("16 "), "{stdout}");
    }
}
