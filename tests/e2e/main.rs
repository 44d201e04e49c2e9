//! End-to-end tests over real `stoa` processes.

mod crash;
mod support;
