//! The HTTP endpoints (`/metrics`, `/healthz`, `/readyz`, `/status`) and the lag sampler:
//! first `leadsync::http::serve` driven directly with a status the test sets, over raw TCP
//! (so malformed requests can be sent too); then `sample_lag` against a real PostgreSQL
//! slot; then the daemon itself, scraped while it streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use leadsync::Lsn;
use leadsync::http::{sample_lag, serve};
use leadsync::metrics as names;
use leadsync::status::{BackfillProgress, Counters, SharedStatus, State};
use leadsync::testing::{TestDb, daemon_env_with_metrics, parse_metrics};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running `serve` on a loopback port.
struct Server {
    addr: SocketAddr,
    status: SharedStatus,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A recorder of the test's own (the global one is left to the sampler test), with a few
/// values recorded into it.
fn local_metrics() -> PrometheusHandle {
    let recorder = leadsync::metrics::prometheus_builder()
        .expect("builder")
        .build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        leadsync::metrics::describe();
        metrics::counter!(names::TRANSACTIONS_TOTAL).increment(3);
        metrics::counter!(names::CHANGES_TOTAL, names::TABLE => "contacts", names::OP => "update")
            .increment(7);
        metrics::histogram!(names::APPLY_SECONDS).record(0.003);
        metrics::histogram!(names::APPLY_SECONDS).record(0.2);
        metrics::gauge!(names::APPLIED_LSN).set(4096.0);
    });
    handle
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let status = SharedStatus::default();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(serve(listener, status.clone(), local_metrics(), shutdown));
    Server {
        addr,
        status,
        stop,
        task,
    }
}

