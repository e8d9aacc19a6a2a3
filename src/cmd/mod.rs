//! One module per subcommand. Each exposes an `async fn run_*` that the binary calls.

pub mod assess;
pub mod ctl;
pub mod cutover;
pub mod demo;
pub mod dlq;
pub mod report;
pub mod run;
pub mod setup;
pub mod teardown;
pub mod validate;
pub mod watch;
