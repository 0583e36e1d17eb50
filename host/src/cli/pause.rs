//! `pizza-host pause STAGE` and `pizza-host resume STAGE`: pause a stage on every host of the
//! pipeline through one host's admin API ([`crate::api::client::AdminClient`]), and resume it.
//! A paused stage has committed what it finished and left its group; it resumes from its
//! committed offsets, so nothing is lost or done twice.

use crate::api::client::AdminClient;
use crate::cli::StageOnHost;

/// Pauses (`pause`) or resumes stage `target.stage` through the admin API at `target.host`,
/// with the token from the environment, on behalf of `by`, and says what happened on that host.
pub async fn run(target: &StageOnHost, pause: bool, by: Option<String>) -> anyhow::Result<()> {
    let token = super::admin_token()?;
    let stage = &target.stage;
    let report = AdminClient::new(&target.host)
        .pause_or_resume(stage, pause, by.as_deref(), &token)
        .await?;
    let state = if report.paused { "paused" } else { "running" };
    if report.changed {
        println!(
            "stage {stage}: {}",
            if report.paused { "paused" } else { "resumed" }
        );
    } else {
        println!("stage {stage}: already {state}");
    }
    Ok(())
}
