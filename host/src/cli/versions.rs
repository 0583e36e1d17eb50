//! `pizza-host versions STAGE`: the versions deployed of a stage, newest first, from a host's
//! admin API; as a table or (`--output json`) as the API gives them.

use crate::api::client::AdminClient;
use crate::cli::{Output, StageOnHost};

/// Prints the deployed versions of `target.stage`.
pub async fn run(target: &StageOnHost, output: Output) -> anyhow::Result<()> {
    let token = super::admin_token()?;
    let versions = AdminClient::new(&target.host)
        .versions(&target.stage, &token)
        .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    if versions.is_empty() {
        println!(
            "stage {}: never deployed; it runs its pipeline file's component",
            target.stage
        );
        return Ok(());
    }
    println!(
        "  {:<20} {:<24} {:>10}  {:<12} {:<16} note",
        "digest", "deployed at", "bytes", "by", "through host"
    );
    for info in &versions {
        let v = &info.version;
        let digest = v.digest.as_deref().unwrap_or("file");
        println!(
            "{} {:<20} {:<24} {:>10}  {:<12} {:<16} {}",
            if info.current { "*" } else { " " },
            digest.get(..20).unwrap_or(digest),
            v.at,
            v.size,
            v.by.as_deref().unwrap_or("-"),
            v.host,
            if v.rollback { "rollback" } else { "" },
        );
    }
    Ok(())
}
