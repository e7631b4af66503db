//! The Spin SDK's key-value and variables interfaces (`fermyon:spin@2.0.0`,
//! `wit/spin/`), served to HTTP functions as the operator's policy grants:
//!
//! - **key-value**: one store per function and owner, labelled `default`,
//!   in Redis or the embedded database, under a size quota. A function
//!   without a grant gets `access-denied` at `open`.
//! - **variables**: the values the policy sets for the function. They are
//!   handed to the guest and nowhere else: never logged, never in an error.

use std::sync::Arc;

use wasmtime::component::{Linker, Resource};

use super::invoke::GuestState;
use super::policy::FunctionGrant;
use crate::store::{KeyValueStore, KvSet};

wasmtime::component::bindgen!({
    path: "../wit/spin",
    world: "capabilities",
    imports: { default: async | trappable },
    with: {
        "fermyon:spin/key-value.store": OpenStore,
    },
});

use fermyon::spin::key_value::{self, Error as KvError};
use fermyon::spin::variables::{self, Error as VariableError};

/// Links both interfaces into an HTTP function's linker.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    Capabilities::add_to_linker::<GuestState, wasmtime::component::HasSelf<GuestState>>(
        linker,
        |state| state,
    )?;
    Ok(())
}

/// Whose function a call runs: what scopes its key-value data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FunctionOwner {
    /// The operator's (a predefined function).
    Predefined,
    /// The subject that registered it.
    User(Arc<str>),
    /// Not known for this version (no longer the current one): its calls
    /// get no key-value store.
    Unknown,
}

/// Whose function a call runs and what it may use: the policy's grant,
/// narrowed to the function's declaration.
#[derive(Clone, Debug)]
pub struct CallScope {
    pub owner: FunctionOwner,
    pub grant: Option<Arc<FunctionGrant>>,
}

/// The one store a function may open.
const STORE_LABEL: &str = "default";
/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// An open store, as the guest holds it: the scope is the call's.
pub struct OpenStore;

/// Where one call's key-value data lives: its function's and owner's
/// namespace in the store, and its quota.
#[derive(Clone)]
pub struct KeyValueScope {
    pub store: Arc<dyn KeyValueStore>,
    /// Derived from the function's language title and its owner, so two
    /// owners never share data, whatever the functions are called.
    pub namespace: String,
    pub quota_bytes: u64,
}

/// What one call of an HTTP function may use beyond `wasi:http`.
#[derive(Clone, Default)]
pub struct CallCapabilities {
    pub grant: Option<Arc<FunctionGrant>>,
    /// `None` when the function has no key-value grant or the host no
    /// store for it (then `open` says which).
    pub key_value: Option<KeyValueScope>,
}

/// A backend failure, as the guest sees it: that the store is unavailable,
/// not why (the operator's log has that).
fn unavailable(error: crate::store::StoreError) -> KvError {
    tracing::warn!("key-value store unavailable: {error}");
    KvError::Other("the key-value store is unavailable".to_owned())
}

impl GuestState {
    /// The scope of an open store the guest holds.
    fn key_value_scope(
        &self,
        store: &Resource<OpenStore>,
    ) -> wasmtime::Result<Result<KeyValueScope, KvError>> {
        // A handle the guest forged or dropped traps, as for any resource.
        self.table.get(store)?;
        Ok(self
            .capabilities
            .key_value
            .clone()
            .ok_or(KvError::AccessDenied))
    }
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::Other(format!(
            "a key is at most {MAX_KEY_BYTES} bytes; this one has {}",
            key.len()
        )));
    }
    Ok(())
}

impl key_value::Host for GuestState {}

impl key_value::HostStore for GuestState {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, KvError>> {
        if label != STORE_LABEL {
            return Ok(Err(KvError::NoSuchStore));
        }
        let granted = self
            .capabilities
            .grant
            .as_ref()
            .is_some_and(|grant| grant.key_value);
        if !granted {
            return Ok(Err(KvError::AccessDenied));
        }
        if self.capabilities.key_value.is_none() {
            return Ok(Err(KvError::Other(
                "this host has no key-value store for this call".to_owned(),
            )));
        }
        Ok(Ok(self.table.push(OpenStore)?))
    }

    async fn get(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, KvError>> {
        let scope = match self.key_value_scope(&store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        Ok(scope
            .store
            .get(&scope.namespace, &key)
            .await
            .map_err(unavailable))
    }

    async fn set(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), KvError>> {
        let scope = match self.key_value_scope(&store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        Ok(
            match scope
                .store
                .set(&scope.namespace, &key, &value, scope.quota_bytes)
                .await
            {
                Ok(KvSet::Stored) => Ok(()),
                Ok(KvSet::OverQuota) => Err(KvError::StoreTableFull),
                Err(e) => Err(unavailable(e)),
            },
        )
    }

    async fn delete(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), KvError>> {
        let scope = match self.key_value_scope(&store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        Ok(scope
            .store
            .delete(&scope.namespace, &key)
            .await
            .map_err(unavailable))
    }

    async fn exists(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, KvError>> {
        let scope = match self.key_value_scope(&store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        Ok(scope
            .store
            .exists(&scope.namespace, &key)
            .await
            .map_err(unavailable))
    }

    async fn get_keys(
        &mut self,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<Result<Vec<String>, KvError>> {
        let scope = match self.key_value_scope(&store)? {
            Ok(scope) => scope,
            Err(e) => return Ok(Err(e)),
        };
        Ok(scope
            .store
            .keys(&scope.namespace)
            .await
            .map_err(unavailable))
    }

    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

// No `tracing` option in the bindgen above: it would log every call's
// arguments and results, and a variable's value is a secret.
impl variables::Host for GuestState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, VariableError>> {
        if !super::policy::is_variable_name(&name) {
            return Ok(Err(VariableError::InvalidName(format!(
                "`{name}` is not a variable name (lower-case letters, digits and `_`, \
                 starting with a letter)"
            ))));
        }
        Ok(
            match self
                .capabilities
                .grant
                .as_ref()
                .and_then(|grant| grant.variable(&name))
            {
                Some(value) => Ok(value.expose().to_owned()),
                None => Err(VariableError::Undefined(format!(
                    "no variable `{name}` is set for this function"
                ))),
            },
        )
    }
}
