//! Random interleavings on a real daemon (SPEC §2, §4, §5): legacy edits of random column
//! subsets (values that do not fit, `infinity`, dates whose derived dates PostgreSQL cannot
//! hold, large out-of-line tags), application edits of random customer columns, pauses, a
//! legacy lock held across steps, key changes and large values moved between fields. After
//! each run:
//! - every contact without a pending dead letter has exactly its projection in the target;
//! - every legacy edit survives unless a later commit changed the same column (the
//!   application's edits, carried back, count as commits to the contact's column);
//! - a contact has a pending dead letter exactly when its current row cannot be projected;
//! - every such contact's customer carries its contact's values.
//!
//! Each run is seeded; a failure names its seed and step log.

use std::collections::HashMap;
use std::time::Duration;

use leadsync::cmd::setup::run_setup;
use leadsync::source::convert::REVERSE_COLUMNS;
use leadsync::testing::{Daemon, TestDb, daemon_env};
use tokio_postgres::Client;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(120);
const W: &str = "f0000000-0000-4000-8000-0000000000a1";
const F_CONTACT: &str = "f0000000-0000-4000-8000-0000000000f1";
const F_LEAD: &str = "f0000000-0000-4000-8000-0000000000f2";
const EDITED: u128 = 12;
const MOVED: u128 = 6;
const STEPS: usize = 90;

/// The carried columns: (customers column, contacts column).
const CARRIED: [(&str, &str); 8] = REVERSE_COLUMNS;

/// Legacy columns the legacy edits write.
const LEGACY: [&str; 12] = [
    "firstname",
    "lastname",
    "email",
    "phone_number",
    "st_address",
    "city",
    "state",
    "zip",
    "lead_status",
    "tags",
    "appointment_date",
    "priority",
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn edited_id(i: u128) -> Uuid {
    Uuid::from_u128(0xf000_0000_0000_4000_8000_0000_0000_0100 + i)
}

/// An SQL literal for a legacy column's new value.
fn legacy_value(rng: &mut Rng, column: &str, step: usize) -> String {
    if rng.chance(8) && column != "firstname" {
        return "NULL".into();
    }
    match column {
        "phone_number" if rng.chance(25) => "'(555) 123-4567 ext. 1234'".into(),
        "phone_number" => format!("'555-{:04}'", rng.below(10_000)),
        "lead_status" => format!("'{}'", rng.pick(&["new", "won", "lost"])),
        "tags" if rng.chance(30) => format!(
            "(SELECT string_agg(md5(i::text || '{step}'), ' ') || ' {}'
              FROM generate_series(1, 150) i)",
            rng.pick(&["hvac", "roofing", "none"])
        ),
        "tags" => format!("'{}'", rng.pick(&["solar", "hvac", "roofing x", "other"])),
        "appointment_date" => rng
            .pick(&[
                "'2025-01-05 10:00:00'",
                "'2026-07-01 08:30:00'",
                "'infinity'",
                "'-infinity'",
                "'4714-11-24 12:00:00 BC'",
            ])
            .into(),
        "priority" => format!("{}", rng.below(5)),
        other => format!("'L{step}-{other}'"),
    }
}

/// The running scenario: the database, the daemon and what each column should end as.
struct Run {
    db: TestDb,
    daemon: Daemon,
    client: Client,
    rng: Rng,
    /// (contact, legacy column) → the value of the last commit that changed it, as text.
    expected: HashMap<(Uuid, String), Option<String>>,
    /// Current ids of the contacts whose id changes.
    moved: Vec<Uuid>,
    paused: bool,
    /// A legacy transaction holding one contact's row, and which.
    locker: Option<(Client, Uuid)>,
    log: Vec<String>,
}

