//! The raw durable write rate of redb (the embedded store's engine) on this machine's disk, to
//! set next to the platform's ledger appends per second. Values of `value_bytes` (default
//! 1 KiB), every commit with `Durability::Immediate` (an fsync):
//! 1. `sequential`: one writer, one value per write transaction;
//! 2. `grouped`: `concurrency` writers (threads) each hand one value at a time to one writer
//!    thread that takes every waiting request (at most 256, like the store's group commit),
//!    writes them in one transaction, commits once and answers each writer.
//!
//! Usage: `store-bench <dir> [seconds=5] [concurrency=64[,256…]] [value_bytes=1024]` (one
//! grouped run per concurrency).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use redb::{Durability, TableDefinition};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("bench");
const MAX_GROUP: usize = 256;

type Request = (u64, mpsc::SyncSender<()>);

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or_else(|| {
        anyhow::anyhow!("usage: store-bench <dir> [seconds] [concurrency] [value_bytes]")
    })?);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let concurrencies: Vec<usize> = args
        .next()
        .map(|a| a.split(',').filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_else(|| vec![64]);
    let value_bytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("store-bench.redb");
    let _ = std::fs::remove_file(&path);
    let db = Arc::new(
        redb::Builder::new()
            .set_cache_size(64 << 20)
            .create(&path)?,
    );
    let value: Arc<Vec<u8>> = Arc::new((0..value_bytes).map(|i| (i * 31 % 251) as u8).collect());
    let run = Duration::from_secs(seconds);

    // 1. Sequential: one value per durable commit.
    let t0 = Instant::now();
    let mut key = 0u64;
    while t0.elapsed() < run {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut t = tx.open_table(TABLE)?;
            t.insert(key, value.as_slice())?;
        }
        tx.commit()?;
        key += 1;
    }
    let rate = key as f64 / t0.elapsed().as_secs_f64();
    println!("store-bench sequential: {rate:.0} durable commits/s ({value_bytes}-byte values, one per commit)");

    // 2. Grouped: concurrent writers, one writer thread, group commit.
    for concurrency in concurrencies {
        grouped(&db, &value, run, concurrency)?;
    }
    drop(db);
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn grouped(
    db: &Arc<redb::Database>,
    value: &Arc<Vec<u8>>,
    run: Duration,
    concurrency: usize,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<Request>(4096);
    let commits = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, value, commits) = (db.clone(), value.clone(), commits.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(r) => group.push(r),
                        Err(_) => break,
                    }
                }
                let mut wtx = db.begin_write()?;
                wtx.set_durability(Durability::Immediate)?;
                {
                    let mut t = wtx.open_table(TABLE)?;
                    for (k, _) in &group {
                        t.insert(*k, value.as_slice())?;
                    }
                }
                wtx.commit()?;
                commits.fetch_add(1, Ordering::Relaxed);
                for (_, reply) in group {
                    let _ = reply.send(());
                }
            }
            Ok(())
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let writers: Vec<_> = (0..concurrency as u64)
        .map(|w| {
            let (tx, stop, written) = (tx.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let (rtx, rrx) = mpsc::sync_channel(1);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = ((concurrency as u64) << 48) + (w << 32) + n;
                    if tx.send((key, rtx.clone())).is_err() || rrx.recv().is_err() {
                        break;
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    drop(tx);
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    writer.join().expect("writer thread")?;
    let (n, c) = (
        written.load(Ordering::Relaxed),
        commits.load(Ordering::Relaxed),
    );
    println!(
        "store-bench grouped: {:.0} durable values/s in {:.0} commits/s ({concurrency} writers, {:.1} values per commit)",
        n as f64 / elapsed,
        c as f64 / elapsed,
        n as f64 / c.max(1) as f64
    );
    Ok(())
}
