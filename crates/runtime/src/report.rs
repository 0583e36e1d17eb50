//! Report components (the `pizza:stage/report` world): loading one, and its two calls,
//! `update` (fold an event into the state) and `render` (the state as the report's JSON).
//!
//! A report runs in the same sandbox as a stage, with the same per-call limits and a fresh
//! instance per call: the state lives in the host, which hands it to every call.

use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;
use wasmtime::Engine;

use super::{Call, CallError, Callee, LoadError, Origin, Runtime, Settings, StageState};

mod bindings {
    // The imports are the stage world's, so one host implementation serves both.
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "report",
        with: {
            "pizza:stage/config": super::super::bindings::pizza::stage::config,
            "pizza:stage/log": super::super::bindings::pizza::stage::log,
        },
    });
}

use bindings::ReportPre;

/// A validated report component, ready to be called. Cheap to call from several threads.
pub struct ReportComponent {
    callee: Callee,
    digest: String,
    origin: Origin,
    engine: Engine,
    pre: ReportPre<StageState>,
}

impl Runtime {
    /// Reads, compiles and validates the component at `path` as the report `report`.
    /// Blocking, and it runs the component (see [`Runtime::load`]).
    pub fn load_report(
        &self,
        report: &str,
        path: &Path,
        settings: &Settings,
    ) -> Result<ReportComponent, LoadError> {
        let bytes = std::fs::read(path).context("cannot read the file");
        let bytes = bytes.map_err(|cause| LoadError::new(report, path, cause))?;
        self.load_report_bytes(report, &bytes, settings)
            .map_err(|cause| LoadError::new(report, path, cause))
    }

    /// Compiles `bytes` as the report `report`, checks that it fits the report world, and
    /// smoke-calls it: `update` on the settings' sample event, then `render`.
    pub fn load_report_bytes(
        &self,
        report: &str,
        bytes: &[u8],
        settings: &Settings,
    ) -> anyhow::Result<ReportComponent> {
        let (component, origin) = self.compile(bytes)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component needs imports that reports are not granted")?;
        let pre = ReportPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export the `pizza:stage/report` world")?;
        let loaded = ReportComponent {
            callee: self.callee(report, settings),
            digest: super::digest(bytes),
            origin,
            engine: self.engine.clone(),
            pre,
        };
        let sample = loaded.callee.sample.clone();
        let state = loaded
            .update("null", &sample)
            .context("the smoke call of update on the sample event failed")?;
        loaded
            .render(&state)
            .context("the smoke call of render failed")?;
        Ok(loaded)
    }
}

impl ReportComponent {
    /// The report's name.
    pub fn name(&self) -> &str {
        &self.callee.name
    }

    /// The SHA-256 of the component file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether loading compiled the component or found it in the compile cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Folds `event` into `state`, in a fresh instance; returns the new state.
    pub fn update(&self, state: &str, event: &str) -> Result<String, CallError> {
        let mut call = Call::new(&self.engine, &self.callee, &[state, event]);
        let outcome = self
            .pre
            .instantiate(&mut call.store)
            .and_then(|report| report.call_update(&mut call.store, state, event));
        json_or_error(call.finish(outcome)?, "the new state")
    }

    /// Renders `state` as the report's JSON, in a fresh instance.
    pub fn render(&self, state: &str) -> Result<String, CallError> {
        let mut call = Call::new(&self.engine, &self.callee, &[state]);
        let outcome = self
            .pre
            .instantiate(&mut call.store)
            .and_then(|report| report.call_render(&mut call.store, state));
        json_or_error(call.finish(outcome)?, "the rendered report")
    }
}

/// What a report call returned, checked to be JSON: the host stores and serves it as such.
fn json_or_error(
    returned: Result<String, bindings::pizza::stage::types::StageError>,
    what: &str,
) -> Result<String, CallError> {
    match returned {
        Ok(text) if serde_json::from_str::<Value>(&text).is_ok() => Ok(text),
        Ok(_) => Err(CallError::InvalidOutput(format!("{what} is not JSON"))),
        Err(err) => Err(CallError::Returned {
            message: err.message,
            retryable: err.retryable,
        }),
    }
}
