//! The `leadsync` binary: arguments, configuration and logging, then one subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use leadsync::cmd;
use leadsync::config::{LogFormat, Settings};

/// Change data capture from a contact-centric CRM schema to a lead-centric one.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML configuration file; every key can be overridden by LEADSYNC_<SECTION>__<KEY>.
    #[arg(long, global = true, env = "LEADSYNC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the preconditions and install the target schema, the leadsync schema, the
    /// publication and the replication origin (idempotent).
    Setup {
        /// The role `leadsync run` connects as: check its privileges and hand it the target
        /// tables and leadsync's tables. With --print-grants: its name in the SQL.
        #[arg(long, value_name = "NAME")]
        runtime_role: Option<String>,
        /// With --print-grants: the installer's name in the SQL.
        #[arg(long, value_name = "NAME", requires = "print_grants")]
        installer_role: Option<String>,
        /// Print the SQL that creates the installer and runtime roles with every privilege
        /// they need (for a superuser to run before setup), and connect to nothing.
        #[arg(long)]
        print_grants: bool,
    },
    /// Run the daemon: on the first run create the slot and load every existing legacy row
    /// from its snapshot, then stream changes into the new tables until SIGTERM/SIGINT.
    Run,
    /// Pre-migration assessment of the legacy tables: volumes, data quality, custom-field
    /// usage and values that will not fit the target.
    Assess {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The running daemon's state from its /status: lag, throughput, backlog, first-load
    /// progress; with --watch, a live view with the lag and throughput as sparklines.
    Status {
        /// Redraw every --interval seconds until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 1)]
        interval: u64,
        /// With --watch: stop after this many screens.
        #[arg(long, value_name = "N")]
        frames: Option<u64>,
        /// The daemon's HTTP address (default: metrics.listen).
        #[arg(long, value_name = "HOST:PORT")]
        from: Option<std::net::SocketAddr>,
    },
    /// Pause, resume or inspect the running daemon (signals the pid in its pidfile).
    Ctl {
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Re-read contacts from the source while the daemon streams and rewrite their target
    /// rows (the repair for drift that validation finds). Needs `leadsync run` running.
    Resync {
        /// Only this workspace (default: every contact).
        #[arg(long)]
        workspace: Option<uuid::Uuid>,
        /// File the request and return without waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
    },
    /// Drop the replication slot, the replication origin, the publication and the leadsync
    /// schema (the roll-back). Never touches the legacy tables. Idempotent.
    Teardown {
        /// Also drop the six target tables and every row in them (needs
        /// --yes-drop-target-tables).
        #[arg(long)]
        drop_target_tables: bool,
        /// Confirms --drop-target-tables.
        #[arg(long)]
        yes_drop_target_tables: bool,
    },
    /// Dead letters: list them, or re-project their contacts' current state through the
    /// running daemon.
    Dlq {
        #[command(subcommand)]
        command: cmd::dlq::DlqCommand,
    },
    /// The guide's completeness, integrity and business-logic checks plus a row-by-row
    /// reconciliation; only persistent differences count. Exit status 1 when it fails.
    Validate {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// How long to wait for the daemon to pass a difference before calling it persistent.
        #[arg(long, default_value_t = cmd::validate::DEFAULT_WAIT_SECONDS)]
        wait_seconds: u64,
    },
    /// The migration report from real figures: counts on both sides, validation, sizes,
    /// lag, dead letters, first-load times.
    Report {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// How long validation waits for the daemon to pass a difference.
        #[arg(long, default_value_t = cmd::validate::DEFAULT_WAIT_SECONDS)]
        wait_seconds: u64,
    },
    /// Wait until the daemon has processed everything written so far, validate, and print a
    /// go/no-go report. Exit status 0 for GO, 1 for NO-GO.
    Cutover {
        /// Seconds the daemon may take to catch up.
        #[arg(long, default_value_t = cmd::cutover::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
        /// Print JSON instead of text (progress goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Start a throwaway PostgreSQL, load generated legacy data and run leadsync on it.
    Demo {
        /// How many contacts to generate.
        #[arg(long, default_value_t = 20_000)]
        contacts: u64,
        /// Leave the cluster running at the end, as a playground (prints how to use and
        /// remove it).
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Finish the transaction in flight and apply nothing more (SIGUSR1); persisted.
    Pause,
    /// Apply again and catch up (SIGUSR2).
    Resume,
    /// Start over after a failure: clear the failure recorded for the slot (every failed
    /// instance, here or a standby elsewhere, starts over within seconds).
    Retry,
    /// Whether the daemon runs, is paused or failed, and how far the slot is acknowledged.
    /// Exit status: 0 running, 2 paused, 3 not running, 4 failed, 1 unknown.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", leadsync::secrets::scrub(&format!("error: {e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Demo { contacts, keep } = cli.command {
        // The demo narrates; only errors interrupt it (parked rows are counted at the end).
        init_tracing(LogFormat::Text, "error");
        cmd::demo::run_demo(contacts, keep).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let settings = Settings::load(cli.config.as_deref())?;
    if let Command::Setup {
        print_grants: true,
        installer_role,
        runtime_role,
    } = &cli.command
    {
        // The script runs as a superuser: every name in it is checked first.
        settings.validate_names()?;
        for (key, role) in [
            ("--installer-role", installer_role),
            ("--runtime-role", runtime_role),
        ] {
            if let Some(role) = role {
                leadsync::config::check_role_name(key, role)?;
            }
        }
        print!(
            "{}",
            cmd::setup::grants_sql(
                &settings,
                installer_role
                    .as_deref()
                    .unwrap_or(leadsync::grants::DEFAULT_INSTALLER),
                runtime_role
                    .as_deref()
                    .unwrap_or(leadsync::grants::DEFAULT_RUNTIME),
            )
        );
        return Ok(ExitCode::SUCCESS);
    }
    settings.validate()?;
    if let Ok(filter) = std::env::var("LEADSYNC_LOG") {
        leadsync::config::check_log_filter(&filter)
            .map_err(|why| anyhow::anyhow!("environment variable LEADSYNC_LOG: {why}"))?;
    }
    init_tracing(settings.log.format, &settings.log.level);
    tracing::debug!(settings = %settings, "configuration");
    for warning in settings.startup_warnings() {
        tracing::warn!("{warning}");
    }
    match cli.command {
        Command::Setup { runtime_role, .. } => {
            if let Some(role) = &runtime_role {
                leadsync::config::check_role_name("--runtime-role", role)?;
            }
            let options = cmd::setup::SetupOptions { runtime_role };
            let report = cmd::setup::run_setup_with(&settings, &options).await?;
            print!("{}", leadsync::text::fit(&report.to_string()));
        }
        Command::Run => {
            let controls = leadsync::control::from_signals()?;
            let pidfile = leadsync::control::pidfile(&settings);
            // Held until the daemon exits. A second daemon on this host stops here, before
            // it binds a port or touches the file.
            let _pid = match leadsync::control::PidFile::take(&pidfile)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                leadsync::control::Taken::Mine(held) => held,
                leadsync::control::Taken::Held { pid } => anyhow::bail!(
                    "another leadsync ({}) runs with the pidfile {}: `leadsync ctl` reaches \
                     that one. Stop it first, or give this instance a pidfile of its own \
                     (control.pidfile) to run it as a standby on the same host",
                    pid.map_or("pid unknown".into(), |p| format!("pid {p}")),
                    pidfile.display()
                ),
            };
            let status = leadsync::status::SharedStatus::default();
            let metrics = leadsync::metrics::install_recorder()?;
            let addr = settings.metrics_addr()?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on metrics.listen = {addr}: {e}"))?;
            tokio::spawn(leadsync::http::serve(
                listener,
                status.clone(),
                metrics,
                controls.shutdown.clone(),
            ));
            tokio::spawn(leadsync::http::sample_lag(
                settings.clone(),
                status.clone(),
                controls.shutdown.clone(),
            ));
            tokio::spawn(leadsync::statusline::log_periodically(
                status.clone(),
                std::time::Duration::from_secs(settings.log.status_every_seconds),
                controls.shutdown.clone(),
            ));
            tracing::info!(slot = %settings.slot.name, pidfile = %pidfile.display(), "leadsync starting");
            cmd::run::run_until_stopped(&settings, controls, status).await?;
            tracing::info!("leadsync stopped");
        }
        Command::Ctl { action } => {
            let pidfile = leadsync::control::pidfile(&settings);
            match action {
                CtlAction::Pause => {
                    let pid = leadsync::control::signal_daemon(&pidfile, libc::SIGUSR1)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    println!("asked leadsync (pid {pid}) to pause");
                }
                CtlAction::Resume => {
                    let pid = leadsync::control::signal_daemon(&pidfile, libc::SIGUSR2)
                        .map_err(|e| anyhow::anyhow!(e))?;
                    println!("asked leadsync (pid {pid}) to resume");
                }
                CtlAction::Retry => {
                    println!("{}", cmd::ctl::retry(&settings).await?);
                }
                CtlAction::Status => {
                    let found = cmd::ctl::status(&settings).await;
                    print!("{}", leadsync::text::fit(&found.render()));
                    return Ok(ExitCode::from(found.exit_code()));
                }
            }
        }
        Command::Status {
            watch,
            interval,
            frames,
            from,
        } => {
            let addr = from
                .or_else(|| cmd::ctl::local_http(&settings))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "metrics.listen ({}) has no fixed port: give the daemon's address with \
                         --from HOST:PORT",
                        settings.metrics.listen
                    )
                })?;
            let every = std::time::Duration::from_secs(interval.max(1));
            cmd::watch::run(addr, watch, every, frames).await?;
        }
        Command::Assess { json } => {
            let assessment = cmd::assess::run_assess(&settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&assessment)?);
            } else {
                print!("{}", leadsync::text::fit(&assessment.render()));
            }
        }
        Command::Resync { workspace, no_wait } => {
            leadsync::resync::request(&settings, workspace, !no_wait).await?;
        }
        Command::Teardown {
            drop_target_tables,
            yes_drop_target_tables,
        } => {
            let opts = cmd::teardown::TeardownOptions {
                drop_target_tables,
                confirm_drop_target_tables: yes_drop_target_tables,
            };
            let done = cmd::teardown::run_teardown(&settings, opts).await?;
            print!("{}", leadsync::text::fit(&done.to_string()));
        }
        Command::Dlq { command } => {
            if !cmd::dlq::run_dlq(&settings, command).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Report { json, wait_seconds } => {
            let wait = std::time::Duration::from_secs(wait_seconds);
            let report = cmd::report::run_report(&settings, wait).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", leadsync::text::fit(&report.render()));
            }
        }
        Command::Validate { json, wait_seconds } => {
            let wait = std::time::Duration::from_secs(wait_seconds);
            let validation = cmd::validate::run_validate(&settings, wait).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&validation)?);
            } else {
                print!("{}", leadsync::text::fit(&validation.render()));
            }
            if !validation.passed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Cutover { timeout, json } => {
            let opts = cmd::cutover::CutoverOptions {
                timeout: std::time::Duration::from_secs(timeout),
                ..Default::default()
            };
            let mut progress = |line: String| {
                if json {
                    eprintln!("{line}");
                } else {
                    print!("{}", leadsync::text::fit(&format!("{line}\n")));
                }
            };
            let report = cmd::cutover::run_cutover(&settings, opts, &mut progress).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", leadsync::text::fit(&report.to_string()));
            }
            if !report.go {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Demo { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr; `LEADSYNC_LOG` (a tracing filter) overrides `log.level`.
fn init_tracing(format: LogFormat, level: &str) {
    let filter = std::env::var("LEADSYNC_LOG")
        .ok()
        .filter(|f| leadsync::config::check_log_filter(f).is_ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    // tokio-postgres logs statements with their parameters (rows of personal data) at
    // debug: it never goes below info, whatever the level.
    let quiet = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tokio_postgres", LevelFilter::INFO);
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| leadsync::secrets::ScrubbingWriter);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry.with(fmt.with_filter(filter.and(quiet))).init(),
        LogFormat::Json => registry
            .with(fmt.json().with_filter(filter.and(quiet)))
            .init(),
    }
}
