//! Prebuilt components (`wasm-<title>`): the "source" is the component's
//! bytes in base64; the build decodes and checks them and runs nothing.
//!
//! The check ([`crate::runtime::worlds::check_upload`]) validates the bytes
//! as a WebAssembly component, tells its world from its exports and refuses
//! any import its world does not grant, naming it: a 422 at `initialize`,
//! like a compile error, never a failure at first call. Nothing of the
//! upload executes here, so no sandbox run is needed; the bytes reach
//! wasmtime only once they passed.

use base64::Engine as _;

use super::output::COMPONENT;
use super::{BuildError, BuildJob, CompileError, Toolchain};
use crate::language::Language;
use crate::runtime::worlds;

/// Bumped when the check changes what it accepts: part of every digest.
const FINGERPRINT: &str = "wasm-upload-1";

pub struct WasmUploads;

impl WasmUploads {
    /// The component a `script_content` carries: base64 (standard
    /// alphabet, padded; whitespace and line breaks between the
    /// characters are ignored), checked against the worlds.
    pub fn decode(source: &str) -> Result<Vec<u8>, CompileError> {
        let compact: String = source.split_ascii_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| refused(format!("script_content is not base64 of a component: {e}")))?;
        worlds::check_upload(&bytes).map_err(|e| refused(e.to_string()))?;
        Ok(bytes)
    }
}

fn refused(message: String) -> CompileError {
    CompileError {
        message,
        diagnostics: Vec::new(),
    }
}

#[async_trait::async_trait]
impl Toolchain for WasmUploads {
    fn language(&self) -> Language {
        Language::Wasm
    }

    fn fingerprint(&self) -> &str {
        FINGERPRINT
    }

    fn max_parallel_builds(&self) -> usize {
        2
    }

    async fn build(&self, job: BuildJob<'_>) -> Result<(), BuildError> {
        let source = job.source.to_owned();
        // Validation reads every byte: off the async workers.
        let bytes = tokio::task::spawn_blocking(move || WasmUploads::decode(&source))
            .await
            .map_err(|e| BuildError::Internal(e.into()))??;
        let path = job.workdir.join(COMPONENT);
        tokio::fs::write(&path, bytes).await.map_err(|e| {
            BuildError::Internal(anyhow::anyhow!("writing {}: {e}", path.display()))
        })?;
        Ok(())
    }
}
