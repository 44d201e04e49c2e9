//! End-to-end tests over real `stoa` processes.

mod bench_programs;
mod client;
mod crash;
mod docs;
mod examples;
mod schedules;
mod server;
mod server_crash;
mod support;
mod workers;
