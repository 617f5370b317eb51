//! Nothing here: this crate holds the end-to-end tests in `tests/`, which need every service
//! crate at once and so belong to none of them.
