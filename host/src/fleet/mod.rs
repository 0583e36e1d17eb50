//! The hosts that run one pipeline together: each announces itself on the pipeline's hosts
//! topic ([`presence`]), so a host can tell whether another live host already uses its
//! `instance_id` before it takes that identity's partitions and transactions; and each runs
//! what was deployed to the pipeline ([`deployments`]), kept in Kafka rather than in one host.

pub mod deployments;
pub mod presence;
