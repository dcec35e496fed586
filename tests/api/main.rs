//! The integration tests, one crate so they link once: each module starts the real app on port 0
//! or the real binary, and speaks HTTP to it (both storage backends where storage matters).

#[macro_use]
mod common;

mod bad_input;
mod cli;
mod durability;
mod faults;
mod hardening;
mod logs;
mod metrics;
mod original_api;
mod overload;
mod properties;
mod shutdown;
mod traces;
mod v1_api;
