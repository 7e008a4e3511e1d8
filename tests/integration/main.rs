//! One integration binary: each module starts real servers and talks to them over loopback.

mod api;
mod conformance;
mod dns;
mod durability;
mod fleet;
mod leases;
mod scenario;
mod secondary;
mod seed;
mod stacks;
mod support;
