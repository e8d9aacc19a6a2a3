//! `leadsync resync`: damaged target rows are repaired from the live source while the daemon
//! streams and legacy writes go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leadsync::cmd::setup::run_setup;
use leadsync::testing::{Daemon, TestDb, daemon_env};

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");

fn resync(env: Vec<(String, String)>, workspace: Option<&str>) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("resync");
    if let Some(w) = workspace {
        cmd.args(["--workspace", w]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("resync did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "resync failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
}

#[tokio::test]
async fn resync_repairs_damaged_rows_while_writes_continue() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    leadsync::fixtures::generate_demo_data(&client, 3000)
        .await
        .unwrap();
    run_setup(&db.settings()).await.unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(Duration::from_secs(120), &|| daemon.log())
        .await;

    // The largest workspace, damaged in every way validation can find.
    let workspace = db.busiest_workspace().await;
    let w = workspace.to_string();
    client
        .batch_execute(&format!(
            "DELETE FROM customers WHERE cst_id IN (SELECT cst_id FROM customers
               WHERE workspace_id = '{w}' ORDER BY cst_id LIMIT 20);
             UPDATE leads SET productid = 'BROKEN' WHERE id IN (SELECT id FROM leads
               WHERE workspace_id = '{w}' AND deleted_at IS NULL ORDER BY id LIMIT 20);
             UPDATE appointments SET deleted_at = now() WHERE id IN (SELECT id FROM appointments
               WHERE workspace_id = '{w}' AND deleted_at IS NULL ORDER BY id LIMIT 5);
             DELETE FROM customer_custom_fields WHERE customer_id IN (SELECT cst_id FROM customers
               WHERE workspace_id = '{w}' ORDER BY cst_id DESC LIMIT 30);
             INSERT INTO customers (cst_id, workspace_id, firstname, migrated_from_contact_id)
               VALUES (gen_random_uuid(), '{w}', 'Ghost', gen_random_uuid());"
        ))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let client = db.client().await;
        let w = w.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sql = if n % 2 == 0 {
                    format!(
                        "UPDATE contacts SET lead_status = 'qualified', tags = 'hvac', updated_at = now()
                         WHERE id = (SELECT id FROM contacts WHERE workspace_id = '{w}'
                                     ORDER BY md5(id::text || now()::text) LIMIT 1)"
                    )
                } else {
                    format!(
                        "INSERT INTO contacts (workspace_id, firstname, lead_status)
                         VALUES ('{w}', 'Live', 'new')"
                    )
                };
                client.batch_execute(&sql).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let env = daemon_env(&db);
    tokio::task::spawn_blocking(move || resync(env, Some(&w)))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 0);
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    db.assert_projection(&db.settings()).await;

    // Every workspace: damage elsewhere, resync without a workspace. (Columns reverse sync
    // does not carry back: an edit of a customer's name or email is the application's, and
    // goes to the contact.)
    client
        .batch_execute(
            "UPDATE customers SET country = 'XX', dateadded = now() WHERE cst_id IN
               (SELECT cst_id FROM customers WHERE deleted_at IS NULL ORDER BY md5(cst_id::text) LIMIT 50)",
        )
        .await
        .unwrap();
    let env = daemon_env(&db);
    tokio::task::spawn_blocking(move || resync(env, None))
        .await
        .unwrap();
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    db.assert_projection(&db.settings()).await;
}
