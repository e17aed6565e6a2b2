//! The log's writer: lines are appended to a shared buffer and written to standard error by a
//! thread of its own, many lines per write, as nginx's buffered `access_log` does.
//!
//! Why not a channel to a writer thread (`tracing-appender`): its receiving thread spins and
//! yields before it sleeps, and on a two-core machine serving one-row requests that thread took
//! 18% of the server's CPU while it waited for lines. Here a request's thread only copies its
//! line into the buffer under a short lock; the writer thread is woken once when the buffer
//! stops being empty, then collects lines for up to [`FLUSH_INTERVAL`] (or until
//! [`FLUSH_AT`] bytes are waiting) and writes them in one call. Nothing is dropped: when the
//! buffer holds [`MAX_PENDING`] bytes that standard error has not taken, writers wait. The
//! [`FlushOnDrop`] guard writes what is pending and stops the thread when the server returns.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits in the buffer before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Bytes waiting that get the writer thread to write at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// Bytes waiting beyond which request threads wait for the writer (standard error is slower
/// than the server's lines).
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// The writer thread waits on it for lines; writers for room.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands out [`LineWriter`]s to the tracing subscriber.
#[derive(Clone)]
pub struct BufferedLog {
    shared: Arc<Shared>,
}

/// Writes what is pending and stops the writer thread when dropped.
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `sink` (standard error in the server).
pub fn buffered(sink: impl Write + Send + 'static) -> std::io::Result<(BufferedLog, FlushOnDrop)> {
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new().name("inferd-log".into()).spawn(move || write_lines(&shared, sink))?
    };
    Ok((BufferedLog { shared: Arc::clone(&shared) }, FlushOnDrop { shared, thread: Some(thread) }))
}

fn write_lines(shared: &Shared, mut sink: impl Write) {
    let mut spare = Vec::with_capacity(FLUSH_AT);
    loop {
        let mut pending = shared.lock();
        while pending.bytes.is_empty() && !pending.closed {
            pending = shared.changed.wait(pending).unwrap_or_else(PoisonError::into_inner);
        }
        // Collect company for the first line, unless enough is already waiting.
        if pending.bytes.len() < FLUSH_AT && !pending.closed {
            pending = shared
                .changed
                .wait_timeout_while(pending, FLUSH_INTERVAL, |pending| {
                    pending.bytes.len() < FLUSH_AT && !pending.closed
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let closed = pending.closed;
        std::mem::swap(&mut pending.bytes, &mut spare);
        let was_full = spare.len() >= MAX_PENDING;
        drop(pending);
        if was_full {
            shared.changed.notify_all();
        }
        // A log that cannot be written has nowhere to report it; the lines are dropped.
        let _ = sink.write_all(&spare).and_then(|()| sink.flush());
        spare.clear();
        if spare.capacity() > 4 * FLUSH_AT {
            spare.shrink_to(FLUSH_AT);
        }
        if closed && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: the subscriber formats a line and writes it in one call.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl<'a> MakeWriter<'a> for BufferedLog {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { shared: &self.shared }
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= MAX_PENDING && !pending.closed {
            pending = self.shared.changed.wait(pending).unwrap_or_else(PoisonError::into_inner);
        }
        if pending.closed {
            // After the guard has written the last lines (the process is ending): write directly.
            drop(pending);
            return std::io::stderr().write(line);
        }
        let was_empty = pending.bytes.is_empty();
        let before = pending.bytes.len();
        pending.bytes.extend_from_slice(line);
        let reached = before < FLUSH_AT && pending.bytes.len() >= FLUSH_AT;
        drop(pending);
        // The writer thread sleeps while the buffer is empty and collects while it fills: wake
        // it only for the first line and when enough has gathered.
        if was_empty || reached {
            self.shared.changed.notify_all();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, counting its writes.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorded {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut recorded = self.0.lock().unwrap();
            recorded.0.extend_from_slice(bytes);
            recorded.1 += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_and_many_per_write() {
        let sink = Recorded::default();
        let (log, guard) = buffered(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for line in 0..5_000 {
                        log.make_writer().write_all(format!("{thread} {line}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (thread, number) = line.split_once(' ').unwrap();
            let thread: usize = thread.parse().unwrap();
            assert_eq!(number.parse::<usize>().unwrap(), next[thread], "each thread's lines in order, none lost");
            next[thread] += 1;
        }
        assert_eq!(next, [5_000; 4]);
        assert!(writes < 20_000 / 10, "{writes} writes for 20,000 lines");
    }

    #[test]
    fn a_lone_line_is_written_without_more_coming() {
        let sink = Recorded::default();
        let (log, _guard) = buffered(sink.clone()).unwrap();
        log.make_writer().write_all(b"only line\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().0.is_empty() {
            assert!(std::time::Instant::now() < deadline, "the line was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.0.lock().unwrap().0, b"only line\n");
    }
}
