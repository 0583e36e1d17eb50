//! Orders: the book `GET /order` reads, the durable store behind it, the view that fills the
//! store from Kafka, and placing an order's records under the pipeline's guarantee.

pub mod book;
mod event_ids;
pub mod publisher;
pub mod store;
pub mod view;
