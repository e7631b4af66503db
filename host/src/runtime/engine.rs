//! The process-wide engine and its epoch ticker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::{PagemapScan, RuntimeConfig};
use crate::periodic::Periodic;

/// Guests of componentize-js and componentize-py are several core modules
/// linked together (the interpreter, libc, adapters, the glue): a component
/// instance holds up to a few dozen core instances.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// ...and a handful of memories and tables.
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
const MAX_TABLES_PER_COMPONENT: u32 = 32;
/// Interpreters have tens of thousands of functions in their indirect-call
/// table (CPython's is the largest seen).
const MAX_TABLE_ELEMENTS: usize = 200_000;
/// An interpreter's instance metadata (its `vmctx`: function refs, globals)
/// is larger than a small module's; the pool reserves this much per slot.
const MAX_CORE_INSTANCE_SIZE: usize = 4 << 20;

/// Builds the one engine of the process.
pub fn build(config: &RuntimeConfig) -> anyhow::Result<Engine> {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true);
    // Deadlines are epochs: a counter bumped by one thread, checked by the
    // guest's code at loop heads and function entries. Cheaper than fuel and
    // independent of how many stores are running.
    wasm.epoch_interruption(true);
    // Memory images: instantiation maps the data segments copy-on-write
    // instead of copying them, which is most of the start-up of a 15 MB
    // interpreter component.
    wasm.memory_init_cow(true);

    if config.pooling() {
        // Executing instances, and warm ones waiting for their next
        // execution: both hold a slot of the pool.
        let instances = config.max_instances + config.warm_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances * MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .total_memories(instances * MAX_MEMORIES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .total_tables(instances * MAX_TABLES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .table_elements(MAX_TABLE_ELEMENTS)
            .max_core_instance_size(MAX_CORE_INSTANCE_SIZE)
            // A stack is only held during a call: executing instances.
            .total_stacks(config.max_instances)
            // A slot's memory can never grow past the per-execution cap: the
            // limiter refuses first, and the pool reserves no more than that.
            .max_memory_size(config.memory_limit_bytes as usize)
            // Keep a little memory resident in released slots, so the next
            // instance in that slot does not fault every page in again.
            .linear_memory_keep_resident(config.pool_memory_keep_resident)
            .table_keep_resident(config.pool_table_keep_resident)
            .decommit_batch_size(config.pool_decommit_batch as usize)
            .max_unused_warm_slots(config.pool_warm_slots)
            .pagemap_scan(pagemap_scan(config.pool_pagemap_scan));
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }

    if config.compile_cache_bytes > 0 {
        // Entries are keyed by each function's content and the compiler's
        // settings: runtimes with other settings can share one cache.
        let cache = config.shared_compile_cache.clone().unwrap_or_else(|| {
            Arc::new(super::incremental::CompiledFunctions::new(
                config.compile_cache_bytes,
            ))
        });
        wasm.enable_incremental_compilation(cache)
            .map_err(anyhow::Error::from)
            .context("enabling the incremental compilation cache")?;
    }

    Engine::new(&wasm)
        .map_err(anyhow::Error::from)
        .context("the wasmtime engine refused the runtime settings")
}

/// PAGEMAP_SCAN finds the pages a memory touched, to reset only those;
/// but it does not see pages that were swapped out, which would then keep
/// an earlier instance's data. `auto` therefore uses it only when no swap
/// is on (wasmtime's own `Auto` checks the kernel alone).
fn pagemap_scan(setting: PagemapScan) -> Enabled {
    match setting {
        PagemapScan::On => Enabled::Yes,
        PagemapScan::Off => Enabled::No,
        PagemapScan::Auto if swap_is_on() => Enabled::No,
        PagemapScan::Auto => Enabled::Auto,
    }
}

/// Whether any swap area is active: `/proc/swaps` lists one per line under
/// its header. Unreadable counts as on, the safe answer.
fn swap_is_on() -> bool {
    match std::fs::read_to_string("/proc/swaps") {
        Ok(text) => text.lines().skip(1).any(|line| !line.trim().is_empty()),
        Err(_) => true,
    }
}

/// The single thread that advances the engine's epoch; it stops when
/// dropped.
pub fn start_epoch_ticker(engine: &Engine, tick: Duration) -> anyhow::Result<Periodic> {
    // A weak handle: the ticker must not keep the engine alive.
    let engine = engine.weak();
    Periodic::start("wasm-epoch-ticker", tick, move || match engine.upgrade() {
        Some(engine) => {
            engine.increment_epoch();
            true
        }
        None => false,
    })
}
