//! The defaults of `pipeline.toml`: the original demo's topics and ports, and limits that suit
//! a small stage.

use std::net::SocketAddr;

use super::{HttpConfig, OrdersConfig, StorageConfig, TopicsConfig};

pub(super) fn default_group_prefix() -> String {
    "pizza-host".into()
}
pub(super) fn default_compile_cache_max_mib() -> u64 {
    crate::runtime::DEFAULT_MAX_CACHE_BYTES >> 20
}
pub(super) fn default_instance_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pizza-host".into())
}
pub(super) fn default_timeout_ms() -> u64 {
    1_000
}
pub(super) fn default_retention_days() -> u32 {
    7
}

pub(super) fn default_keep_fields() -> Vec<String> {
    vec!["order_id".into()]
}

pub(super) fn default_true() -> bool {
    true
}

pub(super) fn default_retries() -> u32 {
    3
}
pub(super) fn default_memory_mib() -> usize {
    64
}
pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}
pub(super) fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5001))
}
pub(super) fn default_max_order_count() -> u32 {
    100
}
pub(super) fn default_partitions() -> i32 {
    3
}
pub(super) fn default_order_topic() -> String {
    "pizza".into()
}
pub(super) fn default_orders_topic() -> String {
    "pizza-orders".into()
}
pub(super) fn default_completed_topic() -> String {
    "pizza-with-veggies".into()
}
pub(super) fn default_dropped_topic() -> String {
    "pizza-dropped".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_order_count: default_max_order_count(),
        }
    }
}
impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            replication_factor: None,
        }
    }
}
impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            topic: default_order_topic(),
            completed_topic: default_completed_topic(),
            orders_topic: default_orders_topic(),
            dropped_topic: default_dropped_topic(),
        }
    }
}
impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: None,
            retention_days: default_retention_days(),
        }
    }
}
