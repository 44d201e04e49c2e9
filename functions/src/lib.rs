//! SDK for Stoa function workers (being written).
