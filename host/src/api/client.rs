//! The host's HTTP APIs as Rust calls, for the command line: [`Client`] for the public API and
//! [`AdminClient`] for the admin API. They read the very types the handlers answer with
//! ([`crate::api::types`]), so a renamed field breaks the build, not a command's output.

use anyhow::Context as _;
use reqwest::Response;
use serde::de::DeserializeOwned;

use crate::api::admin::{BY_HEADER, PauseReport};
use crate::api::types::{ErrorBody, Readiness, StageInfo};
use crate::fleet::deployments::VersionInfo;
use crate::pipeline::stages::SwapReport;

/// The public API of the host at a base URL.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of the host at `base_url` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base_url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// `GET /readyz`: the stage table and whether the host is ready. A host that is not ready
    /// answers 503 with the same body, so that is no error here.
    pub async fn readiness(&self) -> anyhow::Result<Readiness> {
        let url = format!("{}/readyz", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        response
            .json()
            .await
            .with_context(|| format!("{url} did not answer with JSON"))
    }
}

/// The admin API of the host at a base URL; every call carries the admin token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
}

impl AdminClient {
    /// A client of the admin API at `base_url` (e.g. `http://127.0.0.1:5001`).
    pub fn new(base_url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// `PUT /admin/stages/{stage}`: deploys the component `bytes` as the stage, for every
    /// host of the pipeline, on behalf of `by`. A rejected component (or a wrong token, or no
    /// such stage) is an error with the host's reason.
    pub async fn deploy(
        &self,
        stage: &str,
        bytes: Vec<u8>,
        by: Option<&str>,
        token: &str,
    ) -> anyhow::Result<SwapReport> {
        let url = format!("{}/admin/stages/{stage}", self.base);
        let request = self.http.put(&url).body(bytes);
        self.send(&url, request, by, token).await
    }

    /// `POST /admin/stages/{stage}/rollback`: back to version `to` (a digest or its start, or
    /// `file`), or by default to the one before the current.
    pub async fn rollback(
        &self,
        stage: &str,
        to: Option<&str>,
        by: Option<&str>,
        token: &str,
    ) -> anyhow::Result<SwapReport> {
        let url = format!("{}/admin/stages/{stage}/rollback", self.base);
        let mut request = self.http.post(&url);
        if let Some(to) = to {
            request = request.query(&[("to", to)]);
        }
        self.send(&url, request, by, token).await
    }

    /// `GET /admin/stages/{stage}/versions`: the stage's deployed versions, newest first.
    pub async fn versions(&self, stage: &str, token: &str) -> anyhow::Result<Vec<VersionInfo>> {
        let url = format!("{}/admin/stages/{stage}/versions", self.base);
        let response = self.get(&url, token).await?;
        read(&url, response).await
    }

    /// `GET /admin/stages`: the stage table.
    pub async fn stages(&self, token: &str) -> anyhow::Result<Vec<StageInfo>> {
        let url = format!("{}/admin/stages", self.base);
        let response = self.get(&url, token).await?;
        read(&url, response).await
    }

    /// `POST /admin/stages/{stage}/pause` (`pause`) or `…/resume`: what it did.
    pub async fn pause_or_resume(
        &self,
        stage: &str,
        pause: bool,
        by: Option<&str>,
        token: &str,
    ) -> anyhow::Result<PauseReport> {
        let action = if pause { "pause" } else { "resume" };
        let url = format!("{}/admin/stages/{stage}/{action}", self.base);
        let request = self.http.post(&url);
        self.send(&url, request, by, token).await
    }

    /// Sends a command on behalf of `by` and reads its answer.
    async fn send<T: DeserializeOwned>(
        &self,
        url: &str,
        mut request: reqwest::RequestBuilder,
        by: Option<&str>,
        token: &str,
    ) -> anyhow::Result<T> {
        if let Some(by) = by {
            request = request.header(BY_HEADER, by);
        }
        let response = request
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        read(url, response).await
    }

    async fn get(&self, url: &str, token: &str) -> anyhow::Result<Response> {
        self.http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))
    }

    /// `GET /admin/stages/{stage}/logs`: hands each piece of the stage's log text to `write`
    /// as it arrives: the recent lines, then with `follow` each new one until the host shuts
    /// down.
    pub async fn logs(
        &self,
        stage: &str,
        follow: bool,
        token: &str,
        mut write: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let url = format!("{}/admin/stages/{stage}/logs?follow={follow}", self.base);
        let mut response = self.get(&url, token).await?;
        if !response.status().is_success() {
            return Err(error_of(&url, response).await);
        }
        while let Some(piece) = response
            .chunk()
            .await
            .with_context(|| format!("{url}: the stream broke off"))?
        {
            write(&piece)?;
        }
        Ok(())
    }
}

/// The body of a successful answer as `T`; an error status as an error carrying the host's
/// `{"error": …}` message.
async fn read<T: DeserializeOwned>(url: &str, response: Response) -> anyhow::Result<T> {
    let status = response.status();
    if status.is_success() {
        return response
            .json()
            .await
            .with_context(|| format!("{url} answered {status} without JSON"));
    }
    Err(error_of(url, response).await)
}

/// The error an answer with an error status stands for, with the host's `{"error": …}`
/// message.
async fn error_of(url: &str, response: Response) -> anyhow::Error {
    let status = response.status();
    let message = response.json::<ErrorBody>().await.map(|body| body.error);
    match message {
        Ok(message) => anyhow::anyhow!("{url} answered {status}: {message}"),
        Err(_) => anyhow::anyhow!("{url} answered {status} without JSON"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_lose_their_trailing_slash() {
        assert_eq!(Client::new("http://h:1/").base, "http://h:1");
        assert_eq!(AdminClient::new("http://h:1//").base, "http://h:1");
    }
}
