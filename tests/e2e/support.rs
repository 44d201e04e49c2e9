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
