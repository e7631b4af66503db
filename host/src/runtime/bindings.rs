//! The only `bindgen!` of the host: Rust types and traits for the
//! `lambda:function` worlds in `wit/`.
//!
//! The bindings are those of the `interpreter` world, which is the
//! `function` world plus the `script` import: both kinds of component
//! export the same `handle`, so one pre-instantiation type serves both, and
//! the linker's `script` goes unused by a component that does not import it.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "interpreter",
    exports: { default: async },
});

pub use Interpreter as Function;
pub use InterpreterPre as FunctionPre;
pub use Invocation as WitInvocation;
pub use lambda::function::host::Level;
pub use lambda::function::script::{Mode as ScriptMode, Source as ScriptSource};
