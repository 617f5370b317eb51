//! The `herald` command's library side: what the commands do, so tests can run them against
//! the real broker. `main.rs` parses arguments and prints.

pub mod dead_letters;
