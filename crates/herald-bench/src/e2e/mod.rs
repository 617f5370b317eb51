//! The parts of `bench-e2e` (`src/bin/bench-e2e.rs`).

pub mod db;
pub mod rest;
pub mod runs;
pub mod system;
