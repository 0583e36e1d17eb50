//! `pizza-host logs`: prints a stage's recent log lines from a running host's admin API
//! ([`crate::api::client::AdminClient`]), and with `--follow` each new one as it is logged.

use crate::api::client::AdminClient;

/// Prints the recent log lines of `stage` from the admin API at `host`, then with `follow`
/// each new one until the host shuts down or the command is stopped.
pub async fn run(stage: &str, follow: bool, host: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let token = super::admin_token()?;
    let mut stdout = std::io::stdout();
    AdminClient::new(host)
        .logs(stage, follow, &token, |piece| {
            stdout.write_all(piece)?;
            // Line by line as they come, also into a pipe.
            stdout.flush()?;
            Ok(())
        })
        .await
}
