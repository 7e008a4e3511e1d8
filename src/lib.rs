//! stackdns: authoritative DNS for a container platform, and the control plane that feeds it.
//!
//! # Map
//!
//! | module      | owns                                                                 |
//! |-------------|----------------------------------------------------------------------|
//! | [`model`]   | validated names, nodes, containers, ports (pure)                      |
//! | [`name`]    | wire-form domain names (pure)                                         |
//! | [`zone`]    | the zone file's apex, SOA and static records (pure)                   |
//! | [`placement`]| which node runs each container; errors that explain themselves (pure)|
//! | [`snapshot`]| the immutable zone the DNS path reads, and how changes update it (pure)|
//! | [`stackfile`]| Stackfiles (YAML/JSON) read into validated service definitions (pure)|
//! | [`store`]   | redb schema and durable commits                                       |
//! | [`control`] | the single writer: state, leases, group commit, snapshot publication  |
//! | [`dns`]     | UDP/TCP transports, queries, answers, AXFR, NOTIFY (only hickory user)|
//! | [`api`]     | the HTTP/JSON registration API (axum)                                 |
//! | [`server`]  | wiring, start-up and shutdown                                         |
//!
//! Dependencies point one way: `model` ← `snapshot`, `placement`, `store` ← `control` ← `api`;
//! `dns` → `snapshot` only (never `store`).
//!
//! # Flows
//!
//! ```text
//! HTTP write:  agent --PUT--> api (auth, validate) --job--> control writer
//!              --> store.commit (one fsync per batch) --> Projection: recompute touched names
//!              --> ArcSwap::store
//!              --> response {serial}   (already answered by DNS)
//!
//! DNS query:   socket --> dns::wire::parse --> ArcSwap::load --> Snapshot::lookup
//!              --> dns::answer writes prepared RDATA --> socket
//! ```

pub mod api;
pub mod config;
pub mod control;
pub mod dns;
pub mod model;
pub mod name;
pub mod placement;
pub mod scheme;
pub mod server;
pub mod snapshot;
pub mod stackfile;
pub mod store;
pub mod zone;
