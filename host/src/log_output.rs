//! Where the host's own log lines go: stderr, written in blocks instead of
//! one `write` per line.
//!
//! At ten thousand executions a second the access log alone is ten
//! thousand `write` calls a second, each taking stderr's lock and the
//! kernel's file or pipe path: about a third of what the access log cost
//! in the profile of a warm execution (`docs/benchmarks.md`).
//! `tracing-appender`'s non-blocking writer removes the syscalls from the
//! request path but wakes its thread for every line, which on two cores
//! cost more than it saved. Here lines collect in a buffer that the
//! request's own thread writes out once it holds [`FLUSH_AT`] bytes, and a
//! thread writes out whatever waits every [`FLUSH_EVERY`]: a line reaches
//! stderr at most that late, and no line wakes anyone.
//!
//! Warnings and errors are written out at once, together with everything
//! before them (so the order stays), and so is the buffer when the host
//! stops or panics: what an operator needs to see is never held back.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::periodic::Periodic;

/// Bytes of log lines held at most before they are written out.
pub const FLUSH_AT: usize = 32 * 1024;
/// How long a line waits for company at most.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A [`MakeWriter`] for `tracing-subscriber` that buffers lines for
/// `sink`. Cheap to clone; every clone shares the buffer.
pub struct BufferedLines<W: Write + Send + 'static> {
    shared: Arc<Mutex<Lines<W>>>,
}

impl<W: Write + Send + 'static> Clone for BufferedLines<W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Lines<W> {
    pending: Vec<u8>,
    sink: W,
}

impl<W: Write> Lines<W> {
    /// Hands the buffer to the sink. A sink that fails (a closed pipe)
    /// loses those lines, as an unbuffered `eprintln!` would, and never
    /// stops the host.
    fn write_out(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.sink.write_all(&self.pending);
            let _ = self.sink.flush();
            self.pending.clear();
        }
    }
}

impl<W: Write + Send + 'static> BufferedLines<W> {
    pub fn new(sink: W) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Lines {
                pending: Vec::with_capacity(FLUSH_AT + 1024),
                sink,
            })),
        }
    }

    /// Writes out whatever waits.
    pub fn flush(&self) {
        self.lock().write_out();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines<W>> {
        // A panic while holding the lock cannot leave the buffer torn in a
        // way that matters: at worst a line is cut short.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer `tracing-subscriber` gets for one event: it writes the
/// event's whole line in one call.
pub struct LineWriter<'a, W: Write + Send + 'static> {
    lines: &'a BufferedLines<W>,
    /// A warning or an error: written out at once.
    urgent: bool,
}

impl<W: Write + Send + 'static> Write for LineWriter<'_, W> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut lines = self.lines.lock();
        lines.pending.extend_from_slice(line);
        if self.urgent || lines.pending.len() >= FLUSH_AT {
            lines.write_out();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for BufferedLines<W> {
    type Writer = LineWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            lines: self,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            lines: self,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// Keeps stderr's buffer flushed every [`FLUSH_EVERY`]; dropping it
/// writes out what is left.
pub struct StderrGuard {
    lines: BufferedLines<io::Stderr>,
    flusher: Option<Periodic>,
}

impl Drop for StderrGuard {
    fn drop(&mut self) {
        // The flusher is stopped first (field order), then the rest goes.
        self.flusher.take();
        self.lines.flush();
    }
}

/// Installs the process's log subscriber: lines of `writer` passing
/// `filter`, as text (coloured when `ansi`) or, when `json`, one object per
/// line with the event's fields at the top level (`"status":200`, not
/// `"fields":{"status":200}`), so collectors index them as they are. The
/// host and its execution processes both log through it, in one format.
pub fn init<W>(writer: W, filter: tracing_subscriber::EnvFilter, json: bool, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        builder.with_ansi(ansi).init();
    }
}

/// The buffered stderr for the host's logs, its flushing thread, and a
/// panic hook that writes out the buffer before the panic's own message.
pub fn buffered_stderr() -> (BufferedLines<io::Stderr>, StderrGuard) {
    let lines = BufferedLines::new(io::stderr());
    let flusher = Periodic::start("log-flush", FLUSH_EVERY, {
        let lines = lines.clone();
        move || {
            lines.flush();
            true
        }
    });
    let flusher = match flusher {
        Ok(flusher) => Some(flusher),
        Err(e) => {
            // Without the thread, lines still go out at FLUSH_AT bytes, on
            // warnings and at exit; say so rather than refuse to start.
            eprintln!("warning: {e:#}; log lines are written out in blocks only");
            None
        }
    };
    let previous = std::panic::take_hook();
    let on_panic = lines.clone();
    std::panic::set_hook(Box::new(move |info| {
        on_panic.flush();
        previous(info);
    }));
    (lines.clone(), StderrGuard { lines, flusher })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer holds it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn subscriber(lines: BufferedLines<Shared>) -> impl tracing::Subscriber {
        tracing_subscriber::fmt()
            .with_writer(lines)
            .with_ansi(false)
            .without_time()
            .finish()
    }

    #[test]
    fn info_lines_wait_and_a_warning_writes_them_out_in_order() {
        let sink = Shared::default();
        let lines = BufferedLines::new(sink.clone());
        tracing::subscriber::with_default(subscriber(lines.clone()), || {
            tracing::info!("first");
            tracing::info!("second");
            assert_eq!(sink.text(), "", "info lines are buffered");
            tracing::warn!("third");
        });
        let text = sink.text();
        let order: Vec<_> = ["first", "second", "third"]
            .iter()
            .map(|word| {
                text.find(word)
                    .unwrap_or_else(|| panic!("{word} in {text}"))
            })
            .collect();
        assert!(order.is_sorted(), "{text}");
    }

    #[test]
    fn a_full_buffer_is_written_out_and_flush_writes_the_rest() {
        let sink = Shared::default();
        let lines = BufferedLines::new(sink.clone());
        let line = "x".repeat(1000);
        tracing::subscriber::with_default(subscriber(lines.clone()), || {
            for _ in 0..(FLUSH_AT / 1000 + 1) {
                tracing::info!("{line}");
            }
            let written = sink.text().len();
            assert!(
                written >= FLUSH_AT,
                "{written} bytes out after a full buffer"
            );
            tracing::info!("last");
        });
        assert!(!sink.text().contains("last"));
        lines.flush();
        assert!(sink.text().ends_with("last\n"), "{}", sink.text());
        let expected_lines = FLUSH_AT / 1000 + 2;
        assert_eq!(sink.text().lines().count(), expected_lines);
    }
}
