//! The only `bindgen!` of the host: Rust types and traits for the
//! `lambda:function` world in `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "function",
    exports: { default: async },
});

pub use Invocation as WitInvocation;
pub use lambda::function::host::Level;
