//! The HTTP side of the host: the public API (its router, handlers by area, the types they
//! answer with, and its OpenAPI document), the web page and its live stream, the
//! token-guarded admin API, and the typed client the command line uses.
//!
//! - [`router`]: routes, request limits, request counting, serving until shutdown.
//! - [`orders`], [`reports`], [`operations`], [`web`]: the handlers.
//! - [`types`]: every body they answer with; [`openapi`] documents exactly those.
//! - [`admin`]: the admin API; [`client`]: both APIs as Rust calls.

pub mod admin;
pub mod client;
pub mod openapi;
pub mod operations;
pub mod orders;
pub mod reports;
pub mod router;
pub mod types;
pub mod web;

pub use router::{AppState, router, serve};
