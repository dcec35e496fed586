//! Copies the WAL back into the database file beside the writer, so that no write waits for a
//! whole checkpoint.
//!
//! SQLite's own autocheckpoint runs inside the COMMIT that crosses its threshold: that batch, and
//! every write queued behind it, waited for the copy and the fsync of the database file (10-15 ms
//! once every ~250 batches under the bench's POST flood, and those stalls set its p99). Here a
//! connection of its own copies the WAL back with PASSIVE checkpoints, which never block the
//! writer, at most every [`CHECKPOINT_EVERY`] while writes come.
//!
//! SQLite fsyncs the database file only at a checkpoint that copies the whole WAL, never after a
//! pass that writes came in during, so the pages a pass copies stay dirty in the page cache. The
//! checkpointer writes them back itself after each pass, a part at a time over half a second
//! ([`write_back`]), and syncs the file; otherwise the writer's finishing step (below) would
//! flush everything all the passes copied, and grow with the database (10-19 ms on ~300k
//! comments, against 2-7 ms on a fresh file, under the bench's POST flood).
//!
//! A passive checkpoint alone cannot let the WAL start over while the writer keeps appending to
//! it (SQLite restarts the WAL only when a write begins with every frame copied back), and the
//! WAL would grow without end. So once a pass finds [`RESET_AT_FRAMES`] in the WAL, it asks the
//! writer to finish: right after answering its next batch, the writer checkpoints the frames that
//! were committed since (a few batches' worth, not the whole WAL: the checkpointer first takes, in
//! one more pass, what came in during its write-back), and its next write starts the WAL from the
//! beginning.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often, at most, the WAL is copied back while writes keep coming. A pass writes each page
/// that changed since the last one once, however often it changed (the bench's 1000 items change
/// the same index pages over and over), and every fsync the writer issues meanwhile has to flush
/// those pages too: `perf trace` showed 3-6 of the writer's commit fsyncs taking 1.5-4.8 ms
/// around every pass, against 0.36 ms on average. Once a second rather than every 200 ms, each
/// pass writes a third more pages, but all of them together a third as many (the checkpointer's
/// `pwrite`s in 4 s of the bench's POST flood: 2100 / 1897 against 6141 / 5592). POST p99 under
/// that flood 6.8 against 10.8 ms (median of 7 interleaved 5 s rounds), the same req/s. The
/// finishing step copies only what came in during the last pass, so it stays as it was; the WAL
/// peaks higher (126-141 MB against 93 MB in a 15 s flood).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(1000);

/// The WAL size (in 4 KiB frames: 64 MiB) at which the writer is asked to finish a checkpoint so
/// that the WAL starts over. Each finishing step holds the writer for 1-8 ms (a per-batch timer
/// under the bench's POST flood on a grown database). At that flood (about 12k frames a second)
/// a pass finds it every second pass or so (48000 measured no better, with passes every 200 ms,
/// and keeps a WAL three times the size).
pub const RESET_AT_FRAMES: i64 = 16_000;

