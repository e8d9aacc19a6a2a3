//! The daemon's HTTP endpoints on `metrics.listen` (SPEC §6) and the sampler behind the lag
//! gauges.
//!
//! - `GET /metrics`: Prometheus text format.
//! - `GET /livez`: 200 while the process answers (the liveness probe: a restart fixes
//!   nothing the failed state waits for, so a failure never restarts the container).
//! - `GET /healthz`: 200 while alive and not failed, else 503 (for monitoring).
//! - `GET /readyz`: 200 in every state but stopping, the failed state included — in a
//!   sidecar it gates the application's pod, which a sidecar never holds back.
//! - `GET /status`: the [`Status`](crate::status::Status) as JSON.
//!
//! The server is deliberately tiny: one request per connection (`Connection: close`), the
//! request head read with a size and time bound, no body. Probes and scrapers need nothing
//! more, and a hand-written loop on tokio keeps hyper out of the dependency tree. Nothing a
//! client sends can make it panic; the worst a client gets is a 4xx and a closed socket.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_postgres::Client;

use crate::Lsn;
use crate::config::Settings;
use crate::control::Shutdown;
use crate::status::SharedStatus;

/// `GET path` from a leadsync at `addr`, within `timeout`: the response's head and body.
pub async fn fetch(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(String, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: leadsync\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))??;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no response head"))?;
    Ok((head.to_owned(), body.to_owned()))
}

/// Largest request head accepted. Probe and scrape requests are a few hundred bytes; the
/// bound keeps a misbehaving client from growing a buffer without end.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Time a client gets to send its request head, so idle sockets do not pile up.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a slow reader gets to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. At the limit, the connection that has waited longest for
/// its request head is closed to make room: a flood of idle or half-sent requests can never
/// keep a probe out (in a sidecar, a failing probe takes the application's pod out of its
/// Service), and memory and file descriptors stay bounded.
const MAX_CONNECTIONS: usize = 256;

/// How long a new connection waits for an evicted one to let go of its place.
const EVICTION_WAIT: Duration = Duration::from_millis(500);

