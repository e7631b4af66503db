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
//!   addressed so identical source is never built twice.
//! - [`catalog`]: the predefined functions shipped in `components/`.
//!
//! [`language`] parses `Language-Title`s, [`digest`] names content, and
//! [`config`] holds the typed settings every part is built from.

pub mod catalog;
pub mod config;
pub mod digest;
pub mod language;
pub mod runtime;
pub mod toolchain;
