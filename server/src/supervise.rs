//! Supervision of Herald's long-lived background tasks (revocation worker, expiry scheduler,
//! reconciler; in Redis mode also the probe, heartbeat, bus and notice listeners, the driver's
//! dispatcher and re-subscriber).
//!
//! A task is given by a factory that makes its future; the [`Supervisor`] runs it in a child
//! task. When that child panics, or returns although it should run forever, the failure is
//! logged, counted in `herald_task_restarts_total{task}` and the factory is called again after
//! a backoff (doubling from `initial` to `max`, back to `initial` once a run lasted `max`).
//! `herald_task_alive{task}` is 1 while a run is under way; [`Supervisor::tasks`] gives each
//! task's state for `/readyz`. Tasks stop when [`Supervisor::shutdown`] is called or the last
//! handle of the supervisor is dropped: every child is owned by an [`AbortOnDrop`] guard, so
//! aborting a supervising task also aborts the child it runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::metrics as m;

/// A task handle that aborts the task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    /// Whether the task ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a supervised task is doing, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// A run is under way.
    Running,
    /// The last run failed; the next starts after the backoff.
    Restarting,
    /// A task meant to finish ([`Supervisor::spawn_until_done`]) finished.
    Done,
    /// Stopped by shutdown.
    Stopped,
}

impl TaskState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => TaskState::Running,
            1 => TaskState::Restarting,
            2 => TaskState::Done,
            _ => TaskState::Stopped,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            TaskState::Running => 0,
            TaskState::Restarting => 1,
            TaskState::Done => 2,
            TaskState::Stopped => 3,
        }
    }
}

/// Restart delays.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Largest delay; a run that lasted this long resets the delay to `initial`.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

struct Entry {
    name: &'static str,
    state: Arc<AtomicU8>,
    restarts: Arc<std::sync::atomic::AtomicU64>,
    handle: AbortOnDrop<()>,
}

struct Inner {
    backoff: Backoff,
    tasks: Mutex<Vec<Entry>>,
}

/// Runs and restarts named background tasks. Cheap to clone; the tasks stop with
/// [`Supervisor::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct Supervisor(Arc<Inner>);

impl Default for Supervisor {
    fn default() -> Self {
        Self::new(Backoff::default())
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.tasks()).finish()
    }
}

/// Whether a task that returned is done (true) or failed (false).
#[derive(Clone, Copy)]
enum OnReturn {
    Restart,
    Done,
}

impl Supervisor {
    /// A supervisor restarting with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self(Arc::new(Inner {
            backoff,
            tasks: Mutex::default(),
        }))
    }

    /// Runs `make()` as task `name` forever: a run that panics or returns is restarted.
    /// `name` is a metric label: a fixed, distinct name per task.
    pub fn spawn<F, Fut>(&self, name: &'static str, make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start(name, make, OnReturn::Restart);
    }

    /// Runs `make()` as task `name` until a run returns (then [`TaskState::Done`]); a run that
    /// panics is restarted.
    pub fn spawn_until_done<F, Fut>(&self, name: &'static str, make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start(name, make, OnReturn::Done);
    }

    fn start<F, Fut>(&self, name: &'static str, make: F, on_return: OnReturn)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let state = Arc::new(AtomicU8::new(TaskState::Running.as_u8()));
        let restarts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let handle = AbortOnDrop(tokio::spawn(supervise(
            name,
            make,
            on_return,
            self.0.backoff,
            state.clone(),
            restarts.clone(),
        )));
        let mut tasks = self.0.tasks.lock();
        debug_assert!(
            tasks.iter().all(|t| t.name != name),
            "task name {name} used twice"
        );
        tasks.push(Entry {
            name,
            state,
            restarts,
            handle,
        });
    }

    /// Every task's state, by name.
    pub fn tasks(&self) -> BTreeMap<&'static str, TaskState> {
        self.0
            .tasks
            .lock()
            .iter()
            .map(|t| (t.name, TaskState::from_u8(t.state.load(Ordering::Acquire))))
            .collect()
    }

    /// How many times task `name` was restarted (`None` when there is no such task).
    pub fn restarts(&self, name: &str) -> Option<u64> {
        self.0
            .tasks
            .lock()
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.restarts.load(Ordering::Relaxed))
    }

    /// Stops every task (aborting its current run); those not done stay listed as
    /// [`TaskState::Stopped`].
    pub fn shutdown(&self) {
        for t in self.0.tasks.lock().iter() {
            if !t.handle.is_finished() {
                t.handle.0.abort();
                metrics::gauge!(m::TASK_ALIVE, "task" => t.name).set(0.0);
                t.state.store(TaskState::Stopped.as_u8(), Ordering::Release);
            }
        }
    }
}

