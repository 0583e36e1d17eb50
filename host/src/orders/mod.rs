//! Orders: the book `GET /order` reads, the view that fills it from Kafka, and placing an
//! order's records under the pipeline's guarantee.

pub mod book;
mod event_ids;
pub mod publisher;
pub mod view;