/// The writer's handle on the checkpointer task.
pub struct Checkpointer {
    commits: watch::Sender<()>,
    finish_due: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Checkpointer {
    /// Starts the task on `conn`, a read-write connection of its own, syncing `database` (the
    /// database file, opened for reading) after its passes; the writer is asked to finish once
    /// the WAL holds `reset_at_frames` ([`RESET_AT_FRAMES`] but in tests).
    pub fn spawn(conn: SqliteConnection, database: File, reset_at_frames: i64) -> Self {
        let (commits, committed) = watch::channel(());
        let finish_due = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(copy_back(
            conn,
            Arc::new(database),
            committed,
            finish_due.clone(),
            reset_at_frames,
        ));
        Self {
            commits,
            finish_due,
            task,
        }
    }

    /// Tells the checkpointer the WAL has grown.
    pub fn committed(&self) {
        self.commits.send_replace(());
    }

    /// Whether the writer should checkpoint now, so that its next write restarts the WAL. True
    /// once per request of the checkpointer.
    pub fn finish_due(&self) -> bool {
        self.finish_due.swap(false, Ordering::Relaxed)
    }

    /// Stops the task and closes its connection (before the writer closes its own, which must be
    /// the last: the last connection to close checkpoints everything and removes the WAL).
    pub async fn stop(self) {
        drop(self.commits);
        let _ = self.task.await;
    }
}

async fn copy_back(
    mut conn: SqliteConnection,
    database: Arc<File>,
    mut committed: watch::Receiver<()>,
    finish_due: Arc<AtomicBool>,
    reset_at_frames: i64,
) {
    let mut copied_before = 0;
    while committed.changed().await.is_ok() {
        let started = tokio::time::Instant::now();
        match checkpoint(&mut conn).await {
            Ok(pass) if pass.copied_any() => {
                let copied_in = started.elapsed();
                if pass.copied_frames != copied_before {
                    copied_before = pass.copied_frames;
                    write_back(&database, WRITE_BACK_OVER).await;
                }
                tracing::debug!(
                    wal_frames = pass.wal_frames,
                    copied_frames = pass.copied_frames,
                    copy_us = copied_in.as_micros() as u64,
                    write_back_us = (started.elapsed() - copied_in).as_micros() as u64,
                    "WAL copied back"
                );
                if pass.wal_frames >= reset_at_frames {
                    // The writer's finishing step copies and syncs what was committed since the
                    // last pass, so one more pass first takes what came in during the write-back.
                    if let Ok(again) = checkpoint(&mut conn).await
                        && again.copied_any()
                    {
                        copied_before = again.copied_frames;
                        sync(&database).await;
                    }
                    finish_due.store(true, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, "WAL checkpoint failed; retrying after the next write");
            }
        }
        tokio::time::sleep_until(started + CHECKPOINT_EVERY).await;
    }
    let _ = conn.close().await;
}

/// The pages a pass copied are written back a part of the database file at a time, in this many
/// parts, before the file is synced.
const WRITE_BACK_STEPS: u64 = 50;

/// How long the write-back of one pass is spread over: well inside [`CHECKPOINT_EVERY`].
const WRITE_BACK_OVER: Duration = Duration::from_millis(500);

/// Flushes the pages a pass copied into the database file, spread out over `over`: a pass copies
/// about 1700 pages (7 MB) a second under the bench's POST flood, and synced at once they sat in
/// the disk's queue and cache ahead of the writer's commits, whose fsyncs then had to carry them:
/// commits of 3-7 ms in the last few ms of each such sync, against 0.56 ms for the median commit
/// (a per-batch timer, not in the tree; stop 29). Written back a 50th at a time, each commit's
/// fsync carries only a little of it (PostgreSQL spreads its checkpoints' writes the same way).
/// Only a head start for SQLite's own sync at the finishing step (which is what makes a restart of
/// the WAL safe), so a failure here loses nothing and is only logged.
async fn write_back(database: &Arc<File>, over: Duration) {
    let len = database.metadata().map(|meta| meta.len()).unwrap_or(0);
    let part = len.div_ceil(WRITE_BACK_STEPS).max(1);
    let mut offset = 0;
    while offset < len {
        let file = database.clone();
        let written = tokio::task::spawn_blocking(move || write_out(&file, offset, part)).await;
        if let Ok(Err(err)) = written {
            tracing::warn!(error = %err, "writing back the database file after a checkpoint failed");
            break;
        }
        offset += part;
        tokio::time::sleep(over / WRITE_BACK_STEPS as u32).await;
    }
    sync(database).await;
}

/// Writes the dirty pages of `len` bytes of `file` from `offset` to the disk and waits for them,
/// without a flush of the disk's cache (the next fsync does that).
#[cfg(target_os = "linux")]
fn write_out(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(()); // past any file this store writes: the sync after takes it
    };
    // SAFETY: the descriptor stays open while `file` is borrowed, and sync_file_range only
    // reads its integer arguments.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere there is no range write-back: the sync after the loop writes everything at once.
#[cfg(not(target_os = "linux"))]
fn write_out(_file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    Ok(())
}

/// Flushes what is left of the pages a pass copied, and the disk's cache.
async fn sync(database: &Arc<File>) {
    let database = database.clone();
    let synced = tokio::task::spawn_blocking(move || database.sync_data()).await;
    if let Ok(Err(err)) = synced {
        tracing::warn!(error = %err, "syncing the database file after a checkpoint failed");
    }
}

/// What one `PRAGMA wal_checkpoint(PASSIVE)` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Another checkpoint held the lock, so this one did nothing.
    pub busy: bool,
    /// Frames in the WAL.
    pub wal_frames: i64,
    /// Of those, frames now copied back into the database file.
    pub copied_frames: i64,
}

impl Pass {
    /// Whether the pass ran and left the writer only what came after it (or what a reader's
    /// snapshot still holds) to copy.
    fn copied_any(self) -> bool {
        !self.busy && self.copied_frames > 0
    }
}

/// Copies back what the WAL holds, without waiting for the writer or readers: frames committed
/// meanwhile, or still needed by a reader's snapshot, stay for the next pass.
pub async fn checkpoint(conn: &mut SqliteConnection) -> Result<Pass, sqlx::Error> {
    let (busy, wal_frames, copied_frames): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut *conn)
            .await?;
    Ok(Pass {
        busy: busy != 0,
        wal_frames,
        copied_frames,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};

    use super::*;

    async fn connect(path: &Path) -> SqliteConnection {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .unwrap()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Only the checkpointer and the finishing step copy the WAL back.
            .pragma("wal_autocheckpoint", "0");
        SqliteConnection::connect_with(&options).await.unwrap()
    }

    /// `count` rows on keys spread over the whole index (as the bench's POSTs spread over many
    /// items), each with a 1000-byte value: a commit writes many WAL frames.
    async fn write_rows(conn: &mut SqliteConnection, from: i64, count: i64) {
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
             INSERT INTO t (k, v) SELECT (i * 7919) % 100003, randomblob(1000) FROM n",
        )
        .bind(from)
        .bind(from + count - 1)
        .execute(&mut *conn)
        .await
        .unwrap();
    }

