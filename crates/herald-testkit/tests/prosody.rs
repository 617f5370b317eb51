//! The tests' Prosody (scripts/prosody.sh) against the testkit's view of it: accounts
//! registered through the testkit log in with their passwords over a raw XMPP stream
//! (SASL PLAIN on plain TCP, as the server allows on loopback), and wrong passwords do not.

// Helpers outside #[test] functions unwrap too: a broken fixture fails the test on the spot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_testkit::prosody::Prosody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn registered_accounts_log_in_with_their_passwords() {
    let prosody = Prosody::local();
    let alice = prosody.register_unique("alice").await;
    let bob = prosody.register_unique("bob").await;
    assert_ne!(alice.username, bob.username);
    assert_eq!(alice.jid, format!("{}@localhost", alice.username));

    for account in [&alice, &bob] {
        assert_eq!(
            sasl_plain(&prosody, &account.username, &account.password).await,
            Login::Success,
            "{}",
            account.jid
        );
    }
    assert_eq!(
        sasl_plain(&prosody, &alice.username, &bob.password).await,
        Login::Failure
    );

    prosody.unregister(&alice).await;
    prosody.unregister(&bob).await;
    assert_eq!(
        sasl_plain(&prosody, &alice.username, &alice.password).await,
        Login::Failure
    );
}

#[tokio::test]
async fn the_bot_account_logs_in() {
    let prosody = Prosody::local();
    let (jid, password) = Prosody::bot();
    let username = jid.strip_suffix("@localhost").unwrap();
    assert_eq!(
        sasl_plain(&prosody, username, &password).await,
        Login::Success
    );
}

#[derive(Debug, PartialEq, Eq)]
enum Login {
    Success,
    Failure,
}

/// Opens a client stream, waits for the features (which must offer PLAIN), and answers
/// with `\0username\0password`.
async fn sasl_plain(prosody: &Prosody, username: &str, password: &str) -> Login {
    let mut stream = TcpStream::connect((prosody.host.as_str(), prosody.port))
        .await
        .unwrap();
    let header = format!(
        "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams'>",
        prosody.domain
    );
    stream.write_all(header.as_bytes()).await.unwrap();
    let features = read_until(&mut stream, &["</stream:features>"]).await;
    assert!(
        features.contains("<mechanism>PLAIN</mechanism>"),
        "{features}"
    );

    let auth = base64(format!("\0{username}\0{password}").as_bytes());
    let request =
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>");
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until(&mut stream, &["<success", "</failure>"]).await;
    if answer.contains("<success") {
        Login::Success
    } else {
        Login::Failure
    }
}

/// Reads until one of `ends` has arrived, within 5 s.
async fn read_until(stream: &mut TcpStream, ends: &[&str]) -> String {
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !ends.iter().any(|end| text.contains(end)) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed the stream after: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {ends:?} from the server within 5 s; got: {text}"));
    text
}

/// Standard base64 with padding; the one encoding SASL needs here.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_rfc_4648_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}
