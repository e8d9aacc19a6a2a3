//! `leadsync dlq list|retry|purge`: the dead letters of `leadsync.dead_letters` — changes the
//! target rejected (a phone over 20 characters, a violated constraint) — and their replay.
//!
//! A retry never writes a dead letter's stored payload: that is the contact's state when it
//! was rejected, possibly older than what the source holds now. It asks the running daemon
//! to re-read the contacts from the live source instead, through the online re-sync of
//! [`crate::resync`], so the re-read state is applied in stream order and a concurrent
//! change can never be overwritten by an older read. Re-sync requests are scoped by
//! workspace, so **a retry re-reads the whole workspace of every retried contact** (all
//! workspaces when a contact's workspace is unknown); it is safe, only slower than one
//! contact. The daemon marks a contact's pending dead letters `replayed` once its current
//! state is written; a contact whose current state still does not fit keeps its dead
//! letter, with the new error.
//!
//! A dead letter's payload is a contact's personal data. Resolved ones (replayed, discarded)
//! go once they are older than `dlq.retention_days` — the daemon purges them hourly — or
//! whenever `leadsync dlq purge` is run; pending ones only on an explicit `--pending`, since
//! each stands for a change that was never applied.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::config::Settings;
use crate::db::{self, ConnectError, quote_ident};

/// Default of `dlq retry --timeout`, in seconds.
pub const DEFAULT_RETRY_TIMEOUT_SECS: u64 = 300;
/// Pending dead letters shown by the human `dlq list` (the JSON has all).
const LIST_SHOWN: usize = 100;

/// `leadsync dlq` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// List pending dead letters (id, contact, LSN, error, age) and a count by status.
    List {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Re-project the current source state of the dead letters' contacts through the running
    /// daemon and report which are resolved. Re-reads the whole workspace of each contact.
    /// Exit status 1 when some stay pending.
    Retry {
        /// Dead-letter ids (default: every pending one).
        ids: Vec<i64>,
        /// Seconds to wait for the daemon to carry out the re-reads.
        #[arg(long, default_value_t = DEFAULT_RETRY_TIMEOUT_SECS)]
        timeout: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete resolved (replayed, discarded) dead letters and the personal data they hold.
    /// The daemon does this by itself for those older than `dlq.retention_days`.
    Purge {
        /// Only those resolved at least this many days ago (default 0: every resolved one).
        #[arg(long, default_value_t = 0)]
        older_than_days: u32,
        /// Pending ones too (recorded at least --older-than-days ago): their changes are then
        /// never applied. Needs --yes-lose-pending.
        #[arg(long)]
        pending: bool,
        #[arg(long)]
        yes_lose_pending: bool,
    },
}

/// What `dlq purge` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purge {
    /// Only those resolved (or, with `pending`, recorded) at least this many days ago.
    pub older_than_days: u32,
    /// Pending ones too: their changes are then never applied.
    pub pending: bool,
}

/// Deletes the dead letters `purge` names; returns how many went, by status.
pub async fn purge(client: &Client, purge: Purge) -> Result<Vec<StatusCount>, DlqError> {
    let rows = client
        .query(
            "WITH gone AS (
               DELETE FROM leadsync.dead_letters
               WHERE (status <> 'pending'
                      AND COALESCE(resolved_at, created_at) <= now() - make_interval(days => $1))
                  OR ($2 AND status = 'pending' AND created_at <= now() - make_interval(days => $1))
               RETURNING status)
             SELECT status, count(*) FROM gone GROUP BY status ORDER BY status",
            &[&(purge.older_than_days as i32), &purge.pending],
        )
        .await
        .map_err(query_error("purging dead letters"))?;
    Ok(rows
        .iter()
        .map(|r| StatusCount {
            status: r.get(0),
            count: r.get(1),
        })
        .collect())
}