impl Run {
    async fn start(seed: u64) -> Run {
        let db = TestDb::spawn().await;
        let client = db.client().await;
        exec(
            &client,
            &format!("INSERT INTO workspaces (id, name) VALUES ('{W}', 'interleavings')"),
        )
        .await;
        run_setup(&db.settings()).await.unwrap();
        let mut seed_sql = format!(
            "ALTER TABLE contacts ALTER COLUMN tags SET STORAGE EXTERNAL;
             ALTER TABLE contact_custom_fields ALTER COLUMN value SET STORAGE EXTERNAL;
             INSERT INTO custom_fields (id, workspace_id, name, context_type) VALUES
               ('{F_CONTACT}', '{W}', 'budget', 'contact'), ('{F_LEAD}', '{W}', 'size', 'lead');"
        );
        for i in 0..EDITED + MOVED {
            let id = edited_id(i);
            seed_sql.push_str(&format!(
                "INSERT INTO contacts (id, workspace_id, firstname, lastname, email, phone_number,
                                       lead_status, tags)
                 VALUES ('{id}', '{W}', 'F{i}', 'L{i}', 'c{i}@example.com', '555-01{i:02}',
                         'new', 'solar');"
            ));
            if i < EDITED {
                seed_sql.push_str(&format!(
                    "INSERT INTO contact_custom_fields (contact_id, field_id, value)
                     SELECT '{id}', '{F_CONTACT}', to_jsonb(string_agg(md5(g::text), ''))
                     FROM generate_series(1, 120) g;"
                ));
            }
        }
        exec(&client, &seed_sql).await;
        let daemon = Daemon::start(BIN, &daemon_env(&db));
        let mut run = Run {
            db,
            daemon,
            client,
            rng: Rng(seed),
            expected: HashMap::new(),
            moved: (EDITED..EDITED + MOVED).map(edited_id).collect(),
            paused: false,
            locker: None,
            log: vec![format!("seed {seed}")],
        };
        run.db.wait_caught_up(CATCH_UP, &|| run.daemon.log()).await;
        for i in 0..EDITED {
            let id = edited_id(i);
            let now = run.legacy_row(id).await;
            for (column, value) in LEGACY.iter().zip(now) {
                run.expected.insert((id, (*column).to_owned()), value);
            }
        }
        run
    }

    async fn legacy_row(&self, id: Uuid) -> Vec<Option<String>> {
        let columns: Vec<String> = LEGACY.iter().map(|c| format!("{c}::text")).collect();
        self.client
            .query_one(
                &format!(
                    "SELECT ARRAY[{}] FROM contacts WHERE id = $1",
                    columns.join(", ")
                ),
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    fn context(&self) -> String {
        format!("{}\n{}", self.log.join("\n"), self.daemon.log())
    }

    /// One random step.
    async fn step(&mut self, step: usize) {
        match self.rng.below(100) {
            0..=39 => self.legacy_edit(step).await,
            40..=69 => self.application_edit(step).await,
            70..=76 => self.toggle_pause().await,
            77..=82 => self.toggle_lock().await,
            83..=88 => self.key_change().await,
            89..=94 => self.move_value().await,
            _ => self.large_tags_of_moved(step).await,
        }
    }

    /// A contact not held by the locker (the test's own session would wait for it).
    fn free_contact(&mut self) -> Uuid {
        loop {
            let id = edited_id(self.rng.below(EDITED as usize) as u128);
            if self.locker.as_ref().is_none_or(|(_, held)| *held != id) {
                return id;
            }
        }
    }

    async fn legacy_edit(&mut self, step: usize) {
        let id = self.free_contact();
        let mut set = Vec::new();
        for column in LEGACY {
            if self.rng.chance(30) {
                set.push(format!(
                    "{column} = {}",
                    legacy_value(&mut self.rng, column, step)
                ));
            }
        }
        if set.is_empty() {
            set.push(format!("firstname = 'L{step}-firstname'"));
        }
        let changed = self
            .changing_update(
                &format!(
                    "UPDATE contacts SET {}, updated_at = now() WHERE id = $1",
                    set.join(", ")
                ),
                "contacts",
                "id",
                &LEGACY,
                id,
            )
            .await;
        for (column, value) in &changed {
            self.expected
                .insert((id, (*column).to_owned()), value.clone());
        }
        self.log
            .push(format!("{step}: legacy {id} {}", set.join(", ")));
    }

    async fn application_edit(&mut self, step: usize) {
        let id = edited_id(self.rng.below(EDITED as usize) as u128);
        let mut set = Vec::new();
        let mut columns = Vec::new();
        for (customer, contact) in CARRIED {
            if self.rng.chance(30) {
                let value = if customer == "phone1" {
                    format!("'555-9{:03}'", self.rng.below(1000))
                } else {
                    format!("'A{step}-{customer}'")
                };
                set.push(format!("{customer} = {value}"));
                columns.push((customer, contact));
            }
        }
        if set.is_empty() {
            set.push(format!("lastname = 'A{step}-lastname'"));
            columns.push(("lastname", "lastname"));
        }
        let customer_columns: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
        let changed = self
            .changing_update(
                &format!("UPDATE customers SET {} WHERE cst_id = $1", set.join(", ")),
                "customers",
                "cst_id",
                &customer_columns,
                id,
            )
            .await;
        for (customer, value) in &changed {
            let contact = CARRIED
                .iter()
                .find(|(c, _)| c == customer)
                .map(|(_, to)| *to)
                .unwrap();
            self.expected
                .insert((id, contact.to_owned()), value.clone());
        }
        self.log
            .push(format!("{step}: application {id} {}", set.join(", ")));
    }

    /// Runs `update` (with `$1` = `id`) in a transaction that reads `columns` before and
    /// after; returns the columns whose value changed, with their new value as text.
    async fn changing_update(
        &self,
        update: &str,
        table: &str,
        key: &str,
        columns: &[&'static str],
        id: Uuid,
    ) -> Vec<(&'static str, Option<String>)> {
        let list: Vec<String> = columns.iter().map(|c| format!("{c}::text")).collect();
        let select = format!(
            "SELECT ARRAY[{}] FROM {table} WHERE {key} = $1 FOR UPDATE",
            list.join(", ")
        );
        exec(&self.client, "BEGIN").await;
        let before: Vec<Option<String>> =
            self.client.query_one(&select, &[&id]).await.unwrap().get(0);
        self.client
            .execute(update, &[&id])
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{update}"));
        let after: Vec<Option<String>> =
            self.client.query_one(&select, &[&id]).await.unwrap().get(0);
        exec(&self.client, "COMMIT").await;
        columns
            .iter()
            .zip(before.into_iter().zip(after))
            .filter(|(_, (b, a))| b != a)
            .map(|(c, (_, a))| (*c, a))
            .collect()
    }

    /// Pauses or resumes, and waits until the daemon has taken the signal: two signals
    /// pending at once reach a process in no defined order, so an operator's pause and
    /// resume are seconds apart, never microseconds.
    async fn toggle_pause(&mut self) {
        self.paused = !self.paused;
        let (signal, seen) = if self.paused {
            (libc::SIGUSR1, "SIGUSR1: pausing")
        } else {
            (libc::SIGUSR2, "SIGUSR2: resuming")
        };
        let before = self.daemon.log().matches(seen).count();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.daemon.pid() as i32, signal) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.daemon.log().matches(seen).count() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not take {seen}\n{}",
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.log.push(format!("pause {}", self.paused));
    }

    async fn toggle_lock(&mut self) {
        if let Some((locker, id)) = self.locker.take() {
            exec(&locker, "COMMIT").await;
            self.log.push(format!("unlock {id}"));
            return;
        }
        let id = edited_id(self.rng.below(EDITED as usize) as u128);
        let locker = self.db.client().await;
        exec(
            &locker,
            &format!("BEGIN; UPDATE contacts SET notes = 'held' WHERE id = '{id}'"),
        )
        .await;
        self.log.push(format!("lock {id}"));
        self.locker = Some((locker, id));
    }

    async fn key_change(&mut self) {
        let slot = self.rng.below(self.moved.len());
        let new = Uuid::new_v4();
        let old = self.moved[slot];
        exec(
            &self.client,
            &format!("UPDATE contacts SET id = '{new}' WHERE id = '{old}'"),
        )
        .await;
        self.moved[slot] = new;
        self.log.push(format!("key {old} -> {new}"));
    }

    async fn large_tags_of_moved(&mut self, step: usize) {
        let id = self.moved[self.rng.below(self.moved.len())];
        let tags = legacy_value(&mut self.rng, "tags", step);
        exec(
            &self.client,
            &format!("UPDATE contacts SET tags = {tags}, lead_status = 'new' WHERE id = '{id}'"),
        )
        .await;
        self.log.push(format!("tags of {id}: {tags}"));
    }

    /// Moves a contact's large value to the other field (its value arrives unchanged).
    async fn move_value(&mut self) {
        let id = self.free_contact();
        exec(
            &self.client,
            &format!(
                "UPDATE contact_custom_fields
                 SET field_id = CASE field_id WHEN '{F_CONTACT}' THEN '{F_LEAD}'::uuid
                                              ELSE '{F_CONTACT}'::uuid END
                 WHERE contact_id = '{id}'"
            ),
        )
        .await;
        self.log.push(format!("value of {id} moved"));
    }

    async fn finish(&mut self) {
        if let Some((locker, id)) = self.locker.take() {
            exec(&locker, "COMMIT").await;
            self.log.push(format!("unlock {id}"));
        }
        if self.paused {
            self.toggle_pause().await;
        }
        // The write-backs, the forward writes they cause, and the queue, drained.
        for _ in 0..4 {
            self.db.wait_caught_up(CATCH_UP, &|| self.context()).await;
            tokio::time::sleep(Duration::from_millis(1_200)).await;
        }
        let queued: i64 = self
            .client
            .query_one("SELECT count(*) FROM leadsync.reverse_queue", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(queued, 0, "write-backs left waiting\n{}", self.context());
    }

    async fn check(&self) {
        // Every legacy edit survives unless a later commit changed the same column.
        for i in 0..EDITED {
            let id = edited_id(i);
            let now = self.legacy_row(id).await;
            for (column, value) in LEGACY.iter().zip(now) {
                let expected = &self.expected[&(id, (*column).to_owned())];
                assert_eq!(
                    &value,
                    expected,
                    "contact {id}.{column}: the last commit's value was lost\n{}",
                    self.context()
                );
            }
        }
        // A dead letter is pending exactly for the contacts that cannot be projected now.
        let stuck: Vec<(Uuid, bool, bool)> = self
            .client
            .query(
                &format!(
                    "SELECT c.id,
                            EXISTS (SELECT 1 FROM leadsync.dead_letters d
                                    WHERE d.status = 'pending' AND d.contact_id = c.id),
                            COALESCE(char_length(c.phone_number) > 20, false)
                            OR COALESCE(c.lead_status IS NOT NULL
                                        AND isfinite(c.appointment_date)
                                        AND c.appointment_date < '4714-11-25 00:00:00 BC',
                                        false)
                     FROM contacts c WHERE c.workspace_id = '{W}'"
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        for (id, pending, unprojectable) in &stuck {
            assert_eq!(
                pending,
                unprojectable,
                "contact {id}: pending dead letter {pending}, cannot be projected {unprojectable}\n{}",
                self.context()
            );
        }
        // The target is the projection of every other contact ...
        self.db.assert_projection(&self.db.settings()).await;
        // ... and their customers carry their contacts' values.
        let customer: Vec<&str> = CARRIED.iter().map(|(c, _)| *c).collect();
        let contact: Vec<String> = CARRIED.iter().map(|(_, c)| format!("c.{c}")).collect();
        let differing: i64 = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM customers cu JOIN contacts c ON c.id = cu.cst_id
                     WHERE cu.deleted_at IS NULL
                       AND NOT EXISTS (SELECT 1 FROM leadsync.dead_letters d
                                       WHERE d.status = 'pending' AND d.contact_id = c.id)
                       AND ({}) IS DISTINCT FROM ({})",
                    customer
                        .iter()
                        .map(|c| format!("cu.{c}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    contact.join(", ")
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            differing,
            0,
            "customers differ from contacts\n{}",
            self.context()
        );
    }
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
}

async fn interleave(seed: u64) {
    let mut run = Run::start(seed).await;
    for step in 0..STEPS {
        run.step(step).await;
        if run.rng.chance(20) {
            tokio::time::sleep(Duration::from_millis(run.rng.below(300) as u64)).await;
        }
    }
    run.finish().await;
    run.check().await;
}

#[tokio::test]
async fn random_interleavings_keep_every_edit_and_the_projection_seed_1() {
    interleave(0x9E37_79B9_7F4A_7C15).await;
}

#[tokio::test]
async fn random_interleavings_keep_every_edit_and_the_projection_seed_2() {
    interleave(0xD1B5_4A32_D192_ED03).await;
}

#[tokio::test]
async fn random_interleavings_keep_every_edit_and_the_projection_seed_3() {
    interleave(0x8CB9_2BA7_2F3D_8DD7).await;
}
