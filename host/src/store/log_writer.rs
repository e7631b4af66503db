//! Writes log records to the durable store in batches, off the request
//! path.
//!
//! Requests hand records to a bounded queue and never wait. One task drains
//! the queue in batches (one transaction each). When the database is down,
//! the batch is retried with backoff while new records wait in the queue;
//! what does not fit in the queue is counted in
//! `lambda_log_records_dropped_total` and reported in the host's log —
//! never dropped silently.
//!
//! No record can stop the pipeline: values are bounded to the columns
//! before they are queued ([`LogRecord::bounded`]), and a batch the
//! database refuses for its data is split until the refused records are
//! alone; those are quarantined (named in the host's log, counted in
//! `lambda_log_records_quarantined_total`) and the rest is written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{LogRecord, LogStore};

/// Records written per transaction, at most. Large enough that a database
/// sharing two cores with a host serving 10,000 executions a second keeps
/// up (1,000 did not: PostgreSQL fell behind and the queue overflowed).
/// How the rows of a batch become statements is the store's business
/// (PostgreSQL: one per table; SQLite: one per table and thousand rows).
const BATCH: usize = 5000;
/// How long a batch waits to fill up before it is written anyway.
const LINGER: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

enum Message {
    Record(Box<LogRecord>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    sender: mpsc::Sender<Message>,
    dropped: IntCounter,
    /// Drops since the last warning, so the host's log says how many
    /// without one line per record.
    unreported: Arc<AtomicU64>,
}

impl LogWriter {
    /// Starts the writer task; `capacity` bounds the queue.
    pub fn start(
        store: Arc<dyn LogStore>,
        capacity: usize,
        dropped: IntCounter,
        quarantined: IntCounter,
    ) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let task = tokio::spawn(run(store, receiver, quarantined));
        (
            Self {
                sender,
                dropped,
                unreported: Arc::new(AtomicU64::new(0)),
            },
            task,
        )
    }

    /// Queues a record without waiting.
    pub fn record(&self, record: LogRecord) {
        if self
            .sender
            .try_send(Message::Record(Box::new(record.bounded())))
            .is_err()
        {
            self.dropped.inc();
            // Warn on the first drop of a burst and every 1000th after it.
            if self
                .unreported
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(1000)
            {
                tracing::warn!(
                    dropped_total = self.dropped.get(),
                    "the log queue is full: log records are being dropped"
                );
            }
        } else {
            self.unreported.store(0, Ordering::Relaxed);
        }
    }

    /// How many records wait in the queue.
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// The host's own machinery as `/health` reports it: `ok`;
    /// `degraded` when the queue is nine-tenths full (the database is
    /// down or slow, and records will soon be dropped); `unavailable` when
    /// the writer task has ended.
    pub fn health(&self) -> &'static str {
        if self.sender.is_closed() {
            "unavailable"
        } else if self.queued() * 10 >= self.sender.max_capacity() * 9 {
            "degraded"
        } else {
            "ok"
        }
    }

    /// Waits until every record queued so far is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

async fn run(
    store: Arc<dyn LogStore>,
    mut receiver: mpsc::Receiver<Message>,
    quarantined: IntCounter,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiting = Vec::new();
    while let Some(first) = receiver.recv().await {
        take(first, &mut batch, &mut waiting);
        // Linger briefly so a burst becomes one transaction.
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH && waiting.is_empty() {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(message)) => take(message, &mut batch, &mut waiting),
                _ => break,
            }
        }
        write(store.as_ref(), &batch, &quarantined).await;
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
    // The senders are gone: the host is stopping and everything is written.
}

fn take(message: Message, batch: &mut Vec<LogRecord>, waiting: &mut Vec<oneshot::Sender<()>>) {
    match message {
        Message::Record(record) => batch.push(*record),
        Message::Flush(done) => waiting.push(done),
    }
}

/// Writes a batch: retried while the database is unreachable, split when
/// it refuses the data, down to the records it refuses alone.
async fn write(store: &dyn LogStore, batch: &[LogRecord], quarantined: &IntCounter) {
    if batch.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.write_batch(batch).await {
            Ok(()) => return,
            Err(e) if e.refused_for_data() => {
                if let [record] = batch {
                    let (kind, request_id) = record.describe();
                    tracing::error!(
                        kind,
                        request_id,
                        "a log record was refused by the database and is quarantined: {e}"
                    );
                    quarantined.inc();
                    return;
                }
                let (first, second) = batch.split_at(batch.len() / 2);
                Box::pin(write(store, first, quarantined)).await;
                Box::pin(write(store, second, quarantined)).await;
                return;
            }
            Err(e) => {
                tracing::warn!(
                    records = batch.len(),
                    "cannot write logs, retrying in {backoff:?}: {e}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
