//! Engine nodes in one test process, sharing the log, the store and the cache as separate
//! processes would share Kafka, ScyllaDB and Redis. A node can be stopped gracefully or killed:
//! a kill drops the node's work wherever it is (mid-batch, before its commit), leaving the group
//! without any of the shutdown path, which is what `kill -9` does to a process.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use loyalty_core::engine::{Engine, EngineConfig};
use loyalty_core::ports::{EventLog, HotCache, StateStore};
use loyalty_core::programs::ProgramCache;
use loyalty_core::replies::{ReplySink, ReplyWaiters};
use tokio::sync::{oneshot, watch};

/// One engine node on its own thread and actix system.
pub struct EngineNode {
    pub name: String,
    shutdown: watch::Sender<bool>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub ready: Arc<AtomicBool>,
}

impl EngineNode {
    pub fn start(
        name: &str,
        log: Arc<dyn EventLog>,
        store: Arc<dyn StateStore>,
        cache: Arc<dyn HotCache>,
        config: EngineConfig,
    ) -> EngineNode {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (kill, kill_rx) = oneshot::channel::<()>();
        let ready = Arc::new(AtomicBool::new(false));
        let engine = Engine {
            log,
            programs: Arc::new(ProgramCache::new(Arc::clone(&store))),
            store,
            cache,
            replies: ReplyWaiters::new() as Arc<dyn ReplySink>,
            config,
            ready: Arc::clone(&ready),
        };
        let thread = std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    tokio::select! {
                        r = engine.run(shutdown_rx) => {
                            if let Err(e) = r {
                                eprintln!("engine failed: {e}");
                            }
                        }
                        _ = kill_rx => {}
                    }
                });
            })
            .expect("engine thread");
        EngineNode {
            name: name.to_owned(),
            shutdown,
            kill: Some(kill),
            thread: Some(thread),
            ready,
        }
    }

    /// Drops the node's work wherever it is: no drain, no commit, no goodbye.
    pub fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Finishes the current batch, commits, leaves the group.
    pub fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EngineNode {
    fn drop(&mut self) {
        self.kill();
    }
}
