//! One integration binary: each module starts real servers and talks to them over loopback.

mod agent;
mod api;
mod cli;
mod config;
mod conformance;
mod dns;
mod docker;
mod durability;
mod edge;
mod faults;
mod fleet;
mod leases;
mod operations;
mod props;
mod retention;
mod rrl;
mod scenario;
mod secondary;
mod seed;
mod stacks;
mod support;
mod systemd;
mod tenancy;
mod tls_peers;
mod transports;
