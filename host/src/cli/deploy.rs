//! `pizza-host deploy`: swaps a stage of a running host to a component file through the admin
//! API ([`crate::api::client::AdminClient`]), and says what the swap did.

use std::path::Path;

use anyhow::Context as _;

use crate::api::client::AdminClient;

/// Uploads `component` as stage `stage` to the admin API at `host`, with the token from the
/// environment.
pub async fn run(stage: &str, component: &Path, host: &str) -> anyhow::Result<()> {
    let token = super::admin_token()?;
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let report = AdminClient::new(host).deploy(stage, bytes, &token).await?;
    if report.unchanged {
        println!("stage {stage}: already running {}", report.new_digest);
    } else {
        println!(
            "stage {stage}: swapped {} -> {} (load {:.1} ms, pause {:.1} µs)",
            report.old_digest, report.new_digest, report.load_ms, report.pause_us,
        );
    }
    Ok(())
}
