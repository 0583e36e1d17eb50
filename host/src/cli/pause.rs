//! `pizza-host pause STAGE` and `pizza-host resume STAGE`: pause a stage on a running host
//! through its admin API ([`crate::api::client::AdminClient`]), and resume it. A paused stage
//! has committed what it finished and left its group; it resumes from its committed offsets,
//! so nothing is lost or done twice.

use crate::api::client::AdminClient;

/// Pauses (`pause`) or resumes stage `stage` on the host whose admin API is at `host`, with
/// the token from the environment, and says what happened.
pub async fn run(stage: &str, pause: bool, host: &str) -> anyhow::Result<()> {
    let token = super::admin_token()?;
    let report = AdminClient::new(host)
        .pause_or_resume(stage, pause, &token)
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