/// A dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "the leadsync schema does not exist ({0}): run `leadsync setup` and `leadsync run` first"
    )]
    NotSetUp(String),
    #[error("no dead letter with id {}: see `leadsync dlq list`", join(.0))]
    UnknownIds(Vec<i64>),
    #[error(
        "the daemon did not finish resync request(s) {} within {seconds} s: is `leadsync run` \
         running? The requests stay filed and run when it starts; check later with \
         `leadsync dlq list`, or retry with a larger --timeout",
        join(.requests)
    )]
    Timeout { requests: Vec<i64>, seconds: u64 },
    #[error(
        "`dlq purge --pending` deletes changes that were never applied: add --yes-lose-pending \
         to confirm"
    )]
    PendingNotConfirmed,
    #[error("dead-letter query failed while {context}: {message}")]
    Query {
        context: &'static str,
        message: String,
    },
}

fn join(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn query_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> DlqError {
    move |e| match e.code().map(|c| c.code()) {
        Some("42P01") | Some("3F000") => DlqError::NotSetUp(db::error_text(&e)),
        _ => DlqError::Query {
            context,
            message: db::error_text(&e),
        },
    }
}

/// One dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    /// The contact whose change was rejected (`None` for a change that names none).
    pub contact_id: Option<Uuid>,
    /// Source LSN of the rejected change.
    pub lsn: Option<String>,
    pub source_table: String,
    pub operation: String,
    pub error: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// Seconds since it was recorded.
    pub age_seconds: i64,
}

/// How many dead letters have one status.
#[derive(Debug, Clone, Serialize)]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
}

/// `dlq list`.
#[derive(Debug, Clone, Serialize)]
pub struct DlqList {
    /// Pending dead letters, oldest first.
    pub pending: Vec<DeadLetter>,
    /// Every status present, with its count.
    pub by_status: Vec<StatusCount>,
}

const SELECT_LETTERS: &str = "SELECT id, contact_id, lsn::text, source_table, operation, error,
        status, created_at, GREATEST(0, extract(epoch FROM now() - created_at))::int8
     FROM leadsync.dead_letters";

fn letter_from_row(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        contact_id: r.get(1),
        lsn: r.get(2),
        source_table: r.get(3),
        operation: r.get(4),
        error: r.get(5),
        status: r.get(6),
        created_at: r.get(7),
        age_seconds: r.get(8),
    }
}

