//! Reverse sync on a real process: edits of migrated customers reach their contacts once,
//! with no echo; edits on both sides converge to the last commit; native customers, deleted
//! contacts and `sync.reverse = false` are left alone; a SIGKILL loses and loops nothing.

use std::net::SocketAddr;
use std::time::Duration;

use leadsync::cmd::validate::{Status, run_validate};
use leadsync::testing::{Daemon, TestDb, daemon_env_with_metrics, scrape_metrics};
use tokio_postgres::Client;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");

struct Running {
    db: TestDb,
    daemon: Daemon,
    client: Client,
    env: Vec<(String, String)>,
    metrics: SocketAddr,
}

impl Running {
    async fn start(contacts: u64, extra: &[(&str, &str)]) -> Running {
        let db = TestDb::spawn_ready(contacts).await;
        let (mut env, metrics) = daemon_env_with_metrics(&db);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let daemon = Daemon::start(BIN, &env);
        let client = db.client().await;
        let running = Running {
            db,
            daemon,
            client,
            env,
            metrics,
        };
        running.settle().await;
        running
    }

    /// Caught up with everything written so far, including what the daemon's own writes
    /// lead to (a reverse write, then the forward write it causes).
    async fn settle(&self) {
        self.db.settle(&self.daemon).await;
    }

    async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
    }

    async fn text(&self, sql: &str) -> Option<String> {
        self.client
            .query_opt(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{sql}"))
            .and_then(|r| r.get(0))
    }

    async fn count(&self, sql: &str) -> i64 {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{sql}"))
            .get(0)
    }

    /// A sample of the daemon's metrics (0 when absent).
    async fn metric(&self, key: &str) -> f64 {
        scrape_metrics(self.metrics)
            .await
            .get(key)
            .copied()
            .unwrap_or(0.0)
    }

    async fn transactions(&self) -> f64 {
        self.metric("leadsync_transactions_total").await
    }

    /// Target equals the projection of the source, and every live migrated customer holds
    /// its contact's values in the columns reverse sync carries.
    async fn assert_both_sides_equal(&self) {
        self.db.assert_projection(&self.db.settings()).await;
        let differing = self
            .count(
                "SELECT count(*) FROM customers cu JOIN contacts c ON c.id = cu.cst_id
                 WHERE cu.deleted_at IS NULL AND
                   (cu.firstname, cu.lastname, cu.email, cu.phone1, cu.address1, cu.city,
                    cu.state, cu.zip, cu.updated_at)
                   IS DISTINCT FROM
                   (c.firstname, c.lastname, c.email, c.phone_number, c.st_address, c.city,
                    c.state, c.zip, c.updated_at)",
            )
            .await;
        assert_eq!(differing, 0, "customers differ from their contacts");
    }

    /// Contacts with every column reverse sync could touch, as text, for before/after.
    async fn contacts_checksum(&self) -> String {
        self.text("SELECT md5(string_agg(c::text, ',' ORDER BY id)) FROM contacts c")
            .await
            .unwrap_or_default()
    }
}

