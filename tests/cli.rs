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

/// A closed port on the loopback: connections are refused at once.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Passwords holding `/ ? #`, `@`, `:` and spaces, given every way leadsync takes one (in a
/// URL, raw or encoded, as a query parameter, in a conninfo string, in a password file),
/// never show: not in a validation error, a connection error, the daemon's retries, nor the
/// debug log of the settings.
#[test]
fn passwords_never_show_in_any_message_or_at_debug_level() {
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    for secret in ["pa/ss?w#rd x", "p@ss:w/rd?#1", "two words here"] {
        let encoded = url_encoded(secret);
        let file = dir.path().join("password");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let quoted = secret.replace('\\', "\\\\").replace('\'', "\\'");
        let ways: Vec<Vec<(&str, String)>> = vec![
            vec![(
                "LEADSYNC_SOURCE__URL",
                format!("postgres://app:{secret}@127.0.0.1:{port}/crm"),
            )],
            vec![(
                "LEADSYNC_SOURCE__URL",
                format!("postgres://app:{encoded}@127.0.0.1:{port}/crm?sslmode=disable"),
            )],
            vec![(
                "LEADSYNC_SOURCE__URL",
                format!("postgres://app@127.0.0.1:{port}/crm?password={encoded}"),
            )],
            vec![(
                "LEADSYNC_SOURCE__URL",
                format!("host=127.0.0.1 port={port} user=app password='{quoted}' dbname=crm"),
            )],
            vec![
                (
                    "LEADSYNC_SOURCE__URL",
                    format!("postgres://app@127.0.0.1:{port}/crm"),
                ),
                (
                    "LEADSYNC_SOURCE__PASSWORD_FILE",
                    file.to_string_lossy().into_owned(),
                ),
            ],
        ];
        for way in ways {
            let mut env: Vec<(&str, &str)> = way.iter().map(|(k, v)| (*k, v.as_str())).collect();
            env.push(("LEADSYNC_LOG", "debug"));
            let mut outputs = Vec::new();
            for args in [
                &["setup"][..],
                &["assess"],
                &["validate", "--wait-seconds", "1"],
            ] {
                outputs.push(leadsync(args, &env).1);
            }
            // The daemon retries; a few seconds of its log.
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_leadsync"));
            cmd.arg("run")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("TMPDIR", dir.path())
                .envs(env.iter().copied())
                .env("LEADSYNC_METRICS__LISTEN", "127.0.0.1:0")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let child = cmd.spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_secs(2));
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let out = child.wait_with_output().unwrap();
            outputs.push(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
            for text in outputs {
                assert!(
                    text.contains("debug") || text.contains("DEBUG") || text.contains("error"),
                    "{way:?}: no output? {text}"
                );
                for form in [secret, encoded.as_str(), &secret[..secret.len() - 2]] {
                    assert!(!text.contains(form), "{way:?} shows {form:?}:\n{text}");
                }
            }
        }
    }
}

/// A setting that takes one of a few words, and the log level, are checked before anything
/// runs: the error names the key, where it came from and what is allowed (a log level typo
/// would otherwise silence the log).
#[test]
fn choices_and_log_levels_are_checked_with_what_is_allowed() {
    let url = ("LEADSYNC_SOURCE__URL", "postgres://u@127.0.0.1:1/x");
    for (key, value, says) in [
        (
            "LEADSYNC_SYNC__DELETE_MODE",
            "sofft",
            "`sync.delete_mode` (from environment variable LEADSYNC_SYNC__DELETE_MODE): `sofft` is not one of soft, hard",
        ),
        (
            "LEADSYNC_SYNC__ON_ERROR",
            "halt",
            "is not one of dead_letter, stop",
        ),
        ("LEADSYNC_LOG__FORMAT", "jsn", "is not one of text, json"),
        (
            "LEADSYNC_LOG__LEVEL",
            "infoo",
            "`infoo` in `infoo` is not a level",
        ),
        ("LEADSYNC_LOG", "leadsync=debgu", "LEADSYNC_LOG: `debgu`"),
    ] {
        let (ok, text) = leadsync(&["assess"], &[url, (key, value)]);
        assert!(!ok, "{key}={value}: {text}");
        assert!(text.contains(says), "{key}={value}: {text}");
        assert!(!text.contains("variant constructor"), "{text}");
        assert!(
            !text.contains("cannot connect"),
            "checked before connecting: {text}"
        );
    }
}
