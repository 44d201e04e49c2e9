//! End-to-end tests over real `stoa` processes.

mod always_on;
mod bench_programs;
mod cancel;
mod cli;
mod cli_explains;
mod client;
#[cfg(target_os = "linux")]
mod cluster;
mod console;
mod crash;
mod dag_ops;
mod dags;
mod docs;
mod examples;
mod explain;
mod fuzz;
mod hostile;
mod local_run;
mod metrics;
#[cfg(target_os = "linux")]
mod postgres;
mod protocol;
mod python_sdk;
mod schedules;
mod server;
mod server_crash;
#[cfg(target_os = "linux")]
mod storage;
mod support;
mod traces;
mod workers;