/// Runs a `leadsync dlq` subcommand and prints its report. Returns `false` when a retry
/// left dead letters pending (the binary then exits with status 1).
pub async fn run_dlq(settings: &Settings, command: DlqCommand) -> Result<bool, DlqError> {
    match command {
        DlqCommand::List { json } => {
            let list = run_dlq_list(settings).await?;
            if json {
                println!("{}", to_json(&list));
            } else {
                print!("{}", crate::text::fit(&list.render()));
            }
            Ok(true)
        }
        DlqCommand::Retry { ids, timeout, json } => {
            let report = run_dlq_retry(settings, &ids, Duration::from_secs(timeout)).await?;
            if json {
                println!("{}", to_json(&report));
            } else {
                print!("{}", crate::text::fit(&report.render()));
            }
            Ok(report.still_pending() == 0)
        }
        DlqCommand::Purge {
            older_than_days,
            pending,
            yes_lose_pending,
        } => {
            if pending && !yes_lose_pending {
                return Err(DlqError::PendingNotConfirmed);
            }
            let client = db::connect(settings.source_url()).await?;
            let gone = purge(
                &client,
                Purge {
                    older_than_days,
                    pending,
                },
            )
            .await?;
            if gone.is_empty() {
                println!("no dead letter to purge");
            }
            for c in &gone {
                println!("purged {} {} dead letters", c.count, c.status);
            }
            Ok(true)
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Runs `leadsync dlq list`.
pub async fn run_dlq_list(settings: &Settings) -> Result<DlqList, DlqError> {
    let client = db::connect(settings.source_url()).await?;
    list(&client).await
}

async fn list(client: &Client) -> Result<DlqList, DlqError> {
    let pending = client
        .query(
            &format!("{SELECT_LETTERS} WHERE status = 'pending' ORDER BY id"),
            &[],
        )
        .await
        .map_err(query_error("listing dead letters"))?
        .iter()
        .map(letter_from_row)
        .collect();
    let by_status = client
        .query(
            "SELECT status, count(*) FROM leadsync.dead_letters GROUP BY status ORDER BY status",
            &[],
        )
        .await
        .map_err(query_error("counting dead letters"))?
        .iter()
        .map(|r| StatusCount {
            status: r.get(0),
            count: r.get(1),
        })
        .collect();
    Ok(DlqList { pending, by_status })
}

/// `2d 3h`, `4m 10s`: an age for people.
fn human_age(seconds: i64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

impl DlqList {
    /// The human report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.pending.is_empty() {
            out.push_str("no pending dead letters\n");
        } else {
            // One block per dead letter: its whole error, wrapped to the terminal.
            for d in self.pending.iter().take(LIST_SHOWN) {
                out.push_str(&format!(
                    "#{}  contact {}  at {}  {} ago\n    {}\n",
                    d.id,
                    d.contact_id.map_or("-".into(), |c| c.to_string()),
                    d.lsn.as_deref().unwrap_or("-"),
                    human_age(d.age_seconds),
                    d.error.replace('\n', "\n    ")
                ));
            }
            if self.pending.len() > LIST_SHOWN {
                out.push_str(&format!(
                    "… and {} more (all of them with --json)\n",
                    self.pending.len() - LIST_SHOWN
                ));
            }
            out.push_str(
                "fix the data in the source (the next change of a contact that fits resolves \
                 its dead letter), or run `leadsync dlq retry [ID…]` to re-read it now\n",
            );
        }
        let counts: Vec<String> = self
            .by_status
            .iter()
            .map(|c| format!("{} {}", c.count, c.status))
            .collect();
        out.push_str(&format!(
            "dead letters by status: {}\n",
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        ));
        out
    }
}

/// The outcome of retrying one dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct RetryOutcome {
    pub id: i64,
    pub contact_id: Option<Uuid>,
    /// `replayed` (resolved), `pending` (still rejected), or the status it already had.
    pub status: String,
    /// Still pending: the error of the latest attempt.
    pub error: Option<String>,
    /// Why it was not retried, if it was not.
    pub skipped: Option<String>,
}

/// `dlq retry`.
#[derive(Debug, Clone, Serialize)]
pub struct RetryReport {
    /// Re-sync requests filed: `(request id, workspace)`; a `None` workspace is all of them.
    pub requests: Vec<(i64, Option<Uuid>)>,
    /// Contacts the daemon re-read for them.
    pub contacts_reread: i64,
    pub seconds: f64,
    pub letters: Vec<RetryOutcome>,
}

impl RetryReport {
    /// Dead letters that are still pending.
    pub fn still_pending(&self) -> usize {
        self.letters
            .iter()
            .filter(|l| l.status == "pending")
            .count()
    }

    /// The human report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (id, workspace) in &self.requests {
            out.push_str(&format!(
                "resync request {id}: {}\n",
                workspace.map_or("every workspace".to_owned(), |w| format!("workspace {w}"))
            ));
        }
        if !self.requests.is_empty() {
            out.push_str(&format!(
                "the daemon re-read {} contacts in {:.1}s\n",
                self.contacts_reread, self.seconds
            ));
        }
        for l in &self.letters {
            let contact = l.contact_id.map_or("-".into(), |c| c.to_string());
            match (&l.skipped, l.status.as_str()) {
                (Some(why), _) => out.push_str(&format!(
                    "dead letter {} (contact {contact}): {why}\n",
                    l.id
                )),
                (None, "replayed") => out.push_str(&format!(
                    "dead letter {} (contact {contact}): resolved, its current state is written\n",
                    l.id
                )),
                (None, status) => out.push_str(&format!(
                    "dead letter {} (contact {contact}): still {status}: {}\n",
                    l.id,
                    l.error.as_deref().unwrap_or("")
                )),
            }
        }
        let pending = self.still_pending();
        if pending > 0 {
            out.push_str(&format!(
                "{pending} still pending: fix the data in the source and retry\n"
            ));
        }
        out
    }
}

