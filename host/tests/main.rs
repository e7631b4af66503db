//! Integration tests: one binary, a module per area. Every guest is built
//! from source by the real toolchains, exactly as a user's function is.

mod helpers;

mod api;
mod cli;
mod conformance;
mod faults;
mod hostile_builds;
mod http_functions;
mod logs;
mod predefined;
mod processes;
mod runtime;
mod sandbox;
mod stores;
mod tiers;
mod toolchain_rust;
mod toolchain_scripts;
mod warm;
