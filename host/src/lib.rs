//! lambda-host: runs JavaScript, Python and Rust functions as WASI 0.2
//! components on wasmtime.
//!
//! The crate is organised by the three lifetimes of state it manages:
//!
//! - [`runtime`]: process-wide (one `Engine`, one `Linker`, one epoch
//!   ticker), per component (compiled once, cached ahead of time on disk, an
//!   `InstancePre` in memory) and per execution (a fresh `Store` with a
//!   deadline and a memory cap).
//! - [`toolchain`]: turns a language's source into a component, content
//!   addressed so identical source is never built twice, every toolchain
//!   run confined by the [`sandbox`].
//! - [`catalog`]: the predefined functions shipped in `components/`.
//!
//! Around them: [`api`] (the REST API of `shared/API.md`, axum), [`server`]
//! (wiring and serving), [`functions`] (the registry with its builds and
//! loads), [`store`] (sessions, cache, rate limits, registry, logs behind
//! traits), [`auth`] (JWT), [`integrity`] (seals on stored artifacts and
//! native code), [`telemetry`] (Prometheus). [`language`] parses
//! `Language-Title`s, [`digest`] names content, [`files`] reads the host's
//! own directories through capabilities, and [`config`] holds the
//! typed settings every part is built from.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod digest;
pub mod files;
pub mod functions;
pub mod integrity;
pub mod language;
pub mod log_output;
pub mod periodic;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod toolchain;
