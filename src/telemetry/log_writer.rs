//! Where log lines go: a buffer in memory, written out by a thread of its own in batches, at
//! most every few milliseconds, so a request never waits for stdout.
//!
//! Written out rather than tracing-appender's non-blocking writer, which hands each line to its
//! thread through a channel and wakes the thread for it: on a busy core that was two to three
//! context switches and syscalls per request (perf stat), a fifth of a POST's CPU. Here the
//! thread is woken once when a line arrives in an empty buffer, then lets lines gather for
//! [`FLUSH_EVERY`] and writes them with one `write`.
//!
//! Lines are never dropped: past [`MAX_PENDING_BYTES`] a logging thread waits for the writer
//! (as a plain write to a full pipe would). What the process had not written out when it is
//! killed with SIGKILL is lost; a graceful stop drains the buffer ([`LogFlusher`]).

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long lines may wait in memory before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// This much waiting wakes the writer before its time is up.
const WAKE_AT_BYTES: usize = 256 * 1024;
/// Beyond this much waiting, logging blocks until the writer catches up.
const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

/// The `MakeWriter` for the log layers: cheap to clone, appends to the shared buffer.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Keep it until shutdown: dropping it writes out what is waiting and stops the thread.
pub struct LogFlusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer: the first line in an empty buffer, a full buffer, or closing.
    more: Condvar,
    /// Wakes loggers waiting for room.
    room: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts the writer thread, writing to `out`.
pub fn spawn(out: impl Write + Send + 'static) -> io::Result<(LogWriter, LogFlusher)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        more: Condvar::new(),
        room: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || write_out(&shared, out)
        })?;
    let writer = LogWriter {
        shared: shared.clone(),
    };
    let flusher = LogFlusher {
        shared,
        thread: Some(thread),
    };
    Ok((writer, flusher))
}

fn write_out(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    let mut pending = shared.pending();
    loop {
        while pending.bytes.is_empty() && !pending.closed {
            pending = shared.more.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        if !pending.closed && pending.bytes.len() < WAKE_AT_BYTES {
            // Let more lines gather: one write per FLUSH_EVERY, not one per line.
            pending = shared
                .more
                .wait_timeout(pending, FLUSH_EVERY)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::mem::swap(&mut batch, &mut pending.bytes);
        let closed = pending.closed;
        drop(pending);
        shared.room.notify_all();
        // A failed write (stdout closed) loses these lines; logging must not stop the service.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > MAX_PENDING_BYTES {
            batch = Vec::new();
        }
        pending = shared.pending();
        if closed && pending.bytes.is_empty() {
            return;
        }
    }
}

impl Drop for LogFlusher {
    fn drop(&mut self) {
        self.shared.pending().closed = true;
        self.shared.more.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = Appender<'a>;

    fn make_writer(&'a self) -> Appender<'a> {
        Appender(&self.shared)
    }
}

/// Appends what it is given to the buffer (the JSON layer gives it whole lines).
pub struct Appender<'a>(&'a Shared);

impl Write for Appender<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut pending = self.0.pending();
        while pending.bytes.len() >= MAX_PENDING_BYTES && !pending.closed {
            pending = self.0.room.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(bytes);
        let wake = was_empty || pending.bytes.len() >= WAKE_AT_BYTES;
        drop(pending);
        if wake {
            self.0.more.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// An output that records what reaches it, and how many writes it took.
    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Out {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut out = self.0.lock().unwrap();
            out.0.extend_from_slice(bytes);
            out.1 += 1;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_come_out_in_order_in_few_writes_and_all_of_them_at_shutdown() {
        let out = Out::default();
        let (writer, flusher) = spawn(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let line = format!("{t} {i}\n");
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(flusher);
        let (bytes, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 8_000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..2_000).collect::<Vec<_>>(), "thread {t}");
        }
        assert!(writes < 800, "{writes} writes for 8000 lines");
    }

    #[test]
    fn a_lone_line_is_written_within_the_flush_interval() {
        let out = Out::default();
        let (writer, _flusher) = spawn(out.clone()).unwrap();
        let started = Instant::now();
        writer.make_writer().write_all(b"hello\n").unwrap();
        while out.0.lock().unwrap().0.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(2), "never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.0.lock().unwrap().0, b"hello\n");
    }

    /// An output that blocks until released, like a full pipe.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Out);

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let (released, wake) = &*self.0;
            let mut released = released.lock().unwrap();
            while !*released {
                released = wake.wait(released).unwrap();
            }
            self.1.write(bytes)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_makes_loggers_wait_instead_of_growing_or_dropping() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Out::default();
        let (writer, flusher) = spawn(Stuck(gate.clone(), out.clone())).unwrap();
        let line = vec![b'x'; 64 * 1024];
        let logger = std::thread::spawn({
            let writer = writer.clone();
            let line = line.clone();
            move || {
                for _ in 0..(3 * MAX_PENDING_BYTES / line.len()) {
                    writer.make_writer().write_all(&line).unwrap();
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !logger.is_finished(),
            "the logger should be waiting for room"
        );
        assert!(writer.shared.pending().bytes.len() <= MAX_PENDING_BYTES + line.len());
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        logger.join().unwrap();
        drop(flusher);
        assert_eq!(out.0.lock().unwrap().0.len(), 3 * MAX_PENDING_BYTES);
    }
}
