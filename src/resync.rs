//! Online re-sync: contacts read again from the live source while streaming goes on, the
//! technique of incremental snapshots.
//!
//! For each chunk of contacts (in id order, optionally one workspace) the daemon writes a
//! *low* watermark into the WAL (a transactional logical message), reads the chunk from the
//! source, and writes a *high* watermark. When the stream reaches the low watermark, every
//! contact that changes before the high watermark is struck from the chunk — the change the
//! stream carries is newer than the read. At the high watermark the rest of the chunk is
//! applied as [`Change::Reset`], in stream order: exactly what the source held there. No
//! window exists in which a concurrent change is lost, and nothing stops streaming.
//!
//! Requests come from `leadsync resync` through `leadsync.resync_requests`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use uuid::Uuid;

use crate::apply::{ApplyError, db_error};
use crate::config::Settings;
use crate::db::{self, quote_ident};
use crate::project::change::Change;
use crate::project::{Contact, FieldValue, contact_select};

/// Prefix of the watermark messages.
pub const MESSAGE_PREFIX: &str = "leadsync-resync";
/// Prefix of the heartbeat messages.
pub const HEARTBEAT_PREFIX: &str = "leadsync-heartbeat";
/// Contacts read per chunk.
const CHUNK: i64 = 1_000;
/// How often the daemon looks for new requests.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// A request being worked on.
#[derive(Debug, Clone)]
struct Request {
    id: i64,
    workspace: Option<Uuid>,
    /// Contacts up to this id are done.
    after: Uuid,
    chunk: u32,
}

/// A chunk read between its watermarks, waiting for them to come through the stream.
#[derive(Debug)]
struct Chunk {
    low: String,
    high: String,
    window_open: bool,
    /// Contact id → its state as read (`None`: it does not exist).
    rows: BTreeMap<Uuid, (Option<Contact>, Vec<FieldValue>)>,
    /// Contacts of the chunk that changed inside the window: the stream's state wins, and
    /// is rewritten in full from leadsync's state.
    changed: Vec<Uuid>,
    upper: Uuid,
    last: bool,
}

/// What a chunk's high watermark releases.
#[derive(Debug)]
pub struct Released {
    pub request: i64,
    pub changes: Vec<Change>,
    /// The request is complete.
    pub done: bool,
}

/// Drives re-sync requests from inside the stream loop.
pub struct Resync {
    side: Client,
    source: String,
    target: String,
    request: Option<Request>,
    chunk: Option<Chunk>,
    last_poll: Option<Instant>,
    /// The requests table is missing (set up by an older `leadsync setup`).
    disabled: bool,
}

impl Resync {
    /// Opens the side session that writes watermarks and reads chunks.
    pub async fn connect(settings: &Settings) -> Result<Resync, ApplyError> {
        let side =
            db::connect(settings.source_url())
                .await
                .map_err(|e| ApplyError::ConnectionLost {
                    context: "connecting the resync session",
                    message: e.to_string(),
                })?;
        Ok(Resync {
            side,
            source: quote_ident(&settings.source.schema),
            target: quote_ident(&settings.target.schema),
            request: None,
            chunk: None,
            last_poll: None,
            disabled: false,
        })
    }

    /// Starts the next chunk when one may start. Call between source transactions.
    pub async fn poll(&mut self) -> Result<(), ApplyError> {
        if self.chunk.is_some() || self.disabled {
            return Ok(());
        }
        if self.request.is_none() {
            if self.last_poll.is_some_and(|t| t.elapsed() < POLL_EVERY) {
                return Ok(());
            }
            self.last_poll = Some(Instant::now());
            let row = self
                .side
                .query_opt(
                    "UPDATE leadsync.resync_requests SET status = 'running',
                            started_at = COALESCE(started_at, now()), contacts = 0
                     WHERE id = (SELECT id FROM leadsync.resync_requests
                                 WHERE status IN ('pending', 'running') ORDER BY id LIMIT 1)
                     RETURNING id, workspace_id",
                    &[],
                )
                .await;
            let row = match row {
                Err(e) if e.code().map(|c| c.code()) == Some("42P01") => {
                    tracing::warn!(
                        "leadsync.resync_requests is missing: run `leadsync setup` to enable resync"
                    );
                    self.disabled = true;
                    return Ok(());
                }
                other => other.map_err(db_error("reading resync requests"))?,
            };
            let Some(row) = row else { return Ok(()) };
            let request = Request {
                id: row.get(0),
                workspace: row.get(1),
                after: Uuid::nil(),
                chunk: 0,
            };
            tracing::info!(
                request = request.id,
                workspace = %request.workspace.map_or("every workspace".to_owned(), |w| w.to_string()),
                "resync started"
            );
            self.request = Some(request);
        }
        self.read_chunk().await
    }

