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
    let log = daemon.wait_failed(Duration::from_secs(20)).await;
    assert!(
        log.contains("not issued by a certificate authority"),
        "{log}"
    );
    assert!(log.contains("not retried"), "{log}");
    drop(daemon);
    drop(db);
    drop(cluster);
}

/// This machine's address on its network (not loopback): where a server on another host
/// would be, as far as leadsync can tell.
fn network_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // No packet is sent: connecting a UDP socket only picks the route and its source address.
    socket
        .connect("192.0.2.255:9")
        .or_else(|_| socket.connect("10.255.255.255:9"))
        .expect("a network route: this test needs a non-loopback IPv4 address");
    let ip = socket.local_addr().unwrap().ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

/// A man in the middle on the server's address: it presents a certificate of a CA leadsync
/// does not trust (or speaks plain text, when asked in plain), and asks for the password in
/// clear text. What it receives is kept.
struct Impostor {
    addr: std::net::SocketAddr,
    /// The bodies of the password messages it got.
    received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Connections it accepted.
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn read_message<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let len = stream.read_i32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// After the startup message: ask for the password in clear text, keep the answer.
async fn ask_password<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    received: &std::sync::Mutex<Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    read_message(stream).await?; // the startup message
    stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    stream.flush().await?;
    let tag = stream.read_u8().await?;
    let body = read_message(stream).await?;
    if tag == b'p' {
        received.lock().unwrap().push(body);
    }
    Ok(())
}

async fn impostor(pki: &Pki) -> Impostor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::AsyncWriteExt;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind((network_address(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, c) = (received.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (acceptor, received) = (acceptor.clone(), r.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                let Ok(_) = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut first).await
                else {
                    return;
                };
                let code = i32::from_be_bytes([first[4], first[5], first[6], first[7]]);
                if code == 80877103 {
                    // SSLRequest: yes, with the impostor's certificate.
                    if stream.write_all(b"S").await.is_err() {
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = ask_password(&mut tls, &received).await;
                } else {
                    // A plain startup message: its first 8 bytes are read already.
                    let len = i32::from_be_bytes([first[0], first[1], first[2], first[3]]);
                    let mut rest = vec![0u8; (len as usize).saturating_sub(8)];
                    let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut rest).await;
                    let _ = stream.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
                    let mut tag = [0u8; 1];
                    if tokio::io::AsyncReadExt::read_exact(&mut stream, &mut tag)
                        .await
                        .is_ok()
                        && let Ok(body) = read_message(&mut stream).await
                        && tag[0] == b'p'
                    {
                        received.lock().unwrap().push(body);
                    }
                }
            });
        }
    });
    Impostor {
        addr,
        received,
        connections,
    }
}

/// A server whose certificate leadsync cannot verify never gets the password, whatever the
/// sslmode: below verify-ca leadsync refuses to send it (before connecting), from verify-ca
/// up the handshake fails first. Sent anyway only when the operator says so, which is also
/// what shows the impostor would have caught it.
#[tokio::test]
async fn a_server_that_is_not_verified_never_gets_the_password() {
    let pki = Pki::new();
    let man_in_the_middle = impostor(&pki).await;
    let secret = "Runtime-Pa55word";
    let other_ca = pki.other_ca();
    let base = format!(
        "postgres://leadsync_runtime:{secret}@{}/crm",
        man_in_the_middle.addr
    );
    // The command runs on a blocking thread: the impostor answers on this runtime.
    let run = |url: String, extra: Vec<(&'static str, &'static str)>| async move {
        let mut env = vec![("LEADSYNC_SOURCE__URL".to_owned(), url)];
        env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        let (code, out, err) = leadsync::testing::run_cli(BIN, env, &["setup"]).await;
        (code == 0, format!("{out}{err}"))
    };
    let received = || man_in_the_middle.received.lock().unwrap().clone();
    let connections = || {
        man_in_the_middle
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    };

    for mode in ["disable", "prefer", "require"] {
        let (ok, text) = run(format!("{base}?sslmode={mode}"), vec![]).await;
        assert!(!ok, "{mode}: {text}");
        assert!(
            text.contains("sends its password only to a server it has verified")
                && text.contains("sslmode=verify-full"),
            "{mode}: {text}"
        );
        assert_eq!(connections(), 0, "{mode}: it connected");
    }
    for params in [
        format!("sslmode=require&sslrootcert={}", other_ca.display()),
        format!("sslmode=verify-ca&sslrootcert={}", other_ca.display()),
        format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    ] {
        let (ok, text) = run(format!("{base}?{params}"), vec![]).await;
        assert!(!ok, "{params}: {text}");
        assert!(text.contains("certificate"), "{params}: {text}");
        assert!(!text.contains(secret), "{params}: {text}");
    }
    assert!(connections() >= 3, "the verifying modes did connect");
    assert!(received().is_empty(), "the impostor got {:?}", received());

    // Told to send it anyway: the impostor takes it (this is what the refusal prevents).
    let (ok, text) = run(
        format!("{base}?sslmode=require"),
        vec![("LEADSYNC_SOURCE__ALLOW_UNVERIFIED_PASSWORD", "true")],
    )
    .await;
    assert!(!ok, "{text}");
    let got = received();
    assert_eq!(got.len(), 1, "{text}");
    assert!(String::from_utf8_lossy(&got[0]).contains(secret));
}

/// The SQL sessions authenticate with SCRAM channel binding (`SCRAM-SHA-256-PLUS`, bound to
/// the server's certificate) when the server offers it over TLS: with
/// `channel_binding=require`, which fails when it is not used, they connect.
#[tokio::test]
async fn sql_sessions_use_scram_channel_binding_over_tls() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki).await;
    let db = TestDb::spawn_on(cluster.port(), true).await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE channel_bound LOGIN PASSWORD 'Chan-Bind-Pw-1'",
        )
        .await
        .unwrap();
    let hba = cluster.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "hostssl all channel_bound 127.0.0.1/32 scram-sha-256\n\
             hostssl all channel_bound ::1/128 scram-sha-256\n{rules}"
        ),
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!(
        "postgres://channel_bound:Chan-Bind-Pw-1@localhost:{}/{}?{}&channel_binding=require",
        db.port(),
        db.name,
        verify_full(&pki.ca())
    );
    // The parameter reaches the connection's settings (it is not one leadsync reads itself).
    assert_eq!(
        leadsync::db::parse_url(&url)
            .unwrap()
            .config
            .get_channel_binding(),
        tokio_postgres::config::ChannelBinding::Require
    );
    let client = leadsync::db::connect(&SecretString::from(url))
        .await
        .unwrap_or_else(|e| panic!("SCRAM with channel binding over verified TLS: {e}"));
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "channel_bound");
    // A wrong password is refused: the rule above is what authenticated it.
    let wrong = format!(
        "postgres://channel_bound:wrong@localhost:{}/{}?{}",
        db.port(),
        db.name,
        verify_full(&pki.ca())
    );
    assert!(
        leadsync::db::connect(&SecretString::from(wrong))
            .await
            .is_err()
    );
}
