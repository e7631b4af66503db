//! The two worlds a function's component may implement, told apart by its
//! exports, and the imports the host grants each of them.
//!
//! A component built here implements one by construction. An uploaded one
//! (`wasm-<title>`) is read before anything of it is compiled: what it
//! imports beyond its world's grant is refused by name, so a stranger learns
//! at upload which interface this host does not offer, instead of a
//! failure at first call.

use wasmparser::{ComponentTypeRef, Parser, Payload, TypeBounds, Validator, WasmFeatures};

/// What a component exports, and so how it is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    /// `lambda:function`'s `handle`: JSON in, JSON out (`execute`).
    Function,
    /// `wasi:http/incoming-handler` (the `wasi:http/proxy` world): a
    /// request in, a streamed response out (`/fn/...`).
    Http,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Function => "lambda:function",
            World::Http => "wasi:http/proxy",
        }
    }
}

/// Why a component was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("this is a core WebAssembly module, not a component (WASI 0.2)")]
    CoreModule,
    #[error(
        "the component exports neither `handle` (the lambda:function world) nor \
         `wasi:http/incoming-handler@0.2.x` (the wasi:http/proxy world)"
    )]
    NoEntryPoint,
    #[error(
        "the component imports `{import}`, which this host does not grant to a {world} \
         component; it grants: {granted}"
    )]
    NotGranted {
        import: String,
        world: &'static str,
        granted: String,
    },
}

/// WASI 0.2 interfaces every component may import. The host links them
/// over an empty context: no files, no environment, stdout and stderr
/// captured, and every `wasi:sockets` call refused (no TCP, no UDP, no name
/// lookup). The sockets interfaces are granted as imports only because
/// Rust's standard library imports them as soon as anything in a program
/// mentions `std::net`; refusing the import would refuse ordinary
/// programs, while the context already refuses each call.
const WASI: &[&str] = &[
    "wasi:io/poll",
    "wasi:io/error",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// Besides [`WASI`], for a `lambda:function` component.
const FUNCTION: &[&str] = &["lambda:function/types", "lambda:function/host"];

/// Besides [`WASI`], for an HTTP component. `outgoing-handler`, Spin's
/// key-value and variables are linked, and what each call reaches through
/// them is decided by the operator's policy (nothing by default).
const HTTP: &[&str] = &[
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    "fermyon:spin/key-value",
    "fermyon:spin/variables",
];

/// The export of an HTTP component.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler";

/// An interface name without its version: `wasi:io/poll@0.2.6` is
/// `wasi:io/poll`, version `0.2.6`.
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((interface, version)) => (interface, Some(version)),
        None => (name, None),
    }
}

/// Versions the host serves: WASI 0.2.x, lambda:function 0.1.x (wasmtime
/// links compatible patch versions to the ones it implements), Spin's
/// interfaces at 2.0.0 (what spin-sdk 5.x imports).
fn served_version(interface: &str, version: Option<&str>) -> bool {
    match version {
        Some(v) if interface.starts_with("wasi:") => v.starts_with("0.2."),
        Some(v) if interface.starts_with("lambda:") => v.starts_with("0.1."),
        Some(v) if interface.starts_with("fermyon:spin/") => v == "2.0.0",
        _ => false,
    }
}

/// Validates an uploaded component and names its world; refuses an
/// import its world does not grant, naming it.
pub fn check_upload(bytes: &[u8]) -> Result<World, WorldError> {
    if !Parser::is_component(bytes) {
        return Err(if Parser::is_core_wasm(bytes) {
            WorldError::CoreModule
        } else {
            WorldError::Invalid("it does not start with the component header".to_owned())
        });
    }
    Validator::new_with_features(WasmFeatures::default())
        .validate_all(bytes)
        .map_err(|e| WorldError::Invalid(e.message().to_owned()))?;
    let (imports, exports) = top_level_names(bytes)?;
    let world = if exports
        .iter()
        .any(|e| split_version(e).0 == INCOMING_HANDLER)
    {
        World::Http
    } else if exports.iter().any(|e| e == "handle") {
        World::Function
    } else {
        return Err(WorldError::NoEntryPoint);
    };
    let extra = match world {
        World::Function => FUNCTION,
        World::Http => HTTP,
    };
    for import in imports {
        let (interface, version) = split_version(&import);
        let granted = (WASI.contains(&interface) || extra.contains(&interface))
            && served_version(interface, version);
        if !granted {
            return Err(WorldError::NotGranted {
                import,
                world: world.as_str(),
                granted: granted_list(extra),
            });
        }
    }
    Ok(world)
}

