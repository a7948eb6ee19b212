//! One module per subcommand.

pub mod alias;
pub mod cost;
pub mod dashboard;
pub mod demo;
pub mod deploy;
pub mod invoke;
pub mod keys;
pub mod logs;
pub mod ls;
pub mod queue;
pub mod rm;
pub mod serve;
pub mod status;
