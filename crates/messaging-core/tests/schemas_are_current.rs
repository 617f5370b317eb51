//! The committed JSON Schemas in `docs/schemas/` must match the types. Run with
//! `HERALD_UPDATE_SCHEMAS=1` (or `just schemas`) to rewrite them after changing a type.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[test]
fn committed_schemas_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas");
    let update = std::env::var_os("HERALD_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (file, schema) in messaging_core::schema::all() {
        let path = dir.join(file);
        let wanted = messaging_core::schema::render(&schema);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, wanted).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(wanted.as_str()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas in docs/schemas: {stale:?}; run `just schemas` and commit the result"
    );
}
