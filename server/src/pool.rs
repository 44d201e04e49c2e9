//! The threads that run tenant code: turns, pack builds, upgrade previews.
//! Never the async runtime's threads, so a runaway turn cannot stall I/O,
//! health checks, other tenants or shutdown.
//!
//! A few threads with stacks sized for the deepest script the ceilings
//! allow (see `stack_bytes`). Jobs queue per tenant and are taken round
//! robin across tenants; a tenant runs at most its share of the threads at
//! once, so the others always find one free. A job that panics fails alone.
//! A thread whose job failed is replaced, which hands its stack (that a
//! deep script may have touched) back to the system.
//!
//! The simulation runs the same jobs inline (`Pool::inline`): on the task
//! that awaits them, after a pause it chooses, so that nothing runs on a
//! thread of its own and a run replays exactly.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use stoa_rules::limits::Limits;
use tokio::sync::oneshot;

pub struct Options {
    pub threads: usize,
    /// Threads one tenant may keep busy at once, unless `shares` says.
    pub share: usize,
    pub shares: HashMap<String, usize>,
    pub stack_bytes: usize,
}

/// The stack a turn needs under `ceilings`: a base, plus what the deepest
/// call chain and the longest chain of nested values a script can build
/// within its operations take. Measured per build profile (a debug build's
/// frames are several times larger); `tests::the_stack_holds_the_deepest_scripts_the_ceilings_allow`
/// runs those scripts on a thread of this size.
pub fn stack_bytes(ceilings: &Limits) -> usize {
    let (per_call, per_op) = if cfg!(debug_assertions) { (96 << 10, 320) } else { (16 << 10, 96) };
    (16 << 20)
        + ceilings.max_call_depth.saturating_mul(per_call)
        + (ceilings.max_operations as usize).saturating_mul(per_op)
}

/// A job died with a panic.
#[derive(Debug, thiserror::Error)]
#[error("the job panicked: {0}")]
pub struct Panicked(pub String);

type Job = Box<dyn FnOnce() + Send>;

struct State {
    queues: HashMap<String, VecDeque<Job>>,
    /// Tenants with queued jobs, in the order they are served.
    ready: VecDeque<String>,
    running: HashMap<String, usize>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stop: Arc<AtomicBool>,
    opts: Options,
}

/// A cheap handle to the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Threads(Arc<Shared>),
    #[cfg_attr(not(test), allow(dead_code))] // the simulation's
    Inline {
        stop: Arc<AtomicBool>,
        pace: Pace,
    },
}

/// How long an inline job waits before it runs (virtual time in the
/// simulation), standing for the queue and the thread's work.
pub type Pace = Arc<dyn Fn() -> Duration + Send + Sync>;

thread_local! {
    /// Set by a job that failed: its thread is replaced after it.
    static RETIRE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current pool thread for replacement once its job ends.
pub fn retire_this_thread() {
    RETIRE.with(|r| r.set(true));
}

impl Pool {
    pub fn start(opts: Options) -> std::io::Result<Pool> {
        let threads = opts.threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queues: HashMap::new(),
                ready: VecDeque::new(),
                running: HashMap::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            stop: Arc::new(AtomicBool::new(false)),
            opts,
        });
        for _ in 0..threads {
            spawn_worker(shared.clone())?;
        }
        Ok(Pool { inner: Inner::Threads(shared) })
    }

    /// A pool without threads: each job runs on the task that awaits it,
    /// after the pause `pace` gives (the simulation's).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn inline(pace: Pace) -> Pool {
        Pool { inner: Inner::Inline { stop: Arc::new(AtomicBool::new(false)), pace } }
    }

    /// Runs `f` on a pool thread, in `tenant`'s turn; resolves with its
    /// result, or with the panic that ended it.
    pub fn run<T: Send + 'static>(
        &self,
        tenant: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, Panicked>> {
        let catching = move || {
            std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
                retire_this_thread();
                Panicked(panic_message(&*p))
            })
        };
        let queued = match &self.inner {
            Inner::Threads(shared) => {
                let (tx, rx) = oneshot::channel();
                let job: Job = Box::new(move || {
                    let _ = tx.send(catching());
                });
                {
                    let mut st = shared.state.lock().expect("pool lock");
                    let q = st.queues.entry(tenant.to_string()).or_default();
                    if q.is_empty() {
                        st.ready.push_back(tenant.to_string());
                    }
                    st.queues.get_mut(tenant).expect("just made").push_back(job);
                }
                shared.wake.notify_one();
                Ok(rx)
            }
            Inner::Inline { stop, pace } => Err((stop.clone(), pace.clone(), catching)),
        };
        async move {
            match queued {
                Ok(rx) => rx.await.unwrap_or_else(|_| Err(Panicked("the pool stopped before running the job".into()))),
                Err((stop, pace, job)) => {
                    tokio::time::sleep(pace()).await;
                    stoa_rules::budget::stop_on(stop);
                    let r = job();
                    RETIRE.with(|r| r.set(false));
                    r
                }
            }
        }
    }

    /// Runs `f`, store work too long to block an async thread with, on
    /// tokio's blocking threads; inline in a pool without threads.
    pub async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Panicked> {
        match &self.inner {
            Inner::Threads(_) => tokio::task::spawn_blocking(f).await.map_err(|e| Panicked(e.to_string())),
            Inner::Inline { .. } => {
                std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| Panicked(panic_message(&*p)))
            }
        }
    }

    /// Ends every running and later turn at its next check (a server that
    /// must stop within its grace period).
    pub fn stop_turns(&self) {
        match &self.inner {
            Inner::Threads(shared) => shared.stop.store(true, Ordering::Relaxed),
            Inner::Inline { stop, .. } => stop.store(true, Ordering::Relaxed),
        }
    }

    /// Lets the threads end once the queues are empty.
    pub fn close(&self) {
        if let Inner::Threads(shared) = &self.inner {
            shared.state.lock().expect("pool lock").closed = true;
            shared.wake.notify_all();
        }
    }
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn spawn_worker(shared: Arc<Shared>) -> std::io::Result<()> {
    let stack = shared.opts.stack_bytes;
    std::thread::Builder::new().name("stoa-turns".into()).stack_size(stack).spawn(move || work(shared))?;
    Ok(())
}

