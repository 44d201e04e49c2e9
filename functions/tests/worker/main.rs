//! Tests of the worker SDK and the example workers against a fake Stoa
//! server in the test process (loopback only, every wait bounded).

mod binaries;
mod fake;
mod sdk;
