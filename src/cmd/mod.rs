//! One module per subcommand. Each exposes an `async fn run_*` that the binary calls.

pub mod assess;
pub mod demo;
pub mod run;
pub mod setup;
