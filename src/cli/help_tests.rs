//! `--help` of every command is what it was before the flags were split by domain: the texts under
//! `tests/fixtures/cli/` were captured from the binary built before the split (`env -i clip-serve
//! [COMMAND] --help` and `-h`), and each is compared with what the parser renders now.
//!
//! clap prints an environment twin's current value (`[env: CLIP_SERVE_X=value]`), read when the
//! command is built, so the comparison runs in a child process of this test binary with an empty
//! environment (see [`rerun_alone`]).

use clap::CommandFactory;

use super::Cli;

/// Runs the test `name` (a path under this crate, as `cargo test` names it) again in a child
/// process of this test binary with only `env`; panics unless it ran and passed.
pub(super) fn rerun_alone(name: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a child process: {}\n{stdout}\n{stderr}",
        out.status
    );
}

/// Set in the child process [`rerun_alone`] starts (not a `CLIP_SERVE_*` name: no flag reads it).
pub(super) const CHILD: &str = "CLI_TEST_CHILD";

/// What `clip-serve ARGS...` prints for a help flag.
fn rendered(args: &[&str]) -> String {
    let argv = std::iter::once("clip-serve").chain(args.iter().copied());
    match Cli::command().try_get_matches_from(argv) {
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.render().to_string(),
        other => panic!("{args:?} did not print help: {other:?}"),
    }
}

#[test]
fn help_is_unchanged() {
    if std::env::var_os(CHILD).is_none() {
        return rerun_alone("cli::help_tests::help_is_unchanged", &[(CHILD, "1")]);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cli");
    for (command, file) in [
        (None, "top"),
        (Some("serve"), "serve"),
        (Some("index"), "index"),
        (Some("search"), "search"),
    ] {
        for flag in ["--help", "-h"] {
            let args: Vec<&str> = command.into_iter().chain([flag]).collect();
            let suffix = if flag == "-h" { "h" } else { "help" };
            let path = dir.join(format!("{file}-{suffix}.txt"));
            let want = std::fs::read_to_string(&path).expect("fixture");
            let got = rendered(&args);
            if got != want {
                let line = got
                    .lines()
                    .zip(want.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.lines().count().min(want.lines().count()));
                panic!(
                    "`clip-serve {}` differs from {} from line {}:\n  now:    {:?}\n  before: {:?}",
                    args.join(" "),
                    path.display(),
                    line + 1,
                    got.lines().nth(line),
                    want.lines().nth(line)
                );
            }
        }
    }
}