/// Some contacts that have a customer, in a stable order.
async fn migrated(run: &Running, n: i64) -> Vec<Uuid> {
    run.client
        .query(
            "SELECT cst_id FROM customers
             WHERE migrated_from_contact_id IS NOT NULL AND deleted_at IS NULL
             ORDER BY cst_id LIMIT $1",
            &[&n],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn an_edit_reaches_its_contact_in_one_round_trip_and_then_the_stream_is_quiet() {
    let run = Running::start(200, &[]).await;
    let id = migrated(&run, 1).await[0];
    let before = run.transactions().await;
    let updated_before = run
        .text(&format!(
            "SELECT updated_at::text FROM contacts WHERE id = '{id}'"
        ))
        .await;
    // The new application edits the person.
    run.exec(&format!(
        "UPDATE customers SET firstname = 'Edited', email = 'edited@example.com',
                              phone1 = '555-0199', address1 = '1 New St', city = 'Reno',
                              state = 'NV', zip = '89501', lastname = NULL
         WHERE cst_id = '{id}'"
    ))
    .await;
    run.settle().await;

    let row = run
        .client
        .query_one(
            &format!(
                "SELECT firstname, lastname, email, phone_number, st_address, city, state, zip,
                        updated_at::text
                 FROM contacts WHERE id = '{id}'"
            ),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<Option<String>> = (0..9).map(|i| row.get(i)).collect();
    assert_eq!(
        got[..8],
        [
            Some("Edited".into()),
            None,
            Some("edited@example.com".into()),
            Some("555-0199".into()),
            Some("1 New St".into()),
            Some("Reno".into()),
            Some("NV".into()),
            Some("89501".into()),
        ],
        "{}",
        run.daemon.log()
    );
    assert_ne!(
        got[8], updated_before,
        "updated_at is set by the write back"
    );
    run.assert_both_sides_equal().await;
    let validation = run_validate(&run.db.settings(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(validation.passed, "{}", validation.render());
    assert!(
        validation
            .checks
            .iter()
            .any(|c| c.name == "contacts_match_customers" && c.status == Status::Pass),
        "{}",
        validation.render()
    );

    // One round trip: the write back, then the forward write of the contact's change, whose
    // own echo is recognised as leadsync's. Then nothing.
    assert_eq!(
        run.transactions().await - before,
        2.0,
        "{}",
        run.daemon.log()
    );
    assert_eq!(
        run.metric("leadsync_changes_total{table=\"contacts\",op=\"reverse_update\"}")
            .await,
        1.0
    );
    assert_eq!(
        run.metric("leadsync_changes_total{table=\"customers\",op=\"update\"}")
            .await,
        1.0,
        "the daemon's own customer writes are not considered for reverse sync"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.settle().await;
    assert_eq!(
        run.transactions().await - before,
        2.0,
        "the stream did not go quiet"
    );

    // An edit that changes nothing reverse sync carries writes nothing back.
    run.exec(&format!(
        "UPDATE customers SET phone2 = '555-0000' WHERE cst_id = '{id}'"
    ))
    .await;
    run.settle().await;
    assert_eq!(
        run.metric("leadsync_changes_total{table=\"contacts\",op=\"reverse_update\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn interleaved_edits_on_both_sides_converge_to_the_last_commit() {
    // One source transaction per target transaction: the daemon's echoes interleave with
    // later legacy writes, which is where an unrecognised echo would write stale values.
    let run = Running::start(200, &[("LEADSYNC_SYNC__MAX_BATCH_CHANGES", "1")]).await;
    let people = migrated(&run, 5).await;
    let mut last = std::collections::HashMap::new();
    for round in 0..60 {
        let person = people[round % people.len()];
        let value = format!("v{round}");
        // A fixed, irregular pattern of sides.
        let sql = if (round * 7 + round / 3) % 3 == 0 {
            format!(
                "UPDATE customers SET firstname = '{value}', city = 'C{round}' WHERE cst_id = '{person}'"
            )
        } else {
            format!(
                "UPDATE contacts SET firstname = '{value}', city = 'L{round}' WHERE id = '{person}'"
            )
        };
        run.exec(&sql).await;
        last.insert(person, value);
        if round % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    run.settle().await;
    for (person, value) in &last {
        let contact = run
            .text(&format!(
                "SELECT firstname FROM contacts WHERE id = '{person}'"
            ))
            .await;
        let customer = run
            .text(&format!(
                "SELECT firstname FROM customers WHERE cst_id = '{person}'"
            ))
            .await;
        assert_eq!(
            (contact.as_deref(), customer.as_deref()),
            (Some(value.as_str()), Some(value.as_str())),
            "{person}: {}",
            run.daemon.log()
        );
    }
    run.assert_both_sides_equal().await;
    let settled = run.transactions().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.settle().await;
    assert_eq!(run.transactions().await, settled, "still writing: a loop");
}

#[tokio::test]
async fn native_customers_and_deleted_contacts_are_left_alone() {
    let run = Running::start(100, &[]).await;
    let workspace: Uuid = run
        .client
        .query_one("SELECT workspace_id FROM contacts LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let gone = migrated(&run, 1).await[0];
    run.exec(&format!("DELETE FROM contacts WHERE id = '{gone}'"))
        .await;
    run.settle().await;
    let soft_deleted = run
        .count(&format!(
            "SELECT count(*) FROM customers WHERE cst_id = '{gone}' AND deleted_at IS NOT NULL"
        ))
        .await;
    assert_eq!(soft_deleted, 1);
    let contacts_before = run.contacts_checksum().await;

    // A customer of the new application, created and edited there.
    let native = Uuid::new_v4();
    run.exec(&format!(
        "INSERT INTO customers (cst_id, workspace_id, firstname) VALUES ('{native}', '{workspace}', 'Native');
         UPDATE customers SET firstname = 'Native too', email = 'n@example.com' WHERE cst_id = '{native}';"
    ))
    .await;
    // A native customer that claims a contact's id as its own but not as its origin.
    let claimed = migrated(&run, 1).await[0];
    run.exec(&format!(
        "UPDATE customers SET migrated_from_contact_id = NULL, firstname = 'Claimed'
         WHERE cst_id = '{claimed}'"
    ))
    .await;
    // An edit of the customer whose contact is gone: nothing is revived.
    run.exec(&format!(
        "UPDATE customers SET firstname = 'Ghost', deleted_at = NULL WHERE cst_id = '{gone}'"
    ))
    .await;
    run.settle().await;
    assert_eq!(
        run.contacts_checksum().await,
        contacts_before,
        "{}",
        run.daemon.log()
    );
    assert_eq!(
        run.count(&format!(
            "SELECT count(*) FROM contacts WHERE id = '{gone}'"
        ))
        .await,
        0
    );
    assert_eq!(
        run.metric("leadsync_changes_total{table=\"contacts\",op=\"reverse_update\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn with_reverse_sync_off_customer_edits_write_nothing() {
    // The publication still carries customers (setup ran with reverse sync on): the daemon
    // itself must leave them alone.
    let run = Running::start(100, &[("LEADSYNC_SYNC__REVERSE", "false")]).await;
    let people = migrated(&run, 3).await;
    let before = run.contacts_checksum().await;
    let transactions = run.transactions().await;
    for person in &people {
        run.exec(&format!(
            "UPDATE customers SET firstname = 'Offline', city = 'Nowhere' WHERE cst_id = '{person}'"
        ))
        .await;
    }
    run.settle().await;
    assert_eq!(run.contacts_checksum().await, before);
    assert_eq!(
        run.transactions().await,
        transactions,
        "{}",
        run.daemon.log()
    );
    assert_eq!(
        run.metric("leadsync_changes_total{table=\"customers\",op=\"update\"}")
            .await,
        0.0
    );
    // validate sees the customers that no longer agree with their contacts.
    let validation = run_validate(&run.db.settings(), Duration::from_secs(60))
        .await
        .unwrap();
    let check = validation
        .checks
        .iter()
        .find(|c| c.name == "contacts_match_customers")
        .unwrap_or_else(|| panic!("{}", validation.render()));
    assert_eq!(check.status, Status::Warn, "{}", validation.render());
    assert_eq!(check.target, Some(people.len() as i64));
}

#[tokio::test]
async fn a_sigkill_between_the_two_directions_loses_nothing_and_loops_nothing() {
    let mut run = Running::start(200, &[]).await;
    let people = migrated(&run, 6).await;
    for (round, person) in people.iter().enumerate() {
        let value = format!("k{round}");
        run.exec(&format!(
            "UPDATE customers SET firstname = '{value}' WHERE cst_id = '{person}'"
        ))
        .await;
        // Somewhere between receiving the edit, writing it back and the forward write.
        tokio::time::sleep(Duration::from_millis(40 * round as u64)).await;
        run.daemon.kill();
        run.db.wait_slot_released().await;
        run.daemon = Daemon::start(BIN, &run.env);
        run.settle().await;
        let contact = run
            .text(&format!(
                "SELECT firstname FROM contacts WHERE id = '{person}'"
            ))
            .await;
        assert_eq!(
            contact.as_deref(),
            Some(value.as_str()),
            "{}",
            run.daemon.log()
        );
        run.assert_both_sides_equal().await;
        let settled = run.transactions().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        run.settle().await;
        assert_eq!(run.transactions().await, settled, "round {round}: a loop");
    }
}
