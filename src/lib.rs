//! leadsync keeps a CRM's lead-centric schema (`customers`, `leads`, `appointments` and their
//! custom-field tables) in step with its legacy contact-centric schema (`contacts`,
//! `contact_custom_fields`, `custom_fields`) by change data capture from a logical
//! replication slot.
//!
//! # Layout
//!
//! The data flows source → decode → project → apply:
//!
//! - [`config`]: settings from a TOML file and `LEADSYNC_*` variables, validated offline.
//! - [`source`]: I/O; the slot, its exported snapshot and the replication stream, and the
//!   (pure) conversion of row changes to domain changes.
//! - [`decode`]: pure; pgoutput bytes → logical replication messages.
//! - [`project`]: pure; a legacy contact and its field values → the rows it becomes, and
//!   the plan of writes for a chunk of changes.
//! - [`apply`]: I/O; one target transaction = writes + leadsync's state + checkpoint.
//! - [`control`]: signals → shutdown.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/status`, and the lag sampler.
//! - [`reconcile`]: the target compared row by row with an SQL projection of the source.
//! - [`schema`]: the target and daemon-state DDL that `leadsync setup` installs.
//! - [`definer`]: the installer-owned functions through which the runtime role does its
//!   few privileged steps (the checkpoint, setting keys aside for the first load).
//! - [`secrets`]: the password, scrubbed from every line the process writes.
//! - [`grants`]: the installer and runtime database roles and the one list of their grants.
//! - [`triggers`]: leftover sync triggers that would loop with leadsync (setup refuses them).
//! - [`cmd`]: one module per subcommand.
//! - [`timestamp`]: PostgreSQL timestamps as PostgreSQL holds them, infinities included.
//! - [`cluster`]: a throwaway PostgreSQL for the demo, the tests and the benchmarks.
//! - [`fixtures`]: the legacy schema and a deterministic demo-data generator.

pub mod apply;
pub mod backfill;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod control;
pub mod db;
pub mod decode;
pub mod definer;
pub mod error;
pub mod failure;
pub mod fixtures;
pub mod grants;
pub mod http;
pub mod lsn;
pub mod metrics;
pub mod project;
pub mod reconcile;
pub mod resync;
pub mod schema;
pub mod secrets;
pub mod source;
pub mod status;
pub mod statusline;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod text;
pub mod timestamp;
pub mod triggers;

pub use lsn::Lsn;
pub use timestamp::Timestamp;
