//! Shared helpers: paths, the `stoa` binary, a small deterministic RNG.

use std::path::PathBuf;
use std::process::Command;

pub fn stoa() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stoa"));
    c.current_dir(repo());
    c
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// xorshift64*: enough randomness for kill timings, seeded and printed so
/// a failing run can be replayed with `STOA_TEST_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("STOA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        eprintln!("STOA_TEST_SEED={seed}");
        Rng(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D) % n.max(1)
    }
}

/// A `stoa serve` process on 127.0.0.1 with an ephemeral port; killed
/// (SIGKILL) when dropped, unless stopped first.
pub struct Server {
    pub child: std::process::Child,
    pub addr: String,
    /// `host:port` of the HTTP listener, when `--metrics-listen` was given.
    pub metrics: Option<String>,
    /// `http://host:port` of the web console, when `--http-listen` (or
    /// `--metrics-listen`) was given.
    pub console: Option<String>,
}

pub const TOKEN_A: &str = "token-tenant-a";
pub const TOKEN_B: &str = "token-tenant-b";

impl Server {
    pub fn start(data: &std::path::Path) -> Server {
        Server::start_with(data, &[])
    }

    pub fn start_with(data: &std::path::Path, extra: &[&str]) -> Server {
        Server::start_env(data, extra, &[])
    }

    pub fn start_env(data: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(&["--data".as_ref(), data.as_os_str()], extra, env)
    }

    /// A server on the store `--store` names (`postgres://…`).
    pub fn start_on(store: &str, extra: &[&str]) -> Server {
        Server::spawn(&["--store".as_ref(), store.as_ref()], extra, &[])
    }

    /// A server on `data` listening on `listen` (`127.0.0.1:PORT`): to
    /// restart one where its workers expect it.
    pub fn start_listening(data: &std::path::Path, listen: &str) -> Server {
        Server::spawn_at(listen, &["--data".as_ref(), data.as_os_str()], &[], &[])
    }

    fn spawn(store: &[&std::ffi::OsStr], extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_at("127.0.0.1:0", store, extra, env)
    }

    fn spawn_at(listen: &str, store: &[&std::ffi::OsStr], extra: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut child = stoa()
            .args(["serve", "--listen", listen, "--token", &format!("a={TOKEN_A}"), "--token", &format!("b={TOKEN_B}")])
            .args(store)
            .args(extra)
            .envs(env.iter().copied())
            .env("STOA_LOG", std::env::var("STOA_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn stoa serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The metrics and console addresses come first, if at all.
            let (mut metrics, mut console) = (None, None);
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("metrics listening on ") {
                    metrics = Some(a.to_string());
                }
                if let Some(a) = line.strip_prefix("console on ") {
                    console = Some(a.trim_end_matches('/').to_string());
                }
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send((a.to_string(), metrics.take(), console.take()));
                }
            }
        });
        let (addr, metrics, console) =
            rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the server did not start within 30 s");
        Server { child, addr: format!("http://{addr}"), metrics, console }
    }

    /// SIGKILL, then wait.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful), then wait.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY-free: `kill` the command, as any shell would.
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The example worker binary, built on first use (it belongs to another
/// package, so this test binary does not build it by itself).
pub fn worker_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "stoa-functions", "--bin", "stoa-worker-media"])
                .current_dir(repo())
                .status()
                .expect("cargo build");
            assert!(status.success(), "building stoa-worker-media failed");
            PathBuf::from(env!("CARGO_BIN_EXE_stoa")).with_file_name("stoa-worker-media")
        })
        .clone()
}

/// The Python worker's interpreter; `functions/python/setup.sh` makes it
/// (the README's test command runs it first).
pub fn python() -> PathBuf {
    let p = repo().join("functions/python/.venv/bin/python");
    assert!(p.exists(), "{} is missing: run functions/python/setup.sh (the README's test command does)", p.display());
    p
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
