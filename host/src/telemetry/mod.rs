//! What the host tells about itself: Prometheus metrics, live events for the web page, and the
//! W3C trace context each order's records carry.

pub mod events;
pub mod metrics;
pub mod trace_context;