/// Runs `leadsync dlq retry`: files one re-sync request per workspace of the retried
/// contacts, waits for the daemon to carry them out (at most `timeout`), and reports each
/// dead letter's status afterwards. `ids` empty: every pending dead letter.
pub async fn run_dlq_retry(
    settings: &Settings,
    ids: &[i64],
    timeout: Duration,
) -> Result<RetryReport, DlqError> {
    let client = db::connect(settings.source_url()).await?;
    let started = Instant::now();
    let letters: Vec<DeadLetter> = if ids.is_empty() {
        client
            .query(
                &format!("{SELECT_LETTERS} WHERE status = 'pending' ORDER BY id"),
                &[],
            )
            .await
    } else {
        client
            .query(
                &format!("{SELECT_LETTERS} WHERE id = ANY($1) ORDER BY id"),
                &[&ids],
            )
            .await
    }
    .map_err(query_error("reading dead letters"))?
    .iter()
    .map(letter_from_row)
    .collect();
    let found: BTreeSet<i64> = letters.iter().map(|l| l.id).collect();
    let unknown: Vec<i64> = ids.iter().copied().filter(|i| !found.contains(i)).collect();
    if !unknown.is_empty() {
        return Err(DlqError::UnknownIds(unknown));
    }

    let mut outcomes = Vec::new();
    let mut contacts = BTreeSet::new();
    for l in &letters {
        let skipped = if l.status != "pending" {
            Some(format!("not retried: it is already {}", l.status))
        } else if l.contact_id.is_none() {
            Some(
                "not retried: it names no contact; it is resolved by the next change of its \
                 row"
                .to_owned(),
            )
        } else {
            None
        };
        if skipped.is_none()
            && let Some(c) = l.contact_id
        {
            contacts.insert(c);
        }
        outcomes.push(RetryOutcome {
            id: l.id,
            contact_id: l.contact_id,
            status: l.status.clone(),
            error: None,
            skipped,
        });
    }
    if contacts.is_empty() {
        return Ok(RetryReport {
            requests: Vec::new(),
            contacts_reread: 0,
            seconds: started.elapsed().as_secs_f64(),
            letters: outcomes,
        });
    }

    let contacts: Vec<Uuid> = contacts.into_iter().collect();
    let requests = file_rereads(&client, &settings.source.schema, &contacts)
        .await
        .map_err(query_error("filing resync requests"))?;
    let request_ids: Vec<i64> = requests.iter().map(|(id, _)| *id).collect();
    let contacts_reread = wait_for_requests(&client, &request_ids, timeout).await?;

    let after: Vec<DeadLetter> = client
        .query(
            &format!("{SELECT_LETTERS} WHERE id = ANY($1)"),
            &[&outcomes.iter().map(|o| o.id).collect::<Vec<i64>>()],
        )
        .await
        .map_err(query_error("reading dead letters"))?
        .iter()
        .map(letter_from_row)
        .collect();
    for o in outcomes.iter_mut().filter(|o| o.skipped.is_none()) {
        if let Some(now) = after.iter().find(|l| l.id == o.id) {
            o.status = now.status.clone();
            o.error = (now.status == "pending").then(|| now.error.clone());
        }
    }
    Ok(RetryReport {
        requests,
        contacts_reread,
        seconds: started.elapsed().as_secs_f64(),
        letters: outcomes,
    })
}

