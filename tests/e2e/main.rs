//! End-to-end tests over real `stoa` processes.

mod crash;
mod docs;
mod examples;
mod support;
