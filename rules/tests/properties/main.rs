//! Property tests of everything `stoa-rules` decodes from tenants: rule
//! files and whole packs, `pack.toml`, cron expressions and time zones,
//! test files, facts JSON and values.
//!
//! Every input is hostile: each property runs its case on a thread with a
//! normal 2 MiB stack (an unbounded recursion crashes the test binary) and
//! a deadline (an endless loop fails the case). `PROPTEST_CASES=N` runs N
//! cases of every property instead of each one's default (see
//! docs/ARCHITECTURE.md, Tests).

mod cron;
mod json;
mod manifest;
mod mutate;
mod packs;
mod support;
