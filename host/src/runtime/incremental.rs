//! Cranelift's incremental compilation cache, kept in memory.
//!
//! Cranelift can key each function it compiles by the function's content
//! and reuse the machine code of an identical function compiled before.
//! Every JavaScript component carries the same StarlingMonkey engine and
//! every Python component the same CPython: most of a new component's
//! functions are ones the host has already compiled for another. Entries
//! are Cranelift's own serialized results, verified by Cranelift when read.
//! In memory only, bounded by bytes; a restarted host fills it again with
//! its first compilation of each language.

use std::borrow::Cow;
use std::sync::Arc;

/// The store behind `Config::enable_incremental_compilation`.
#[derive(Debug)]
pub struct CompiledFunctions {
    entries: moka::sync::Cache<Vec<u8>, Arc<[u8]>>,
}

impl CompiledFunctions {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &Vec<u8>, value: &Arc<[u8]>| {
                    u32::try_from(key.len() + value.len()).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }
}

impl wasmtime::CacheStore for CompiledFunctions {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        self.entries
            .get(key)
            .map(|value| Cow::Owned(value.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        self.entries.insert(key.to_vec(), value.into());
        true
    }
}
