//! stackdns: authoritative DNS for a container platform, and the control plane that feeds it.
//!
//! # Map
//!
//! | module        | owns                                                                  |
//! |---------------|-----------------------------------------------------------------------|
//! | [`model`]     | validated names, nodes, containers, ports, assignments (pure)         |
//! | [`name`]      | wire-form domain names (pure)                                         |
//! | [`zone`]      | the zone file's apex, SOA and static records (pure)                   |
//! | [`scheme`]    | the name scheme: `node`, `cont`, `svc` and SRV names (pure)           |
//! | [`placement`] | which node runs each container; errors that explain themselves (pure) |
//! | [`snapshot`]  | the immutable zone the DNS path reads, and how changes update it (pure) |
//! | [`stackfile`] | Stackfiles (YAML/JSON) read into validated service definitions (pure) |
//! | [`store`]     | the storage seam (`Store` trait) and the redb engine                  |
//! | [`control`]   | the single writer: named operations, state, leases, group commit      |
//! | [`dns`]       | one message handler; UDP, TCP, TLS, HTTPS and QUIC transports; answers, AXFR/IXFR (also over TLS), NOTIFY; `lookup`, a stub lookup for `stackdns lookup`; the only hickory user |
//! | [`api`]       | the HTTP/JSON registration API (axum), its connection loop and request limits |
//! | [`edge`]      | connection caps per client and in total, fitted to the descriptor limit |
//! | [`client`]    | typed HTTP client over `api::types`, used by `cli` and `agent`        |
//! | [`cli`]       | the command-line client (`node`, `stack`, `service`, `user`, `lookup`) over `client` |
//! | [`agent`]     | the node agent: supervisors, reporter, runtimes; the API only through `client` |
//! | [`config`]    | flags: `stackdns serve`, the agent and the client commands            |
//! | [`server`]    | wiring, start-up and shutdown                                         |
//! | [`signal`]    | waiting for SIGINT/SIGTERM (server and agent), and SIGHUP (reload)    |
//! | [`systemd`]   | readiness and stopping notices to systemd (sd_notify, `Type=notify`)  |
//!
//! Dependencies point one way: `model` ← `scheme` ← `snapshot`; `model` ← `placement`;
//! `model`, `stackfile` ← `store`; `store`, `placement`, `snapshot`, `stackfile` ← `control`
//! ← `api`; `dns` → `snapshot`, `zone`, `name`, `edge` only (never `store`). `agent` and `cli` →
//! `client` → `api::types`; neither touches `control`, `store` or `snapshot`.
//!
//! # Flows
//!
//! ```text
//! HTTP write:  agent --PUT--> api handler (token -> Caller; path, query, body validated)
//!              --> Control::<operation>(caller, ..) --job--> control writer:
//!                  authorize, validate, mutate (every queued job, one batch)
//!              --> projection: recompute touched names, build the snapshot and its diff
//!              --> Store::commit (one fsync per batch) --> publish (ArcSwap::store)
//!              --> response {serial}   (already answered by DNS)
//!
//! DNS query:   socket --> ArcSwap::load --> dns::handler::handle (one parse)
//!              --> answer::answer, or a zone transfer --> socket
//! ```
//!
//! `docs/architecture.md` has both in more detail, with the module rules.

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod dns;
pub mod edge;
pub mod metrics;
pub mod model;
pub mod name;
pub mod placement;
pub mod scheme;
pub mod server;
pub mod signal;
pub mod snapshot;
pub mod stackfile;
pub mod store;
pub mod systemd;
pub mod zone;