/// Files the re-sync requests that re-read `contacts` from the source: one per workspace
/// of theirs (the source's, or leadsync's own copy for a contact the source no longer has;
/// every workspace when one is unknown anywhere), except where a request for the same
/// scope is still pending, which reads the current source anyway. Returns the requests
/// filed, as (id, workspace).
pub async fn file_rereads(
    client: &Client,
    source_schema: &str,
    contacts: &[Uuid],
) -> Result<Vec<(i64, Option<Uuid>)>, tokio_postgres::Error> {
    let s = quote_ident(source_schema);
    let rows = client
        .query(
            &format!(
                "SELECT x.id, COALESCE(c.workspace_id, m.workspace_id)
                 FROM unnest($1::uuid[]) AS x(id)
                 LEFT JOIN {s}.contacts c ON c.id = x.id
                 LEFT JOIN leadsync.contacts m ON m.id = x.id"
            ),
            &[&contacts],
        )
        .await?;
    let workspaces: BTreeSet<Option<Uuid>> = rows.iter().map(|r| r.get(1)).collect();
    let scopes: Vec<Option<Uuid>> = if workspaces.contains(&None) {
        vec![None]
    } else {
        workspaces.into_iter().collect()
    };
    let mut requests = Vec::new();
    for workspace in scopes {
        // One statement, so the pending request it finds and the check agree.
        let id: i64 = client
            .query_one(
                "WITH pending AS (
                   SELECT max(id) AS id FROM leadsync.resync_requests
                   WHERE status = 'pending' AND workspace_id IS NOT DISTINCT FROM $1),
                 filed AS (
                   INSERT INTO leadsync.resync_requests (workspace_id)
                   SELECT $1 WHERE (SELECT id FROM pending) IS NULL RETURNING id)
                 SELECT COALESCE((SELECT id FROM filed), (SELECT id FROM pending))",
                &[&workspace],
            )
            .await?
            .try_get(0)?;
        requests.push((id, workspace));
    }
    Ok(requests)
}

/// Waits until every request is `done`; returns the contacts they re-read.
async fn wait_for_requests(
    client: &Client,
    ids: &[i64],
    timeout: Duration,
) -> Result<i64, DlqError> {
    let started = Instant::now();
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status <> 'done'), COALESCE(sum(contacts), 0)::int8
                 FROM leadsync.resync_requests WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(query_error("waiting for the resync requests"))?;
        let (open, contacts): (i64, i64) = (row.get(0), row.get(1));
        if open == 0 {
            return Ok(contacts);
        }
        if started.elapsed() >= timeout {
            return Err(DlqError::Timeout {
                requests: ids.to_vec(),
                seconds: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_people_write_them() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(250), "4m 10s");
        assert_eq!(human_age(3 * 3600 + 120), "3h 2m");
        assert_eq!(human_age(2 * 86_400 + 3 * 3600), "2d 3h");
    }

    #[test]
    fn the_list_shows_each_whole_error_within_the_terminal_width() {
        let error = format!(
            "customers.phone1 takes at most 20 characters; contacts.phone_number has 24 ({})",
            "and the rest of a long explanation ".repeat(5)
        );
        let list = DlqList {
            pending: vec![DeadLetter {
                id: 7,
                contact_id: Some(Uuid::nil()),
                lsn: Some("0/16B3748".into()),
                source_table: "contacts".into(),
                operation: "INSERT".into(),
                error: error.clone(),
                status: "pending".into(),
                created_at: Utc::now(),
                age_seconds: 250,
            }],
            by_status: vec![],
        };
        let shown = crate::text::fit(&list.render());
        assert!(
            shown
                .lines()
                .all(|l| l.chars().count() <= crate::text::WIDTH),
            "{shown}"
        );
        assert!(shown.contains(
            "#7  contact 00000000-0000-0000-0000-000000000000  at 0/16B3748  4m 10s ago"
        ));
        let words: Vec<&str> = shown.split_whitespace().collect();
        let wanted: Vec<&str> = error.split_whitespace().collect();
        assert!(
            words.windows(wanted.len()).any(|w| w == wanted.as_slice()),
            "the error is cut:\n{shown}"
        );
    }
}
