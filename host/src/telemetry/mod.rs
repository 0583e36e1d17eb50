//! What the host tells about itself: Prometheus metrics, live events for the web page, each
//! stage's recent log lines, and the W3C trace context each order's records carry.

pub mod events;
pub mod metrics;
pub mod stage_logs;
pub mod trace_context;