/// How often the exporter's upkeep runs (it bounds histogram memory when nobody scrapes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How often [`sample_lag`] reads the server's positions.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Pause before [`sample_lag`] reconnects after losing its session.
const RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the endpoints on `listener` until `shutdown` becomes true (or its sender is
/// dropped). Connections are handled concurrently; those in flight at shutdown finish on
/// their own within the read and write timeouts.
pub async fn serve(
    listener: TcpListener,
    status: SharedStatus,
    metrics: PrometheusHandle,
    mut shutdown: Shutdown,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "(unknown)".into());
    tracing::info!(%addr, "HTTP endpoints listening");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = Waiting::default();
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = upkeep.tick() => metrics.run_upkeep(),
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let (slots, waiting) = (slots.clone(), waiting.clone());
                    let (status, metrics) = (status.clone(), metrics.clone());
                    tokio::spawn(async move {
                        let permit = match slots.clone().try_acquire_owned() {
                            Ok(permit) => permit,
                            Err(_) => {
                                // Full: the longest idle connection makes room.
                                waiting.evict_oldest();
                                match tokio::time::timeout(EVICTION_WAIT, slots.acquire_owned())
                                    .await
                                {
                                    Ok(Ok(permit)) => permit,
                                    _ => {
                                        tracing::debug!("HTTP connection limit reached; connection closed");
                                        return;
                                    }
                                }
                            }
                        };
                        handle(stream, &status, &metrics, &waiting).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tracing::info!(%addr, "HTTP endpoints stopped");
}

/// A response: status code, content type and body.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(code: u16, body: &str) -> Response {
        Response {
            code,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

/// The connections still waiting for their request head, oldest first, each with the
/// signal that closes it.
#[derive(Clone, Default)]
struct Waiting {
    inner: Arc<std::sync::Mutex<WaitingInner>>,
}

#[derive(Default)]
struct WaitingInner {
    next: u64,
    queue: std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>,
}

impl Waiting {
    /// Registers a connection; returns its id and the signal to watch.
    fn enter(&self) -> (u64, Arc<tokio::sync::Notify>) {
        let notify = Arc::new(tokio::sync::Notify::new());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next += 1;
        let id = inner.next;
        inner.queue.push_back((id, notify.clone()));
        (id, notify)
    }

    /// The connection has its head (or gave up): it no longer waits.
    fn leave(&self, id: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.queue.retain(|(i, _)| *i != id);
    }

    /// Closes the connection that has waited longest.
    fn evict_oldest(&self) {
        let oldest = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue
            .pop_front();
        if let Some((_, notify)) = oldest {
            notify.notify_one();
        }
    }
}

/// Reads one request, answers it and closes the connection. Errors (a client that hangs
/// up, times out or sends garbage) end the connection and are only worth a debug line.
async fn handle(
    mut stream: TcpStream,
    status: &SharedStatus,
    metrics: &PrometheusHandle,
    waiting: &Waiting,
) {
    let (id, evicted) = waiting.enter();
    let head = tokio::select! {
        head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)) => head,
        _ = evicted.notified() => {
            tracing::debug!("HTTP connection idle the longest, closed to make room");
            return;
        }
    };
    waiting.leave(id);
    let response = match head {
        Ok(Ok(head)) => route(&head, status, metrics),
        Ok(Err(HeadError::TooLarge)) => Response::text(431, "request header fields too large"),
        Ok(Err(HeadError::Io(e))) => {
            tracing::debug!(error = %e, "HTTP read failed");
            return;
        }
        Ok(Err(HeadError::Closed)) => return,
        Err(_) => Response::text(408, "request timeout"),
    };
    let written = tokio::time::timeout(WRITE_TIMEOUT, write_response(&mut stream, &response));
    if !matches!(written.await, Ok(Ok(()))) {
        tracing::debug!("HTTP client did not take the response");
        return;
    }
    // Closing a socket with unread input makes the kernel send a reset, which can destroy
    // the response before the client has read it (a 405 for a POST with a body, say).
    // So: end our side, then drain briefly what the client still sends.
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[derive(Debug)]
enum HeadError {
    /// The client closed before sending a complete head.
    Closed,
    TooLarge,
    Io(std::io::Error),
}

/// Reads up to the blank line that ends the request head (CRLF or bare LF, which some
/// hand-made clients send), at most [`MAX_REQUEST_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            // A request line without the blank line is still answerable (e.g. `printf 'GET
            // /healthz\n' | nc`); nothing at all is not.
            return if head.is_empty() {
                Err(HeadError::Closed)
            } else {
                Ok(head)
            };
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends (just past its blank line), if it has. A request line without a
/// version (HTTP/0.9 style, `GET /healthz` typed into `nc`) has no headers, so it ends with
/// its own line.
fn head_end(buf: &[u8]) -> Option<usize> {
    if let Some(eol) = buf.iter().position(|&b| b == b'\n') {
        let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
        if !line.is_empty() && line.iter().filter(|&&b| b == b' ').count() == 1 {
            return Some(eol + 1);
        }
    }
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Answers a request head.
fn route(head: &[u8], status: &SharedStatus, metrics: &PrometheusHandle) -> Response {
    let Some((method, path)) = parse_request_line(head) else {
        return Response::text(400, "bad request");
    };
    if method != "GET" {
        return Response::text(405, "method not allowed");
    }
    match path {
        "/metrics" => Response {
            code: 200,
            content_type: PROMETHEUS_TEXT,
            body: metrics.render(),
        },
        "/livez" => probe(true),
        "/healthz" => probe(status.healthy()),
        "/readyz" => probe(status.ready()),
        "/status" => match serde_json::to_string_pretty(&status.get()) {
            Ok(json) => Response {
                code: 200,
                content_type: "application/json",
                body: json + "\n",
            },
            Err(e) => Response::text(500, &format!("cannot encode the status: {e}")),
        },
        _ => Response::text(404, "not found"),
    }
}

fn probe(ok: bool) -> Response {
    if ok {
        Response::text(200, "ok")
    } else {
        Response::text(503, "unavailable")
    }
}

/// The method and path (query string removed) of `METHOD SP target SP HTTP/x.y`; `None`
/// when the first line is not a request line.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    // HTTP/0.9-style `GET /path` has no version; accept it, but nothing else odd.
    match (parts.next(), parts.next()) {
        (None, None) => {}
        (Some(version), None) if version.starts_with("HTTP/") => {}
        _ => return None,
    }
    let valid_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !valid_method || !target.starts_with('/') {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

async fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.code,
        reason(response.code),
        response.content_type,
        response.body.len()
    );
    if response.code == 405 {
        head.push_str("Allow: GET\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.flush().await
}

/// Samples the source's WAL position and the slot every second, on a session of its own,
/// until `shutdown`: sets [`LAG_BYTES`](crate::metrics::LAG_BYTES) (WAL position − processed
/// LSN, or − the slot's `confirmed_flush_lsn` while the status has no processed LSN, e.g. on
/// a standby), [`SLOT_RETAINED_BYTES`](crate::metrics::SLOT_RETAINED_BYTES) (WAL position −
/// the slot's `restart_lsn`), [`DEAD_LETTERS_PENDING`](crate::metrics::DEAD_LETTERS_PENDING)
/// and the status's `source_lsn`, `lag_bytes` and `dead_letters_pending`. A lost session
/// is reopened after a pause; failures are logged, never fatal: the gauges only go stale.
pub async fn sample_lag(settings: Settings, status: SharedStatus, mut shutdown: Shutdown) {
    let slot = settings.slot.name.clone();
    let mut client: Option<Client> = None;
    // Warn once per outage, not once a second.
    let mut failing = false;
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let history_every = Duration::from_secs(settings.metrics.history_every_seconds);
    let mut recorded = (std::time::Instant::now(), status.get().counters.changes);
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let result = match &client {
            Some(c) if !c.is_closed() => sample_once(c, &slot, &status).await,
            _ => match crate::db::connect(settings.source_url()).await {
                Ok(c) => {
                    let result = sample_once(&c, &slot, &status).await;
                    client = Some(c);
                    result
                }
                Err(e) => Err(e.to_string()),
            },
        };
        if result.is_ok()
            && !history_every.is_zero()
            // On the sampling tick nearest to the period (ticks are not exactly on time).
            && recorded.0.elapsed() + SAMPLE_INTERVAL / 2 >= history_every
            && let Some(c) = &client
        {
            let now = status.get();
            let seconds = recorded.0.elapsed().as_secs_f64();
            let (before, after) = (recorded.1, now.counters.changes);
            // A new session counts from zero.
            let changes = if after >= before {
                after - before
            } else {
                after
            };
            if let Err(e) = record_sample(c, &slot, &now, changes, seconds).await {
                tracing::debug!(%slot, error = %crate::db::error_text(&e), "the history sample was not kept");
            }
            recorded = (std::time::Instant::now(), after);
        }
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(%slot, "lag sampling resumed");
            }
            Ok(()) => {}
            Err(e) => {
                if failing {
                    tracing::debug!(%slot, error = %e, "lag sampling failed");
                } else {
                    tracing::warn!(%slot, error = %e, "lag sampling failed; retrying");
                    failing = true;
                }
                // Start over with a fresh session after a pause: the error may have been the
                // connection's, and a server that is down should not be hammered.
                client = None;
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// How many days `leadsync.samples` keeps.
pub const HISTORY_KEPT_DAYS: i32 = 90;

/// Keeps one sample of the history, if this instance is the active one (a standby's figures
/// say nothing about the migration), and forgets samples past [`HISTORY_KEPT_DAYS`].
async fn record_sample(
    client: &Client,
    slot: &str,
    now: &crate::status::Status,
    changes: u64,
    seconds: f64,
) -> Result<(), tokio_postgres::Error> {
    use crate::status::State;
    let state = match now.state {
        State::Streaming => "streaming",
        State::Paused => "paused",
        State::Backfill => "backfill",
        _ => return Ok(()),
    };
    client
        .execute(
            "INSERT INTO leadsync.samples (slot_name, state, lag_seconds, lag_bytes, changes, seconds)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &slot,
                &state,
                &now.lag_seconds,
                &now.lag_bytes.map(|b| b as i64),
                &(changes as i64),
                &seconds,
            ],
        )
        .await?;
    client
        .execute(
            "DELETE FROM leadsync.samples
             WHERE slot_name = $1 AND at < now() - make_interval(days => $2)",
            &[&slot, &HISTORY_KEPT_DAYS],
        )
        .await?;
    Ok(())
}

/// What the server reported in one sample.
#[derive(Debug)]
struct Sample {
    current: Lsn,
    lag_bytes: Option<u64>,
    retained_bytes: Option<u64>,
}

/// One sample: reads, then publishes to the gauges and the status.
async fn sample_once(client: &Client, slot: &str, status: &SharedStatus) -> Result<(), String> {
    // An unparsable processed LSN would be an engine bug; fall back to the slot's position
    // rather than report nothing.
    let processed = status
        .get()
        .processed_lsn
        .and_then(|t| t.parse::<Lsn>().ok())
        .filter(|l| *l != Lsn::ZERO);
    let sample = read_sample(client, slot, processed).await?;
    if let Some(lag) = sample.lag_bytes {
        metrics::gauge!(crate::metrics::LAG_BYTES).set(lag as f64);
    }
    if let Some(retained) = sample.retained_bytes {
        metrics::gauge!(crate::metrics::SLOT_RETAINED_BYTES).set(retained as f64);
    }
    // Pending dead letters, whoever parked them; none to count before setup.
    let pending = match client
        .query_one(
            "SELECT count(*) FROM leadsync.dead_letters WHERE status = 'pending'",
            &[],
        )
        .await
    {
        Ok(row) => Some(row.try_get::<_, i64>(0).map_err(|e| e.to_string())?),
        Err(e) if matches!(e.code().map(|c| c.code()), Some("42P01" | "3F000")) => None,
        Err(e) => return Err(crate::db::error_text(&e)),
    };
    if let Some(pending) = pending {
        metrics::gauge!(crate::metrics::DEAD_LETTERS_PENDING).set(pending as f64);
    }
    status.update(|s| {
        s.source_lsn = Some(sample.current.to_string());
        s.lag_bytes = sample.lag_bytes;
        s.dead_letters_pending = pending.map(|p| p.max(0) as u64);
        // During the first load nothing written since its snapshot is applied.
        if s.state == crate::status::State::Backfill
            && let Some(load) = &s.backfill
        {
            s.lag_seconds = (chrono::Utc::now() - load.started_at)
                .as_seconds_f64()
                .max(0.0);
            metrics::gauge!(crate::metrics::LAG_SECONDS).set(s.lag_seconds);
        }
    });
    Ok(())
}

async fn read_sample(
    client: &Client,
    slot: &str,
    processed: Option<Lsn>,
) -> Result<Sample, String> {
    // One statement, one `pg_current_wal_lsn()`: both differences are from the same position.
    // The LEFT JOIN still yields the position when the slot does not exist (yet); the
    // differences are then NULL (not clamped in SQL: GREATEST ignores NULLs).
    let row = client
        .query_one(
            "WITH cur AS (SELECT pg_current_wal_lsn() AS lsn)
             SELECT cur.lsn::text,
                    pg_wal_lsn_diff(cur.lsn,
                        COALESCE($2::text::pg_lsn, s.confirmed_flush_lsn))::bigint,
                    pg_wal_lsn_diff(cur.lsn, s.restart_lsn)::bigint
             FROM cur LEFT JOIN pg_replication_slots s ON s.slot_name::text = $1::text",
            &[&slot, &processed.map(|l| l.to_string())],
        )
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let current: String = row.try_get(0).map_err(|e| e.to_string())?;
    let current = current.parse::<Lsn>().map_err(|e| e.to_string())?;
    let lag: Option<i64> = row.try_get(1).map_err(|e| e.to_string())?;
    let retained: Option<i64> = row.try_get(2).map_err(|e| e.to_string())?;
    Ok(Sample {
        current,
        // Clamped at 0: the processed LSN follows keepalives, which can report a position
        // a moment ahead of the one this session read.
        lag_bytes: lag.map(|v| u64::try_from(v).unwrap_or(0)),
        retained_bytes: retained.map(|v| u64::try_from(v).unwrap_or(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"GET /status?pretty=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/status"))
        );
        assert_eq!(
            parse_request_line(b"GET /healthz\n"),
            Some(("GET", "/healthz"))
        );
        assert_eq!(
            parse_request_line(b"POST /healthz HTTP/1.1\r\n\r\n"),
            Some(("POST", "/healthz"))
        );
        for bad in [
            &b""[..],
            b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET /metrics FTP/1\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET /healthz\r\n"), Some(14));
        assert_eq!(head_end(b"GET /healthz"), None);
    }
}