async fn supervise<F, Fut>(
    name: &'static str,
    mut make: F,
    on_return: OnReturn,
    backoff: Backoff,
    state: Arc<AtomicU8>,
    restarts: Arc<std::sync::atomic::AtomicU64>,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let alive = metrics::gauge!(m::TASK_ALIVE, "task" => name);
    let mut delay = backoff.initial;
    loop {
        state.store(TaskState::Running.as_u8(), Ordering::Release);
        alive.set(1.0);
        let started = tokio::time::Instant::now();
        let mut run = AbortOnDrop(tokio::spawn(make()));
        let result = (&mut run.0).await;
        alive.set(0.0);
        let failure = match result {
            Ok(()) => match on_return {
                OnReturn::Done => {
                    state.store(TaskState::Done.as_u8(), Ordering::Release);
                    tracing::debug!(task = name, "background task done");
                    return;
                }
                OnReturn::Restart => "returned".to_owned(),
            },
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            // Cancelled: only an abort does that, and aborts come from shutdown.
            Err(_) => {
                state.store(TaskState::Stopped.as_u8(), Ordering::Release);
                return;
            }
        };
        if started.elapsed() >= backoff.max {
            delay = backoff.initial;
        }
        let n = restarts.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(m::TASK_RESTARTS, "task" => name).increment(1);
        state.store(TaskState::Restarting.as_u8(), Ordering::Release);
        tracing::error!(
            task = name,
            failure = %failure,
            restarts_total = n,
            restart_in_ms = delay.as_millis() as u64,
            "background task failed; restarting it"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn quick() -> Supervisor {
        Supervisor::new(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
    }

    /// Lets the spawned tasks run until they all wait on the (paused) clock.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_restarted_and_counted() {
        let sup = quick();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        sup.spawn("flaky", move || {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= 2 {
                    panic!("run {n} fails");
                }
                std::future::pending::<()>().await;
            }
        });
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sup.tasks()["flaky"], TaskState::Restarting);
        assert_eq!(sup.restarts("flaky"), Some(1));
        // First restart after 100 ms, second after 200 more.
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(sup.restarts("flaky"), Some(2));
        tokio::time::advance(Duration::from_millis(150)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "backoff doubled to 200 ms");
        tokio::time::advance(Duration::from_millis(50)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(sup.tasks()["flaky"], TaskState::Running);
        assert_eq!(sup.restarts("flaky"), Some(2));
        // It stays up.
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_is_restarted_unless_meant_to_finish() {
        let sup = quick();
        let forever = Arc::new(AtomicUsize::new(0));
        let once = Arc::new(AtomicUsize::new(0));
        let (f, o) = (forever.clone(), once.clone());
        sup.spawn("returns", move || {
            let f = f.clone();
            async move {
                f.fetch_add(1, Ordering::SeqCst);
            }
        });
        sup.spawn_until_done("finishes", move || {
            let o = o.clone();
            async move {
                o.fetch_add(1, Ordering::SeqCst);
            }
        });
        settle().await;
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(forever.load(Ordering::SeqCst), 2);
        assert_eq!(sup.restarts("returns"), Some(2));
        assert_eq!(once.load(Ordering::SeqCst), 1);
        assert_eq!(sup.tasks()["finishes"], TaskState::Done);
        assert_eq!(sup.restarts("finishes"), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_is_capped_and_reset_after_a_long_run() {
        let sup = quick();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        // Fails at once five times (100, 200, 400, 800, then capped at 1000 ms), then runs
        // 2 s before failing again: the next delay is back to 100 ms.
        sup.spawn("cycling", move || {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 6 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                if n <= 6 {
                    panic!("run {n}");
                }
                std::future::pending::<()>().await;
            }
        });
        settle().await;
        for (delay_ms, runs_after) in [(100, 2), (200, 3), (400, 4), (800, 5), (1000, 6)] {
            tokio::time::advance(Duration::from_millis(delay_ms - 1)).await;
            settle().await;
            assert_eq!(runs.load(Ordering::SeqCst), runs_after - 1);
            tokio::time::advance(Duration::from_millis(1)).await;
            settle().await;
            assert_eq!(
                runs.load(Ordering::SeqCst),
                runs_after,
                "after {delay_ms} ms"
            );
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(sup.tasks()["cycling"], TaskState::Restarting);
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 7);
        assert_eq!(sup.tasks()["cycling"], TaskState::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_aborts_the_running_child() {
        struct Flag(Arc<AtomicUsize>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let sup = quick();
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        sup.spawn("long", move || {
            let flag = Flag(d.clone());
            async move {
                let _flag = flag;
                std::future::pending::<()>().await;
            }
        });
        settle().await;
        assert_eq!(sup.tasks()["long"], TaskState::Running);
        sup.shutdown();
        settle().await;
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "the child's future was dropped"
        );
        assert_eq!(sup.tasks()["long"], TaskState::Stopped);
    }
}
