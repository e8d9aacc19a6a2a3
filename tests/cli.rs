//! The binary's configuration errors: exit status and messages an operator can act on.

use std::process::Command;

fn leadsync(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leadsync"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("LEADSYNC_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn unknown_environment_key_is_named() {
    let (ok, text) = leadsync(
        &["setup"],
        &[
            ("LEADSYNC_SOURCE__URL", "postgres://u:pw@127.0.0.1:1/x"),
            ("LEADSYNC_SLOT__NMAE", "x"),
        ],
    );
    assert!(!ok);
    assert!(
        text.contains("slot.nmae") && text.contains("LEADSYNC_SLOT__NMAE"),
        "{text}"
    );
}

#[test]
fn missing_url_says_how_to_give_it() {
    let (ok, text) = leadsync(&["assess"], &[]);
    assert!(!ok);
    assert!(
        text.contains("source.url") && text.contains("LEADSYNC_SOURCE__URL"),
        "{text}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let (ok, text) = leadsync(&["--config", "/nonexistent/leadsync.toml", "setup"], &[]);
    assert!(!ok);
    assert!(text.contains("/nonexistent/leadsync.toml"), "{text}");
}

#[test]
fn unreachable_database_never_prints_the_password() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://app:hunter2@127.0.0.1:{port}/crm");
    let (ok, text) = leadsync(&["setup"], &[("LEADSYNC_SOURCE__URL", &url)]);
    assert!(!ok);
    assert!(text.contains("cannot connect"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// The first line of the script `setup --print-grants` prints.
const SCRIPT_START: &str = "-- leadsync: the installer and runtime database roles";

/// The script `setup --print-grants` prints runs as a superuser: a name with a newline (or
/// anything but a plain identifier) is refused before a line is printed, wherever it comes
/// from.
#[test]
fn print_grants_refuses_names_that_would_inject_sql() {
    let injected = "rt\nALTER ROLE rt SUPERUSER; --";
    for (args, env, key) in [
        (
            vec!["setup", "--print-grants", "--runtime-role", injected],
            vec![],
            "--runtime-role",
        ),
        (
            vec!["setup", "--print-grants", "--installer-role", injected],
            vec![],
            "--installer-role",
        ),
        (
            vec!["setup", "--print-grants"],
            vec![("LEADSYNC_TARGET__SCHEMA", injected)],
            "target.schema",
        ),
        (
            vec!["setup", "--print-grants"],
            vec![("LEADSYNC_SOURCE__SCHEMA", "public\nGRANT ALL")],
            "source.schema",
        ),
    ] {
        let (ok, text) = leadsync(&args, &env);
        assert!(!ok, "{args:?} {env:?}: {text}");
        assert!(text.contains(key), "{text}");
        assert!(
            !text.contains(SCRIPT_START),
            "a line of the script was printed: {text}"
        );
    }
    let (ok, text) = leadsync(&["setup", "--print-grants"], &[]);
    assert!(ok && text.contains(SCRIPT_START), "{text}");
}
