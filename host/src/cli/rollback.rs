//! `pizza-host rollback STAGE [TO]`: makes every host of the pipeline run an earlier version
//! of a stage, through one host's admin API.

use crate::api::client::AdminClient;
use crate::cli::StageOnHost;

/// Rolls stage `target.stage` back to `to` (by default the version before the current), on
/// behalf of `by`, and says what the swap did on the host that took it.
pub async fn run(target: &StageOnHost, to: Option<&str>, by: Option<String>) -> anyhow::Result<()> {
    let token = super::admin_token()?;
    let report = AdminClient::new(&target.host)
        .rollback(&target.stage, to, by.as_deref(), &token)
        .await?;
    super::deploy::print_swap(&report);
    Ok(())
}
