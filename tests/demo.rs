//! `leadsync demo` as a user runs it: interrupted, it leaves no cluster behind; with
//! `--keep`, it leaves a playground that works and that its printed command removes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");

/// A running demo whose output lines arrive on a channel.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(BIN)
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (from now) that contains `needle`.
    fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {needle:?} within {timeout:?}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The cluster's port and directory, from the demo's first lines.
    fn cluster(&mut self) -> (u16, PathBuf) {
        let line = self.wait_line("listening on 127.0.0.1:", Duration::from_secs(60));
        let rest = line.split("127.0.0.1:").nth(1).unwrap();
        let (port, dir) = rest.split_once(" in ").unwrap();
        (port.parse().unwrap(), PathBuf::from(dir.trim()))
    }

    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the demo still runs after {timeout:?}:\n{}",
                self.seen.join("\n")
            );
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn accepts_connections(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn an_interrupted_demo_leaves_no_cluster_behind() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut demo = Demo::start(&["--contacts", "500"]);
        let (port, dir) = demo.cluster();
        assert!(dir.exists());
        // Interrupted while the daemon streams.
        demo.wait_line(
            "== legacy writes while leadsync streams",
            Duration::from_secs(120),
        );
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(demo.child.id() as i32, signal) };
        let status = demo.wait(Duration::from_secs(60));
        let output = demo.seen.join("\n");
        assert_eq!(status.code(), Some(1), "{output}");
        assert!(
            output.contains("its throwaway cluster is removed"),
            "{output}"
        );
        assert!(!dir.exists(), "{} is still there:\n{output}", dir.display());
        assert!(
            !accepts_connections(port),
            "the server still runs:\n{output}"
        );
    }
}

#[test]
fn a_kept_demo_is_a_working_playground_that_its_command_removes() {
    let mut demo = Demo::start(&["--contacts", "500", "--keep"]);
    let (port, dir) = demo.cluster();
    let status = demo.wait(Duration::from_secs(300));
    let output = demo.seen.join("\n");
    assert!(status.success(), "{output}");
    assert!(dir.exists() && accepts_connections(port), "{output}");
    assert!(
        output
            .lines()
            .all(|l| l.chars().count() <= 100 || !l.starts_with("   ")),
        "the playground's lines fit 100 columns:\n{output}"
    );

    // The printed URL reaches the migrated data.
    let url = format!("postgres://postgres@127.0.0.1:{port}/crm");
    assert!(
        output.contains(&format!("LEADSYNC_SOURCE__URL={url} leadsync run")),
        "{output}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (contacts, customers): (i64, i64) = runtime.block_on(async {
        let client = leadsync::db::connect(&secrecy::SecretString::from(url.clone()))
            .await
            .unwrap();
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM contacts), (SELECT count(*) FROM customers)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    });
    assert!(
        contacts >= 500 && customers > 0,
        "{contacts} contacts, {customers} customers"
    );

    // A later cluster does not reap it (its owner, the demo, is gone).
    let later = leadsync::cluster::TempCluster::start(&Default::default()).unwrap();
    drop(later);
    assert!(dir.exists() && accepts_connections(port));

    let removal = output
        .lines()
        .find_map(|l| l.split_once("remove it: ").map(|(_, c)| c.to_owned()))
        .unwrap_or_else(|| panic!("no removal command:\n{output}"));
    let done = Command::new("sh").args(["-c", &removal]).output().unwrap();
    assert!(done.status.success(), "{removal}: {done:?}");
    assert!(!dir.exists() && !accepts_connections(port), "{removal}");
}