/// The next job a thread may take: round robin over tenants with work,
/// skipping those at their share.
fn next_job(st: &mut State, opts: &Options) -> Option<(String, Job)> {
    for _ in 0..st.ready.len() {
        let tenant = st.ready.pop_front()?;
        let share = opts.shares.get(&tenant).copied().unwrap_or(opts.share).max(1);
        let running = st.running.get(&tenant).copied().unwrap_or(0);
        if running >= share {
            st.ready.push_back(tenant);
            continue;
        }
        let q = st.queues.get_mut(&tenant).expect("a ready tenant has a queue");
        let job = q.pop_front().expect("a ready tenant has a job");
        if q.is_empty() {
            st.queues.remove(&tenant);
        } else {
            st.ready.push_back(tenant.clone());
        }
        *st.running.entry(tenant.clone()).or_default() += 1;
        return Some((tenant, job));
    }
    None
}

fn work(shared: Arc<Shared>) {
    stoa_rules::budget::stop_on(shared.stop.clone());
    loop {
        let (tenant, job) = {
            let mut st = shared.state.lock().expect("pool lock");
            loop {
                if let Some(next) = next_job(&mut st, &shared.opts) {
                    break next;
                }
                if st.closed && st.queues.is_empty() {
                    return;
                }
                st = shared.wake.wait(st).expect("pool lock");
            }
        };
        job();
        {
            let mut st = shared.state.lock().expect("pool lock");
            if let Some(n) = st.running.get_mut(&tenant) {
                *n -= 1;
                if *n == 0 {
                    st.running.remove(&tenant);
                }
            }
        }
        // A tenant held at its share may go on now.
        shared.wake.notify_all();
        if RETIRE.with(|r| r.replace(false)) {
            if let Err(e) = spawn_worker(shared.clone()) {
                tracing::error!(error = %e, "could not replace a turn thread; going on with this one");
                continue;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(threads: usize, share: usize, ceilings: &Limits) -> Pool {
        Pool::start(Options { threads, share, shares: HashMap::new(), stack_bytes: stack_bytes(ceilings) }).unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn a_tenant_at_its_share_leaves_a_thread_to_the_others() {
        let p = pool(2, 1, &Limits::default());
        let release = Arc::new(AtomicBool::new(false));
        // Tenant a queues long jobs; they take one thread at a time.
        let mut slow = Vec::new();
        for _ in 0..3 {
            let r = release.clone();
            slow.push(p.run("a", move || {
                while !r.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }));
        }
        // b is served at once, on the other thread.
        assert_eq!(block_on(p.run("b", || 7)).unwrap(), 7);
        release.store(true, Ordering::Relaxed);
        for s in slow {
            block_on(s).unwrap();
        }
    }

    #[test]
    fn a_panicking_job_fails_alone_and_its_thread_is_replaced() {
        let p = pool(1, 1, &Limits::default());
        let e = block_on(p.run("a", || -> u32 { panic!("boom") })).unwrap_err();
        assert_eq!(e.0, "boom");
        assert_eq!(block_on(p.run("a", || 1)).unwrap(), 1);
    }

    /// The scripts that use the most stack per call level and per operation,
    /// at the ceilings, on a pool thread sized by `stack_bytes`: each must
    /// end with a limit error, not overflow the stack. Ceilings lower than
    /// the defaults keep it quick in a debug build; the sizing is linear in
    /// both.
    #[test]
    fn the_stack_holds_the_deepest_scripts_the_ceilings_allow() {
        use stoa_rules::sandbox::{NextIds, Sandbox};
        // Nested arrays and maps cost a size check over the whole value at
        // every level (quadratic), so their depth is bounded by the sizes and
        // the turn's time as much as by operations; small sizes keep it quick.
        let ceilings = Limits {
            max_operations: 150_000,
            max_call_depth: 256,
            max_array_size: 3_000,
            max_map_size: 3_000,
            ..Limits::default_ceilings()
        };
        let p = pool(1, 1, &ceilings);
        let scripts = [
            // Each level of a closure chain is a few operations; dropping
            // the chain recurses once per level.
            "let f = || 1; loop { let g = f; f = || g.call(); }",
            "fn f(x) { f(x + 1) } f(0);",
            "let f = |n, g| g.call(n + 1, g); f.call(0, f);",
            "let a = []; loop { a = [a]; }",
            "let m = #{}; loop { m = #{ a: m }; }",
        ];
        for script in scripts {
            let limits = ceilings.clone();
            let r = block_on(p.run("a", move || {
                let _deadline = stoa_rules::budget::turn(60_000);
                let sb = Sandbox::new(&limits);
                let s = sb.compile(script, &[], false).unwrap();
                sb.run(&s, vec![], NextIds::default()).unwrap_err()
            }));
            let e = r.unwrap();
            assert!(e.limit && !e.message.contains("time limit"), "{script}: {e:?}");
        }
    }
}
