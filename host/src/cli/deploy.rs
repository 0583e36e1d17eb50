//! `pizza-host deploy`: deploys a component file as a stage to every host of the pipeline
//! through one host's admin API ([`crate::api::client::AdminClient`]), and says what the swap
//! did on that host.

use std::path::Path;

use anyhow::Context as _;

use crate::api::client::AdminClient;
use crate::cli::StageOnHost;
use crate::pipeline::stages::SwapReport;

/// Uploads `component` as stage `target.stage` to the admin API at `target.host`, with the
/// token from the environment, on behalf of `by`.
pub async fn run(target: &StageOnHost, component: &Path, by: Option<String>) -> anyhow::Result<()> {
    let token = super::admin_token()?;
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let report = AdminClient::new(&target.host)
        .deploy(&target.stage, bytes, by.as_deref(), &token)
        .await?;
    print_swap(&report);
    Ok(())
}

/// Says what a deploy or rollback did on the host that took it.
pub fn print_swap(report: &SwapReport) {
    let stage = &report.stage;
    if report.unchanged {
        println!("stage {stage}: already running {}", report.new_digest);
    } else {
        println!(
            "stage {stage}: swapped {} -> {} (load {:.1} ms, pause {:.1} µs); every host of the pipeline follows",
            report.old_digest, report.new_digest, report.load_ms, report.pause_us,
        );
    }
}