/// The grant of a world, as an error message lists it.
fn granted_list(extra: &[&str]) -> String {
    WASI.iter()
        .chain(extra)
        .map(|interface| {
            if interface.starts_with("lambda:") {
                format!("{interface}@0.1")
            } else if interface.starts_with("fermyon:") {
                format!("{interface}@2.0.0")
            } else {
                format!("{interface}@0.2")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The world of a component that loaded: by its exports alone (a
/// component built here, or an upload checked already).
pub fn of_exports<'a>(mut exports: impl Iterator<Item = &'a str>) -> World {
    if exports.any(|name| split_version(name).0 == INCOMING_HANDLER) {
        World::Http
    } else {
        World::Function
    }
}

/// The names the outermost component imports and exports (nested
/// components and modules are its implementation, not its interface).
fn top_level_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), WorldError> {
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| WorldError::Invalid(e.message().to_owned()))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import = import.map_err(|e| WorldError::Invalid(e.message().to_owned()))?;
                    // A type equal to one defined already (a record a world
                    // `use`s) names a shape and grants nothing: only
                    // instances, functions and resources are capabilities.
                    if let ComponentTypeRef::Type(TypeBounds::Eq(_)) = import.ty {
                        continue;
                    }
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    let export = export.map_err(|e| WorldError::Invalid(e.message().to_owned()))?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn garbage_and_core_modules_are_refused() {
        assert!(matches!(
            check_upload(b"not wasm at all"),
            Err(WorldError::Invalid(_))
        ));
        assert_eq!(
            check_upload(&component("(module)")),
            Err(WorldError::CoreModule)
        );
        let mut truncated = component("(component (core module))");
        truncated.truncate(truncated.len() - 1);
        assert!(matches!(
            check_upload(&truncated),
            Err(WorldError::Invalid(_))
        ));
    }

    #[test]
    fn a_component_with_no_entry_point_is_refused() {
        assert_eq!(
            check_upload(&component("(component)")),
            Err(WorldError::NoEntryPoint)
        );
    }

    #[test]
    fn an_import_beyond_the_grant_is_named() {
        let spy = component(
            r#"(component
                 (import "wasi:keyvalue/store@0.2.0-draft" (instance))
                 (type $h (instance))
                 (import "wasi:http/types@0.2.0" (instance))
                 (instance $i)
                 (export "wasi:http/incoming-handler@0.2.0" (instance $i)))"#,
        );
        let refused = check_upload(&spy).unwrap_err();
        assert!(
            matches!(&refused, WorldError::NotGranted { import, world: "wasi:http/proxy", .. }
                if import == "wasi:keyvalue/store@0.2.0-draft"),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .contains("wasi:keyvalue/store@0.2.0-draft")
        );
    }

    #[test]
    fn a_shared_type_is_no_import_but_an_imported_resource_is() {
        let with_record = component(
            r#"(component
                 (type $r (record (field "a" u32)))
                 (import "invocation" (type (eq $r)))
                 (core module $m (func (export "f")))
                 (core instance $i (instantiate $m))
                 (func $f (canon lift (core func $i "f")))
                 (export "handle" (func $f)))"#,
        );
        assert_eq!(check_upload(&with_record), Ok(World::Function));
        let with_resource = component(
            r#"(component
                 (import "socket" (type (sub resource)))
                 (core module $m (func (export "f")))
                 (core instance $i (instantiate $m))
                 (func $f (canon lift (core func $i "f")))
                 (export "handle" (func $f)))"#,
        );
        assert!(matches!(
            check_upload(&with_resource),
            Err(WorldError::NotGranted { import, .. }) if import == "socket"
        ));
    }

    #[test]
    fn http_imports_are_not_granted_to_a_json_function_nor_an_unserved_version() {
        let function_with_http = component(
            r#"(component
                 (import "wasi:http/outgoing-handler@0.2.0" (instance))
                 (core module $m (func (export "f")))
                 (core instance $i (instantiate $m))
                 (func $f (canon lift (core func $i "f")))
                 (export "handle" (func $f)))"#,
        );
        assert!(matches!(
            check_upload(&function_with_http),
            Err(WorldError::NotGranted {
                world: "lambda:function",
                ..
            })
        ));
        let future_wasi = component(
            r#"(component
                 (import "wasi:io/poll@0.3.0" (instance))
                 (instance $i)
                 (export "wasi:http/incoming-handler@0.2.0" (instance $i)))"#,
        );
        assert!(matches!(
            check_upload(&future_wasi),
            Err(WorldError::NotGranted { .. })
        ));
    }

    #[test]
    fn sockets_are_granted_as_imports_because_rust_std_imports_them() {
        // What a Rust function that mentions `std::net` imports; each call
        // is refused by the guest's context (tested in tests/runtime.rs).
        let uses_std_net = component(
            r#"(component
                 (import "wasi:sockets/network@0.2.6" (instance))
                 (import "wasi:sockets/tcp-create-socket@0.2.6" (instance))
                 (import "wasi:sockets/ip-name-lookup@0.2.6" (instance))
                 (core module $m (func (export "f")))
                 (core instance $i (instantiate $m))
                 (func $f (canon lift (core func $i "f")))
                 (export "handle" (func $f)))"#,
        );
        assert_eq!(check_upload(&uses_std_net), Ok(World::Function));
    }

    #[test]
    fn the_world_is_told_by_the_exports() {
        let http = component(
            r#"(component
                 (import "wasi:io/poll@0.2.6" (instance))
                 (instance $i)
                 (export "wasi:http/incoming-handler@0.2.0" (instance $i)))"#,
        );
        assert_eq!(check_upload(&http), Ok(World::Http));
        assert_eq!(
            of_exports(["wasi:http/incoming-handler@0.2.0"].into_iter()),
            World::Http
        );
        assert_eq!(of_exports(["handle"].into_iter()), World::Function);
    }
}
