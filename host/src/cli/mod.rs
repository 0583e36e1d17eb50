//! The command line's work, one module per concern of a subcommand.

pub mod pipeline_edit;
pub mod scaffold;
pub mod tools;
