//! A throwaway PostgreSQL for tests and benchmarks: `initdb` on a temporary
//! directory and `postgres` listening on a Unix socket in it only (no port
//! to collide with, nothing reachable from outside), stopped and deleted on
//! drop. It uses the installed binaries (Debian's `postgresql` package:
//! `/usr/lib/postgresql/<version>/bin`, or `initdb` on the `PATH`); when
//! there are none it fails with a message that says how to install them,
//! so a test that needs PostgreSQL fails rather than skips.
//!
//! PostgreSQL refuses to run as root: as root, the directory is handed to
//! the `postgres` user and the server runs as that user.
//!
//! The cluster's default collation is ICU's English on purpose: it orders
//! `a` before `B`, so a query that forgot `COLLATE "C"` fails the
//! conformance checks instead of passing by luck.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a throwaway server treats durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync` off: for tests, where a crash of the machine loses nothing
    /// anyone keeps. Commits stay synchronous: an asynchronous commit is
    /// lost when the server process dies (its WAL still in shared memory),
    /// which the tests that kill PostgreSQL would rightly report as an
    /// acknowledged turn lost.
    Fast,
    /// As installed (`fsync` on, synchronous commit): for benchmarks.
    Real,
}

pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    durability: Durability,
    child: Option<Child>,
}

const WAIT_READY: Duration = Duration::from_secs(30);

impl TempPostgres {
    /// A new cluster, started.
    pub fn start(durability: Durability) -> Result<TempPostgres, String> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new().prefix("stoa-pg-").tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let owner = if is_root() { Some(postgres_user()?) } else { None };
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid)?;
        }
        let mut pg = TempPostgres { dir, bin, owner, durability, child: None };
        let data = pg.data_dir();
        let out = pg
            .command("initdb")
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
            .args(["--locale-provider=icu", "--icu-locale=en"])
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        pg.restart()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            c.uid(uid).gid(gid);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Starts the server (again, after `kill`), and waits until it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).map_err(|e| format!("log: {e}"))?;
        if let Some((uid, gid)) = self.owner {
            chown(&self.dir.path().join("postgres.log"), uid, gid)?;
        }
        let mut c = self.command("postgres");
        c.arg("-D").arg(self.data_dir());
        c.arg("-k").arg(self.socket_dir());
        c.args(["-c", "listen_addresses=", "-c", "max_connections=200", "-c", "shared_buffers=128MB"]);
        if self.durability == Durability::Fast {
            c.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        }
        c.stdout(log.try_clone().map_err(|e| e.to_string())?).stderr(log);
        let since = Instant::now();
        self.child = Some(c.spawn().map_err(|e| format!("starting postgres: {e}"))?);
        loop {
            let ready = self
                .command("pg_isready")
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-U", "postgres", "-q"])
                .status()
                .map_err(|e| format!("running pg_isready: {e}"))?;
            if ready.success() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // After a kill, the old server's backends hold its shared
                // memory until they notice it is gone: try again meanwhile.
                if since.elapsed() > WAIT_READY {
                    self.child = None;
                    return Err(format!("postgres exited ({status}): {}", self.log_tail()));
                }
                std::thread::sleep(Duration::from_millis(200));
                self.child = Some(c.spawn().map_err(|e| format!("starting postgres: {e}"))?);
                continue;
            }
            if since.elapsed() > WAIT_READY {
                return Err(format!("postgres did not become ready in {WAIT_READY:?}: {}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server and every
    /// process it started: it keeps its connections and answers nothing,
    /// as a server stalled or cut off by the network does.
    pub fn freeze(&self, frozen: bool) {
        let Some(c) = &self.child else { return };
        let pid = c.id().to_string();
        let children = Command::new("pgrep").args(["-P", &pid]).output().map(|o| o.stdout).unwrap_or_default();
        let mut pids = vec![pid];
        pids.extend(String::from_utf8_lossy(&children).split_whitespace().map(str::to_string));
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let _ = Command::new("kill").arg(sig).args(&pids).status();
    }

    /// A `postgresql://` URL of database `db` (see `create_database`),
    /// as `stoa serve --store` takes it: the socket's directory is the
    /// host, percent-encoded.
    pub fn url(&self, db: &str) -> String {
        let dir = self.socket_dir().to_string_lossy();
        let mut host = String::new();
        for b in dir.bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => host.push(b as char),
                _ => host.push_str(&format!("%{b:02X}")),
            }
        }
        format!("postgresql://postgres@{host}/{db}")
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> Result<(), String> {
        let out = self
            .command("psql")
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("creating database {name}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }

    /// Runs SQL on database `db` through `psql` (for tests that tamper).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .command("psql")
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-q", "-At", "-c", sql])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGQUIT: immediate shutdown of the postmaster and its children.
            let _ = Command::new("kill").args(["-QUIT", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The directory of the installed PostgreSQL binaries: the newest version
/// under `/usr/lib/postgresql`, else wherever `initdb` is on the `PATH`.
fn binaries() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
        .ok_or_else(|| {
            "PostgreSQL's server binaries (initdb, postgres) are not installed: \
             run `apt-get install -y postgresql` (Debian), or put them on the PATH"
                .to_string()
        })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The uid and gid of the `postgres` user, which the server runs as when
/// the tests run as root.
fn postgres_user() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .ok_or_else(|| {
            "running as root, PostgreSQL needs a `postgres` user to run as (the Debian package makes it)".into()
        })
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))
}
