//! What should run, and keeping it running: the stages, reports and joins a pipeline names,
//! started at startup and changed by live edits and swaps.

pub mod join;
pub mod report;
pub mod stage;
pub mod stages;
pub mod watch;