/// A parsed response.
#[derive(Debug)]
struct Reply {
    code: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends `raw` as is and reads until the server closes the connection.
async fn send(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("send request");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the server answers and closes within 10 s")
        .expect("read response");
    let text = String::from_utf8(bytes).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect::<HashMap<_, _>>();
    assert_eq!(
        headers.get("content-length").and_then(|l| l.parse().ok()),
        Some(body.len()),
        "Content-Length matches the body"
    );
    Reply {
        code,
        headers,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: probe\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test]
async fn probes_follow_the_state() {
    let server = start().await;
    // (state, /healthz, /readyz): a backfill, a pause, a standby and the failed state are
    // ready (in a sidecar /readyz gates the application's pod, which a sidecar never holds
    // back); only failing is unhealthy; /livez answers in every state, so a failure never
    // restarts the container into a crash loop.
    let cases = [
        (State::Starting, 200, 200),
        (State::Standby, 200, 200),
        (State::Backfill, 200, 200),
        (State::Streaming, 200, 200),
        (State::Paused, 200, 200),
        (State::Reconnecting, 200, 200),
        (State::Failed, 503, 200),
        (State::Stopped, 200, 503),
    ];
    for (state, health, ready) in cases {
        server.status.update(|s| s.state = state);
        let h = get(server.addr, "/healthz").await;
        let r = get(server.addr, "/readyz").await;
        assert_eq!((h.code, r.code), (health, ready), "{state:?}");
        assert_eq!(get(server.addr, "/livez").await.code, 200, "{state:?}");
        if health == 200 {
            assert_eq!(h.body, "ok\n");
        }
    }
}

#[tokio::test]
async fn status_is_json() {
    let server = start().await;
    server.status.update(|s| {
        s.state = State::Backfill;
        s.slot = "ls_test".into();
        s.processed_lsn = Some("16/B374D848".into());
        s.source_lsn = Some("16/B3750000".into());
        s.lag_bytes = Some(10168);
        s.lag_seconds = 1.5;
        s.paused = false;
        let mut load = BackfillProgress::new(&[("customers", 2000)]);
        load.advance("customers", 500, load.started_at);
        s.backfill = Some(load);
        s.counters = Counters {
            changes: 42,
            transactions: 7,
            dead_letters: 1,
        };
    });
    let reply = get(server.addr, "/status").await;
    assert_eq!(reply.code, 200);
    assert_eq!(
        reply.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let json: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON body");
    assert_eq!(json["state"], "backfill");
    assert_eq!(json["slot"], "ls_test");
    assert_eq!(json["processed_lsn"], "16/B374D848");
    assert_eq!(json["source_lsn"], "16/B3750000");
    assert_eq!(json["lag_bytes"], 10168);
    assert_eq!(json["lag_seconds"], 1.5);
    assert_eq!(json["paused"], false);
    assert_eq!(json["backfill"]["step"], "copying customers");
    assert_eq!(json["backfill"]["tables"][0]["table"], "customers");
    assert_eq!(json["backfill"]["tables"][0]["done"], 500);
    assert_eq!(json["backfill"]["tables"][0]["total"], 2000);
    assert_eq!(json["backfill"]["percent"], 25.0);
    assert_eq!(json["counters"]["changes"], 42);
    assert_eq!(json["counters"]["transactions"], 7);
    assert_eq!(json["counters"]["dead_letters"], 1);
    assert!(json["last_error"].is_null());

    server.status.update(|s| {
        s.state = State::Failed;
        s.last_error = Some("column \"email\" dropped".into());
    });
    let json: serde_json::Value =
        serde_json::from_str(&get(server.addr, "/status").await.body).expect("JSON body");
    assert_eq!(json["state"], "failed");
    assert_eq!(json["last_error"], "column \"email\" dropped");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let server = start().await;
    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.code, 200);
    let content_type = reply
        .headers
        .get("content-type")
        .cloned()
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let m = parse_metrics(&reply.body);
    assert_eq!(value(&m, "leadsync_transactions_total"), Some(3.0));
    assert_eq!(
        m.get(r#"leadsync_changes_total{table="contacts",op="update"}"#)
            .copied(),
        Some(7.0),
        "{}",
        reply.body
    );
    assert_eq!(value(&m, "leadsync_applied_lsn"), Some(4096.0));
    // Zeroed at start so alerts and rate() see them before the first event.
    assert_eq!(value(&m, "leadsync_dead_letters_total"), Some(0.0));
    assert_eq!(value(&m, "leadsync_paused"), Some(0.0));
    // A real histogram with the millisecond-to-10-seconds buckets, not a summary.
    assert!(
        reply
            .body
            .contains("# TYPE leadsync_apply_seconds histogram")
    );
    assert_eq!(
        m.get(r#"leadsync_apply_seconds_bucket{le="0.001"}"#)
            .copied(),
        Some(0.0)
    );
    assert_eq!(
        m.get(r#"leadsync_apply_seconds_bucket{le="0.005"}"#)
            .copied(),
        Some(1.0)
    );
    assert_eq!(
        m.get(r#"leadsync_apply_seconds_bucket{le="10"}"#).copied(),
        Some(2.0)
    );
    assert_eq!(value(&m, "leadsync_apply_seconds_count"), Some(2.0));
    assert!(
        reply
            .body
            .contains("# HELP leadsync_transactions_total Target transactions committed.")
    );
}

#[tokio::test]
async fn unknown_paths_and_other_methods() {
    let server = start().await;
    assert_eq!(get(server.addr, "/").await.code, 404);
    assert_eq!(get(server.addr, "/metricsx").await.code, 404);
    assert_eq!(get(server.addr, "/healthz?verbose=1").await.code, 200);
    let post = send(
        server.addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(post.code, 405);
    assert_eq!(post.headers.get("allow").map(String::as_str), Some("GET"));
    assert_eq!(
        send(server.addr, b"HEAD /healthz HTTP/1.1\r\n\r\n")
            .await
            .code,
        405
    );
    assert_eq!(
        send(server.addr, b"DELETE /status HTTP/1.1\r\n\r\n")
            .await
            .code,
        405
    );
    // A bare request line (no blank line, no version) from a hand-made client still works.
    assert_eq!(send(server.addr, b"GET /healthz\n").await.code, 200);
}

#[tokio::test]
async fn garbage_does_not_hurt_the_server() {
    let server = start().await;
    let addr = server.addr;
    for raw in [
        &b"\r\n\r\n"[..],
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1 trailing junk\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 tls hello\n\n",
        "GET /\u{1F600} HTTP/1.1\r\n\r\n".as_bytes(),
    ] {
        let reply = send(addr, raw).await;
        assert!(
            reply.code == 400 || reply.code == 404,
            "{raw:?}: {}",
            reply.code
        );
    }
    // A head past the size bound is refused, not buffered.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 100_000));
    assert_eq!(send(addr, &huge).await.code, 431);
    // Connecting and hanging up at once, or sending half a line and hanging up.
    drop(TcpStream::connect(addr).await.expect("connect"));
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET /hea").await.expect("send");
    drop(half);
    // A client that sends nothing does not hold up anyone else.
    let _idle = TcpStream::connect(addr).await.expect("connect");
    // Many at once.
    let many = (0..64).map(|_| tokio::spawn(async move { get(addr, "/healthz").await.code }));
    for reply in futures_util::future::join_all(many).await {
        assert_eq!(reply.expect("request task"), 200);
    }
    assert!(!server.task.is_finished(), "server still running");
    assert_eq!(get(addr, "/metrics").await.code, 200);
}

/// Hundreds of idle, half-sent requests fill every place; probes still get in and are
/// answered within a second, as the longest-waiting idle connections are closed for them.
#[tokio::test]
async fn probes_are_answered_while_idle_connections_fill_every_place() {
    let server = start().await;
    let addr = server.addr;
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
            .await
            .expect("send half a request");
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        let reply = tokio::time::timeout(Duration::from_secs(1), get(addr, "/healthz"))
            .await
            .expect("a probe answered within 1 s");
        assert_eq!(reply.code, 200);
    }
    assert!(!server.task.is_finished(), "server still running");
    drop(idle);
}

#[tokio::test]
async fn returns_on_shutdown() {
    let server = start().await;
    assert_eq!(get(server.addr, "/healthz").await.code, 200);
    server
        .stop
        .send(true)
        .expect("server listening for shutdown");
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve returns on shutdown")
        .expect("serve did not panic");
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "the listener is closed"
    );
}

// ---- the Prometheus text format, parsed just enough for assertions ----

/// The value of an unlabelled sample.
fn value(samples: &HashMap<String, f64>, name: &str) -> Option<f64> {
    samples.get(name).copied()
}

#[test]
fn parses_the_text_format() {
    let m = parse_metrics(
        "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n\
         b{x=\"1 }\",y=\"q\\\"\"} 2.5 1700000000000\nc +Inf\n",
    );
    assert_eq!(value(&m, "a_total"), Some(3.0));
    assert_eq!(m.get("b{x=\"1 }\",y=\"q\\\"\"}").copied(), Some(2.5));
    assert_eq!(value(&m, "c"), Some(f64::INFINITY));
}

// ---- the lag sampler against a real slot ----

async fn lsn(client: &tokio_postgres::Client, sql: &str) -> Lsn {
    let text: String = client.query_one(sql, &[]).await.expect(sql).get(0);
    text.parse().expect("an LSN")
}

/// Waits for the sampler's next sample after clearing `source_lsn`, and returns it.
async fn next_sample(status: &SharedStatus) -> (Lsn, Option<u64>) {
    status.update(|s| s.source_lsn = None);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status.get();
        if let Some(source) = s.source_lsn {
            return (source.parse().expect("an LSN"), s.lag_bytes);
        }
        assert!(Instant::now() < deadline, "no sample within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The only test of this binary that installs the global recorder (it needs the gauges).
#[tokio::test]
async fn sample_lag_measures_the_slot() {
    let handle = leadsync::metrics::install_recorder().expect("first install");
    assert!(
        leadsync::metrics::install_recorder().is_err(),
        "a second install is an error, not a panic"
    );
    let db = TestDb::spawn().await;
    let client = db.client().await;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.slot],
        )
        .await
        .expect("create slot");
    let confirmed = lsn(
        &client,
        &format!(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        ),
    )
    .await;
    // Nobody consumes the slot, so WAL written now is lag.
    client
        .batch_execute(
            "CREATE TABLE filler (x int);
             INSERT INTO filler SELECT generate_series(1, 5000);",
        )
        .await
        .expect("write WAL");
    let written = lsn(&client, "SELECT pg_current_wal_lsn()::text").await;

    let status = SharedStatus::default();
    let (stop, shutdown) = watch::channel(false);
    let sampler = tokio::spawn(sample_lag(db.settings(), status.clone(), shutdown));

    // Without a processed LSN the lag is measured from the slot's confirmed position; the
    // position and the lag come from one statement, so they agree exactly.
    let (source, lag) = next_sample(&status).await;
    assert!(source >= written, "{source} < {written}");
    assert_eq!(lag, Some(source.bytes_since(confirmed)));
    assert!(
        lag.unwrap_or_default() > 40_000,
        "5000 rows of WAL: {lag:?}"
    );

    // With a processed LSN (the engine's), the lag is measured from it.
    // The second sample: the first may have read the status before the update.
    status.update(|s| s.processed_lsn = Some(source.to_string()));
    next_sample(&status).await;
    let (later, lag) = next_sample(&status).await;
    assert_eq!(lag, Some(later.bytes_since(source)));

    let m = parse_metrics(&handle.render());
    // The cluster is shared with the other tests, whose WAL counts too: only the presence of
    // the lag gauge is certain here (its value was checked through the status above).
    assert!(value(&m, "leadsync_lag_bytes").is_some(), "lag gauge");
    let retained = value(&m, "leadsync_slot_retained_bytes").expect("retention gauge");
    // restart_lsn is at or before confirmed_flush_lsn: the slot holds all the filler WAL.
    assert!(
        retained >= written.bytes_since(confirmed) as f64,
        "{retained}"
    );

    // A lost session is reopened (after a pause), not fatal.
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'leadsync'
               AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("terminate the sampler's session");
    let (after, _) = next_sample(&status).await;
    assert!(after >= later);
    assert!(!sampler.is_finished());

    stop.send(true).expect("sampler listening");
    tokio::time::timeout(Duration::from_secs(5), sampler)
        .await
        .expect("sample_lag returns on shutdown")
        .expect("sample_lag did not panic");
}

#[tokio::test]
async fn sample_lag_without_a_slot() {
    let db = TestDb::spawn().await;
    let status = SharedStatus::default();
    let (stop, shutdown) = watch::channel(false);
    // No slot yet (e.g. before the first run created it): the position is still reported.
    let sampler = tokio::spawn(sample_lag(db.settings(), status.clone(), shutdown));
    let (source, lag) = next_sample(&status).await;
    assert!(source > Lsn::ZERO);
    assert_eq!(lag, None);
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), sampler)
        .await
        .expect("sample_lag returns when the shutdown sender is gone")
        .expect("no panic");
}

// ---- the daemon, scraped ----

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");

/// How far the scraped positions may be from the slot's once the system is idle: the WAL
/// an idle server writes on its own (a running-transactions record, a checkpoint record)
/// between one keepalive and the next read.
const IDLE_WINDOW: f64 = 4096.0;

/// A port nobody listens on: bind port 0, note the port, let it go.
/// GET over a fresh connection, retried while the daemon is not listening yet.
async fn get_when_up(addr: SocketAddr, path: &str, daemon: &leadsync::testing::Daemon) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "daemon not listening on {addr}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    get(addr, path).await
}

async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    let text: String = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot position")
        .get(0);
    text.parse().expect("an LSN")
}

#[tokio::test]
async fn daemon_metrics_match_the_slot() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    leadsync::fixtures::generate_demo_data(&client, 50)
        .await
        .expect("demo data");
    leadsync::cmd::setup::run_setup(&db.settings())
        .await
        .expect("setup");
    let (env, addr) = daemon_env_with_metrics(&db);
    let daemon = leadsync::testing::Daemon::start(BIN, &env);