    /// The WAL header's checkpoint sequence number: SQLite adds one each time the WAL starts
    /// over from its first frame.
    fn wal_sequence(wal: &Path) -> u32 {
        let header = std::fs::read(wal).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// The write-back works on the read-only descriptor the checkpointer holds, over every part
    /// of the file (the last one short), paced over the time given, and leaves the file as it was.
    #[tokio::test]
    async fn the_write_back_covers_the_file_through_a_read_only_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let content: Vec<u8> = (0..1_000_003u32).map(|n| n as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let database = Arc::new(File::open(&path).unwrap());
        write_out(&database, 0, 4096).expect("a range write-back on a read-only descriptor");
        write_out(&database, 999_000, 8192).expect("a range reaching past the end of the file");
        let started = std::time::Instant::now();
        write_back(&database, Duration::from_millis(50)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(45),
            "paced over the given time: {:?}",
            started.elapsed()
        );
        sync(&database).await;
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }

    /// Under steady writes a pass leaves frames behind: those committed while it copied. A
    /// reader's snapshot does the same deterministically here (a pass copies nothing past it).
    /// The checkpointer must then ask the writer to finish, and the writer's checkpoint must copy
    /// the rest, after which its next write starts the WAL over. Not shown here: that the restart
    /// needs the finishing step. With the step removed, this test still saw the WAL restart after
    /// the reader ended (unexplained, since SQLite's `walRestartLog` needs every frame copied);
    /// under load, the passes alone never restarted it.
    #[tokio::test]
    async fn the_writers_finishing_step_lets_the_wal_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let wal = dir.path().join("t.db-wal");
        let mut writer = connect(&db).await;
        sqlx::raw_sql(
            "CREATE TABLE t (k INTEGER NOT NULL, v BLOB NOT NULL); CREATE INDEX t_k ON t (k)",
        )
        .execute(&mut writer)
        .await
        .unwrap();
        let checkpointer = Checkpointer::spawn(connect(&db).await, File::open(&db).unwrap(), 100);

        write_rows(&mut writer, 0, 500).await;
        let mut reader = connect(&db).await;
        let mut snapshot = reader.begin().await.unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut *snapshot)
            .await
            .unwrap();
        assert_eq!(seen, 500);
        // Committed past the reader's snapshot: the pass must leave these frames.
        write_rows(&mut writer, 500, 500).await;
        checkpointer.committed();
        let asked = async {
            while !checkpointer.finish_due() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), asked)
            .await
            .expect("the checkpointer never asked the writer to finish");
        snapshot.commit().await.unwrap();
        let sequence = wal_sequence(&wal);

        let pass = checkpoint(&mut writer).await.unwrap();
        assert!(!pass.busy, "{pass:?}");
        assert_eq!(
            pass.copied_frames, pass.wal_frames,
            "the rest is copied: {pass:?}"
        );
        write_rows(&mut writer, 1000, 10).await;
        assert_eq!(wal_sequence(&wal), sequence + 1, "the WAL started over");
        checkpointer.stop().await;

        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut writer)
            .await
            .unwrap();
        assert_eq!(stored, 1010);
    }
}
