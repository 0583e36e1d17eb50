//! The HTTP side of the host: the public API (orders, reports, operations), its OpenAPI
//! document, the web page and its live stream, and the token-guarded admin API.

pub mod admin;
pub mod openapi;
pub mod public;
pub mod web;
