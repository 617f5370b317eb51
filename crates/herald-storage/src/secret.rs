//! Random tokens shown once (API keys, link codes) and the hashes stored in their place.

use rand::Rng;
use sha2::{Digest, Sha256};

/// A new API key: `hk_` and 40 random characters (about 238 bits). The prefix makes leaked
/// keys easy to find with secret scanners.
pub fn new_api_key() -> String {
    format!("hk_{}", random_text(40))
}

/// A link code a person types into a chat (R5): short, unambiguous characters, single-use and
/// short-lived, so 8 characters (about 40 bits) suffice.
pub fn new_link_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// What is stored instead of the token. SHA-256 is enough for long random tokens (nothing to
/// brute-force) and keeps the per-request check to one indexed lookup.
pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The first characters of a key, stored and shown so people can tell their keys apart.
pub fn display_prefix(token: &str) -> String {
    token.chars().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hashed_consistently() {
        let (a, b) = (new_api_key(), new_api_key());
        assert_ne!(a, b);
        assert!(a.starts_with("hk_") && a.len() == 43);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 32);
        assert_eq!(new_link_code().len(), 8);
    }
}
