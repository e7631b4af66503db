//! Per-execution limits: the memory cap and the bounded capture of output.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Caps the linear memory of one execution, summed over every memory of
/// the component, and remembers whether it ever refused a growth, so that a
/// trap that follows can be reported as out of memory rather than a crash.
pub struct MemoryLimiter {
    limit: usize,
    /// Bytes currently held by all memories of the instance.
    in_use: usize,
    /// Set when a growth was refused: the guest hit the cap.
    refused: bool,
}

impl MemoryLimiter {
    pub fn new(limit_bytes: u64) -> Self {
        Self {
            limit: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            in_use: 0,
            refused: false,
        }
    }

    /// Whether the guest asked for more memory than the cap allows.
    pub fn hit_the_cap(&self) -> bool {
        self.refused
    }

    /// Starts an execution of the instance: a refusal of an earlier one is
    /// forgotten; the memory it holds still counts.
    pub fn start_execution(&mut self) {
        self.refused = false;
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.in_use - current.min(self.in_use) + desired;
        if after > self.limit {
            // Refuse, without trapping: `memory.grow` returns -1 and the
            // guest's allocator decides what to do. Most abort, which traps;
            // some raise a language-level error the guest may report.
            self.refused = true;
            return Ok(false);
        }
        self.in_use = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

/// An in-memory stdout or stderr that keeps the first `capacity` bytes and
/// silently drops the rest. (wasmtime's `MemoryOutputPipe` traps the guest
/// once full; a chatty function should lose its log tail, not its result.)
#[derive(Clone)]
pub struct BoundedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    capacity: usize,
    bytes: Vec<u8>,
    truncated: bool,
}

impl Captured {
    fn append(&mut self, data: &[u8]) {
        let room = self.capacity.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

impl BoundedOutput {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                capacity,
                ..Captured::default()
            })),
        }
    }

    /// What was captured, as text (invalid UTF-8 replaced), with a marker
    /// when output was cut.
    pub fn contents(&self) -> String {
        let captured = self.lock();
        let mut text = String::from_utf8_lossy(&captured.bytes).into_owned();
        if captured.truncated {
            text.push_str("\n[output truncated]");
        }
        text
    }

    /// [`contents`](Self::contents), leaving the buffer empty for the next
    /// execution of the same instance.
    pub fn take_contents(&self) -> String {
        let text = self.contents();
        let mut captured = self.lock();
        captured.bytes.clear();
        captured.truncated = false;
        text
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        // A poisoned lock only means another writer panicked mid-append;
        // the bytes are still a valid prefix.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl IsTerminal for BoundedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for BoundedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.lock().append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept: what does not fit is dropped, not refused.
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for BoundedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for BoundedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.lock().append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn output_past_the_capacity_is_cut_and_marked() {
        let mut out = BoundedOutput::new(5);
        OutputStream::write(&mut out, Bytes::from_static(b"hello")).unwrap();
        assert_eq!(out.contents(), "hello");
        OutputStream::write(&mut out, Bytes::from_static(b" world")).unwrap();
        assert_eq!(out.contents(), "hello\n[output truncated]");
        // The next execution of a warm instance starts empty, with room.
        assert_eq!(out.take_contents(), "hello\n[output truncated]");
        OutputStream::write(&mut out, Bytes::from_static(b"again")).unwrap();
        assert_eq!(out.take_contents(), "again");
        assert_eq!(out.contents(), "");
    }

    #[test]
    fn the_memory_cap_counts_every_memory_of_the_instance() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(!limiter.hit_the_cap());
        // A third memory would take the total past the cap.
        assert!(!limiter.memory_growing(0, 1, None).unwrap());
        assert!(limiter.hit_the_cap());
        // A warm instance's next execution starts without the refusal but
        // with the memory it holds.
        limiter.start_execution();
        assert!(!limiter.hit_the_cap());
        assert!(!limiter.memory_growing(0, 1, None).unwrap());
    }
}
