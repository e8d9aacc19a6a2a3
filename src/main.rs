//! The `leadsync` binary: arguments, configuration and logging, then one subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    Setup,
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
    /// Start a throwaway PostgreSQL, load generated legacy data and run leadsync on it.
    Demo {
        /// How many contacts to generate.
        #[arg(long, default_value_t = 20_000)]
        contacts: u64,
    },
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Demo { contacts } = cli.command {
        init_tracing(LogFormat::Text, "warn");
        cmd::demo::run_demo(contacts).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let settings = Settings::load(cli.config.as_deref())?;
    settings.validate()?;
    init_tracing(settings.log.format, &settings.log.level);
    tracing::debug!(settings = %settings, "configuration");
    match cli.command {
        Command::Setup => {
            let report = cmd::setup::run_setup(&settings).await?;
            print!("{report}");
        }
        Command::Run => {
            let shutdown = leadsync::control::shutdown_on_signals()?;
            tracing::info!(slot = %settings.slot.name, "leadsync starting");
            cmd::run::run(&settings, shutdown).await?;
            tracing::info!("leadsync stopped");
        }
        Command::Assess { json } => {
            let assessment = cmd::assess::run_assess(&settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&assessment)?);
            } else {
                print!("{}", assessment.render());
            }
        }
        Command::Resync { workspace, no_wait } => {
            leadsync::resync::request(&settings, workspace, !no_wait).await?;
        }
        Command::Demo { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr; `LEADSYNC_LOG` (a tracing filter) overrides `log.level`.
fn init_tracing(format: LogFormat, level: &str) {
    let filter = std::env::var("LEADSYNC_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