    async fn read_chunk(&mut self) -> Result<(), ApplyError> {
        let Some(request) = self.request.as_mut() else {
            return Ok(());
        };
        request.chunk += 1;
        let tag = format!("{}:{}", request.id, request.chunk);
        let (low, high) = (format!("low:{tag}"), format!("high:{tag}"));
        let (s, t) = (&self.source, &self.target);
        let emit = "SELECT pg_logical_emit_message(true, $1, $2)";
        self.side
            .execute(emit, &[&MESSAGE_PREFIX, &low])
            .await
            .map_err(db_error("writing the low watermark"))?;

        let ids: Vec<Uuid> = self
            .side
            .query(
                &format!(
                    "SELECT id FROM {s}.contacts
                     WHERE ($1::uuid IS NULL OR workspace_id = $1) AND id > $2
                     ORDER BY id LIMIT $3"
                ),
                &[&request.workspace, &request.after, &CHUNK],
            )
            .await
            .map_err(db_error("reading a resync chunk"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let last = (ids.len() as i64) < CHUNK;
        let upper = if last {
            Uuid::max()
        } else {
            *ids.last().unwrap_or(&Uuid::max())
        };
        // Rows leadsync holds in the range that the source no longer has there: deleted,
        // or moved to another workspace. Read them by id to tell which.
        let stale: Vec<Uuid> = self
            .side
            .query(
                &format!(
                    "SELECT id FROM leadsync.contacts
                     WHERE ($1::uuid IS NULL OR workspace_id = $1) AND id > $2 AND id <= $3
                     UNION
                     SELECT cst_id FROM {t}.customers
                     WHERE migrated_from_contact_id IS NOT NULL AND deleted_at IS NULL
                       AND ($1::uuid IS NULL OR workspace_id = $1) AND cst_id > $2 AND cst_id <= $3"
                ),
                &[&request.workspace, &request.after, &upper],
            )
            .await
            .map_err(db_error("reading a resync chunk"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut all = ids.clone();
        all.extend(stale.iter().filter(|id| !ids.contains(id)));
        let contacts = self
            .side
            .query(
                &format!(
                    "SELECT {} FROM {s}.contacts c WHERE c.id = ANY($1)",
                    contact_select("c")
                ),
                &[&all],
            )
            .await
            .map_err(db_error("reading a resync chunk"))?;
        let values = self
            .side
            .query(
                &format!(
                    "SELECT contact_id, field_id, value::text, created_at::timestamp,
                            updated_at::timestamp, created_by
                     FROM {s}.contact_custom_fields WHERE contact_id = ANY($1)"
                ),
                &[&all],
            )
            .await
            .map_err(db_error("reading a resync chunk"))?;
        let mut rows: BTreeMap<Uuid, (Option<Contact>, Vec<FieldValue>)> =
            all.iter().map(|id| (*id, (None, Vec::new()))).collect();
        // A row that cannot be read (nothing the column types allow should fail) is left
        // out of the chunk: its contact keeps the state leadsync holds.
        let mut unreadable = Vec::new();
        for row in &contacts {
            match Contact::from_columns(row) {
                Ok(c) => {
                    if let Some(entry) = rows.get_mut(&c.id) {
                        entry.0 = Some(c);
                    }
                }
                Err(e) => unreadable.push(e),
            }
        }
        for row in &values {
            match FieldValue::from_columns(row, 0) {
                Ok(v) => {
                    if let Some(entry) = rows.get_mut(&v.contact_id) {
                        entry.1.push(v);
                    }
                }
                Err(e) => unreadable.push(e),
            }
        }
        for e in unreadable {
            tracing::warn!(contact_id = %e.contact_id.map_or("none".to_owned(), |c| c.to_string()), error = %e, "resync: a row cannot be read; its contact keeps leadsync's state");
            if let Some(id) = e.contact_id {
                rows.remove(&id);
            }
        }

        self.side
            .execute(emit, &[&MESSAGE_PREFIX, &high])
            .await
            .map_err(db_error("writing the high watermark"))?;
        self.chunk = Some(Chunk {
            low,
            high,
            window_open: false,
            rows,
            changed: Vec::new(),
            upper,
            last,
        });
        Ok(())
    }

    /// Writes a heartbeat into the WAL: a non-transactional message the stream delivers at
    /// once, so an idle daemon moves its slot forward even when the only activity on the
    /// server is in tables it does not read (which the server does not report promptly).
    pub async fn heartbeat(&self) -> Result<(), ApplyError> {
        self.side
            .execute(
                "SELECT pg_logical_emit_message(false, $1, '')",
                &[&HEARTBEAT_PREFIX],
            )
            .await
            .map_err(db_error("writing a heartbeat"))?;
        Ok(())
    }

    /// Deletes dead letters resolved more than `days` ago (with the personal data they
    /// hold), on the side session; returns how many.
    pub async fn purge_dead_letters(&self, days: u32) -> Result<i64, ApplyError> {
        let gone = crate::cmd::dlq::purge(
            &self.side,
            crate::cmd::dlq::Purge {
                older_than_days: days,
                pending: false,
            },
        )
        .await
        .map_err(|e| ApplyError::Db {
            context: "purging resolved dead letters",
            message: e.to_string(),
            sqlstate: None,
        })?;
        Ok(gone.iter().map(|c| c.count).sum())
    }

    /// A contact or value of contact `id` changed in the stream: inside a chunk's window,
    /// the stream's version wins over the chunk's read.
    pub fn on_change(&mut self, id: Uuid) {
        if let Some(chunk) = self.chunk.as_mut()
            && chunk.window_open
            && chunk.rows.remove(&id).is_some()
        {
            chunk.changed.push(id);
        }
    }

    /// Tables were truncated: a chunk read before the truncate must not bring rows back.
    pub fn on_truncate(&mut self) {
        if let Some(chunk) = self.chunk.as_mut()
            && chunk.window_open
        {
            let ids: Vec<Uuid> = chunk.rows.keys().copied().collect();
            chunk.changed.extend(ids);
            chunk.rows.clear();
        }
    }

    /// A logical message came through the stream; at a chunk's high watermark the chunk
    /// is released for applying.
    pub fn on_message(&mut self, prefix: &str, content: &[u8]) -> Option<Released> {
        if prefix != MESSAGE_PREFIX {
            return None;
        }
        let content = std::str::from_utf8(content).ok()?;
        let chunk = self.chunk.as_mut()?;
        if content == chunk.low {
            chunk.window_open = true;
            return None;
        }
        if content != chunk.high || !chunk.window_open {
            return None;
        }
        let chunk = self.chunk.take()?;
        let request = self.request.as_mut()?;
        request.after = chunk.upper;
        let id = request.id;
        if chunk.last {
            tracing::info!(request = id, "resync finished");
            self.request = None;
        }
        Some(Released {
            request: id,
            changes: chunk
                .rows
                .into_iter()
                .map(|(id, (contact, values))| Change::Reset {
                    id,
                    contact,
                    values,
                })
                .chain(chunk.changed.into_iter().map(Change::Refresh))
                .collect(),
            done: chunk.last,
        })
    }
}

/// `leadsync resync`: files a request and waits for the daemon to carry it out.
pub async fn request(
    settings: &Settings,
    workspace: Option<Uuid>,
    wait: bool,
) -> anyhow::Result<()> {
    let client = db::connect(settings.source_url()).await?;
    let id: i64 = client
        .query_one(
            "INSERT INTO leadsync.resync_requests (workspace_id) VALUES ($1) RETURNING id",
            &[&workspace],
        )
        .await?
        .get(0);
    let scope = workspace.map_or("every workspace".to_owned(), |w| format!("workspace {w}"));
    println!("resync request {id} filed for {scope}");
    if !wait {
        return Ok(());
    }
    let started = Instant::now();
    let mut warned = false;
    loop {
        let row = client
            .query_one(
                "SELECT status, contacts FROM leadsync.resync_requests WHERE id = $1",
                &[&id],
            )
            .await?;
        let (status, contacts): (String, i64) = (row.get(0), row.get(1));
        match status.as_str() {
            "done" => {
                println!(
                    "resync {id} done: {contacts} contacts re-read in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            "pending" if !warned && started.elapsed() > Duration::from_secs(10) => {
                println!("still waiting for the daemon to pick it up (is `leadsync run` running?)");
                warned = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