    assert_eq!(get_when_up(addr, "/healthz", &daemon).await.code, 200);
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    // Legacy changes, one source transaction each.
    for i in 0..5 {
        client
            .execute(
                "UPDATE contacts SET firstname = $1
                 WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 10)",
                &[&format!("Scraped{i}")],
            )
            .await
            .expect("legacy update");
    }
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    assert_eq!(get(addr, "/readyz").await.code, 200);

    // Once idle, the processed LSN (the gauge) and the slot's confirmed position agree,
    // and the sampled lag drains to (about) nothing. Both move with the server's idle WAL,
    // so read the slot on both sides of the scrape and retry until they hold still.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (metrics, slot) = loop {
        let before = confirmed_flush(&client, &db.slot).await;
        let reply = get(addr, "/metrics").await;
        let after = confirmed_flush(&client, &db.slot).await;
        assert_eq!(reply.code, 200);
        let m = parse_metrics(&reply.body);
        let applied = value(&m, "leadsync_applied_lsn").unwrap_or(-1.0);
        let lag = value(&m, "leadsync_lag_bytes").unwrap_or(f64::MAX);
        let settled = before == after
            && (applied - after.0 as f64).abs() <= IDLE_WINDOW
            && lag <= IDLE_WINDOW;
        if settled || Instant::now() > deadline {
            break (m, after);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let context = || format!("{metrics:?}\nslot at {slot}\nlog:\n{}", daemon.log());
    let transactions = value(&metrics, "leadsync_transactions_total").unwrap_or(0.0);
    assert!(transactions > 0.0, "no transactions counted; {}", context());
    let applied = value(&metrics, "leadsync_applied_lsn").expect("applied LSN gauge");
    assert!(
        (applied - slot.0 as f64).abs() <= IDLE_WINDOW,
        "applied {applied} vs slot {} ({slot}); {}",
        slot.0,
        context()
    );
    let lag = value(&metrics, "leadsync_lag_bytes").expect("lag gauge");
    assert!(
        lag <= IDLE_WINDOW,
        "lag {lag} when caught up; {}",
        context()
    );
    assert!(
        value(&metrics, "leadsync_slot_retained_bytes").is_some(),
        "no retention gauge; {}",
        context()
    );
    assert!(
        metrics
            .keys()
            .any(|k| k.starts_with("leadsync_changes_total{") && k.contains("table=\"contacts\"")),
        "no per-table change counter; {}",
        context()
    );

    // /status agrees with the scrape.
    let json: serde_json::Value =
        serde_json::from_str(&get(addr, "/status").await.body).expect("status JSON");
    assert_eq!(json["state"], "streaming");
    assert_eq!(json["slot"], db.slot.as_str());
    let processed: Lsn = json["processed_lsn"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("processed LSN in /status");
    assert!(
        processed.0 as f64 >= applied,
        "{processed} behind the gauge"
    );
    assert!(json["source_lsn"].as_str().is_some(), "{json}");
    assert!(
        json["counters"]["transactions"].as_u64() > Some(0),
        "{json}"
    );
}
