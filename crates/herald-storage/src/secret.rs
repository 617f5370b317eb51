//! Random tokens shown once (API keys, link codes) and the hashes stored in their place.

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};

/// A new API key: `hk_` and 40 random characters (about 238 bits). The prefix makes leaked
/// keys easy to find with secret scanners.
pub fn new_api_key() -> String {
    format!("hk_{}", random_text(40))
}

/// A link code a person sends to a chat bot (R5), usually by a link or a paste: 26
/// characters of 32 unambiguous ones, 130 bits, so guessing one is hopeless however many
/// tries the bots allow (issue #17; it was 8 characters, 40 bits).
pub fn new_link_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..LINK_CODE_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A code a person types back from an SMS or a chat message: six digits. Guessing needs a
/// million tries against five attempts per code and a few codes per day.
pub fn new_numeric_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

/// A token mailed inside a link: 32 characters of 62 (about 190 bits), so the link alone
/// proves that its holder read the mail.
pub fn new_link_token() -> String {
    random_text(32)
}

/// The length of a link code.
pub const LINK_CODE_LEN: usize = 26;

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

/// What is stored for a short code: HMAC-SHA-256 under a server secret that is not in the
/// database, so a copy of the database alone does not let anyone try all short codes.
pub fn keyed_hash(key: &[u8], token: &str) -> Vec<u8> {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC hashes a long key and pads a short one: no length is refused.
        Err(_) => unreachable!("HMAC takes a key of any length"),
    };
    mac.update(token.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Compares two hashes in constant time: how long a wrong guess takes says nothing about
/// how close it was.
pub fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        assert_eq!(new_link_code().len(), LINK_CODE_LEN);
    }

    #[test]
    fn codes_and_keyed_hashes() {
        let code = new_numeric_code();
        assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(new_link_token().len(), 32);
        let (a, b) = (keyed_hash(b"one", &code), keyed_hash(b"two", &code));
        assert_ne!(a, b, "the key changes the hash");
        assert!(same_hash(&a, &keyed_hash(b"one", &code)));
        assert!(!same_hash(&a, &b));
        assert!(!same_hash(&a, &a[..31]));
    }
}
