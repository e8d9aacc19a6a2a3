//! TLS to PostgreSQL: a throwaway cluster that accepts only TLS connections, with a
//! certificate this test issues for `localhost` from a CA of its own. `setup` and the daemon
//! connect with `sslmode=verify-full` and stream, every session of theirs (the walsender
//! included) encrypted; a wrong CA or a host the certificate does not name is refused with
//! a message that says so.
#![cfg(feature = "test-utils")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use leadsync::Lsn;
use leadsync::cluster::{ClusterTls, TempCluster};
use leadsync::cmd::setup::{SetupError, run_setup};
use leadsync::config::Settings;
use leadsync::testing::{Daemon, TestDb, daemon_env, shared_cluster_options};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use secrecy::SecretString;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(60);

/// A CA, and a server certificate it issued for `localhost` only.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

fn make_ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_params, ca_key, ca_pem) = make_ca("leadsync test CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        // Another CA, which issued nothing the server has.
        let (_, _, other_pem) = make_ca("some other CA");
        std::fs::write(dir.path().join("other-ca.pem"), other_pem).unwrap();
        Pki {
            dir,
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

/// A cluster that takes TLS connections only.
async fn tls_cluster(pki: &Pki) -> TempCluster {
    let mut options = shared_cluster_options();
    options.tls = Some(ClusterTls {
        cert_pem: pki.server_cert.clone(),
        key_pem: pki.server_key.clone(),
        client_ca_pem: None,
        required: true,
    });
    tokio::task::spawn_blocking(move || TempCluster::start(&options))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `db`'s URL as the superuser through `host`, with TLS parameters.
fn url(db: &TestDb, host: &str, params: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/{}?{params}",
        db.port(),
        db.name
    )
}

fn settings_with(db: &TestDb, url: String) -> Settings {
    let mut settings = db.settings();
    settings.source.url = Some(SecretString::from(url));
    settings
}

fn verify_full(ca: &Path) -> String {
    format!("sslmode=verify-full&sslrootcert={}", ca.display())
}

#[tokio::test]
async fn setup_and_the_daemon_stream_over_verified_tls() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki).await;
    let db = TestDb::spawn_on(cluster.port(), true).await;
    let admin = db.client().await;
    leadsync::fixtures::generate_demo_data(&admin, 300)
        .await
        .unwrap();

    // A plain connection is refused, and the message says what to do.
    let plain = leadsync::db::connect(&SecretString::from(url(
        &db,
        "localhost",
        "sslmode=disable",
    )))
    .await
    .map(drop)
    .unwrap_err()
    .to_string();
    assert!(plain.contains("accepts only TLS connections"), "{plain}");

    // setup, verifying the server's certificate and name.
    let settings = settings_with(&db, url(&db, "localhost", &verify_full(&pki.ca())));
    run_setup(&settings).await.unwrap_or_else(|e| panic!("{e}"));
    leadsync::fixtures::assign_demo_field_contexts(&admin)
        .await
        .unwrap();

    // The daemon, verifying likewise (the libpq variables, which the URL may also carry).
    let mut env = daemon_env(&db);
    for (k, v) in env.iter_mut() {
        if k == "LEADSYNC_SOURCE__URL" {
            *v = format!("postgres://postgres@localhost:{}/{}", db.port(), db.name);
        }
    }
    env.push(("PGSSLMODE".into(), "verify-full".into()));
    env.push(("PGSSLROOTCERT".into(), pki.ca().display().to_string()));
    let daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    admin
        .batch_execute(
            "UPDATE contacts SET lead_status = 'qualified', tags = 'hvac'
              WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 25);
             DELETE FROM contacts WHERE id IN (SELECT id FROM contacts ORDER BY id DESC LIMIT 5);",
        )
        .await
        .unwrap();
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    db.assert_projection(&db.settings()).await;

    // Every session of the daemon is encrypted, the walsender included.
    let sessions: Vec<(String, bool, Option<String>)> = admin
        .query(
            "SELECT a.backend_type, s.ssl, s.version FROM pg_stat_activity a
             JOIN pg_stat_ssl s ON s.pid = a.pid
             WHERE a.datname = current_database() AND a.application_name = 'leadsync'
               AND a.pid <> pg_backend_pid()
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        sessions.iter().any(|(kind, ..)| kind == "walsender")
            && sessions
                .iter()
                .filter(|(kind, ..)| kind == "client backend")
                .count()
                >= 2,
        "{sessions:?}\n{}",
        daemon.log()
    );
    assert!(
        sessions
            .iter()
            .all(|(_, ssl, version)| *ssl
                && version.as_deref().is_some_and(|v| v.starts_with("TLSv1."))),
        "{sessions:?}"
    );
    drop(daemon);
    drop(db);
    drop(cluster);
}

#[tokio::test]
async fn a_wrong_ca_or_host_is_refused_and_verify_ca_checks_only_the_issuer() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki).await;
    let db = TestDb::spawn_on(cluster.port(), true).await;

    // A certificate from another CA: refused, on the SQL and on the replication connection.
    let wrong_ca = settings_with(&db, url(&db, "localhost", &verify_full(&pki.other_ca())));
    let err = run_setup(&wrong_ca).await.unwrap_err();
    assert!(matches!(err, SetupError::Connect(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("TLS connection to postgres@localhost")
            && text.contains("not issued by a certificate authority in sslrootcert")
            && text.contains("other-ca.pem"),
        "{text}"
    );
    let text = leadsync::source::create_slot(&wrong_ca)
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("not issued by a certificate authority in sslrootcert"),
        "{text}"
    );
    // require without a root certificate does not check who issued it.
    run_setup(&settings_with(
        &db,
        url(&db, "localhost", "sslmode=require"),
    ))
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The right CA, but a host the certificate does not name: verify-full refuses...
    let wrong_host = settings_with(&db, url(&db, "127.0.0.1", &verify_full(&pki.ca())));
    let text = run_setup(&wrong_host).await.unwrap_err().to_string();
    assert!(
        text.contains("does not name the host `127.0.0.1`") && text.contains("verify-ca"),
        "{text}"
    );
    let text = leadsync::source::create_slot(&wrong_host)
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(text.contains("127.0.0.1"), "{text}");

    // ...verify-ca accepts it, on both connections, and still refuses another CA.
    let verify_ca = |ca: &Path| {
        settings_with(
            &db,
            url(
                &db,
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
            ),
        )
    };
    let ok = verify_ca(&pki.ca());
    run_setup(&ok).await.unwrap_or_else(|e| panic!("{e}"));
    let slot = leadsync::source::create_slot(&ok)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(slot.consistent_point > Lsn::ZERO);
    drop(slot);
    let text = leadsync::source::create_slot(&verify_ca(&pki.other_ca()))
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("not issued by a certificate authority"),
        "{text}"
    );

    // A daemon given the wrong CA stops at once and says why: no retry fixes a certificate.
    // (TLS settings in the URL, as an operator writes them.)
    let mut env = daemon_env(&db);
    env.retain(|(k, _)| k != "LEADSYNC_SOURCE__URL");
    env.push((
        "LEADSYNC_SOURCE__URL".into(),
        format!(
            "postgres://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
            db.port(),
            db.name,
            pki.other_ca().display()
        ),
    ));
    let mut daemon = Daemon::start(BIN, &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.try_wait() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running with the wrong CA:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("not issued by a certificate authority"),
        "{log}"
    );
    assert!(log.contains("not retried"), "{log}");
    drop(daemon);
    drop(db);
    drop(cluster);
}
