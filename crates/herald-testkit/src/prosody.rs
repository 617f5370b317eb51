//! The real XMPP server of the XMPP tests: the Prosody 0.12 that `scripts/prosody.sh` installs
//! and starts on 127.0.0.1 (port `HERALD_XMPP_TEST_PORT`, 15222 by default), with
//! multi-user chat on `conference.localhost` and the bot account `herald@localhost`.
//!
//! Unlike the fakes, one server serves every test: tests keep apart by registering accounts
//! of their own ([`Prosody::register_unique`]) and choosing unique room names.
//!
//! Accounts are made with `prosodyctl register`, which writes to Prosody's storage directly,
//! so it needs no XMPP client here, works whether or not the server runs, and the server
//! accepts the account at once.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// The default port; `scripts/prosody.sh` uses the same one.
pub const DEFAULT_PORT: u16 = 15222;
/// The bot's password when `HERALD_XMPP_TEST_BOT_PASSWORD` is unset, as in the script.
pub const DEFAULT_BOT_PASSWORD: &str = "herald-bot-pw";

/// Where the XMPP tests' Prosody listens, and its domains.
#[derive(Debug, Clone)]
pub struct Prosody {
    /// Always 127.0.0.1: the server listens on loopback only.
    pub host: String,
    pub port: u16,
    /// The domain of every account (`user@localhost`).
    pub domain: String,
    /// The multi-user chat service: rooms are `room@conference.localhost`.
    pub muc_domain: String,
}

/// An account registered for one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The bare JID, `username@localhost`.
    pub jid: String,
    pub username: String,
    pub password: String,
}

impl Prosody {
    /// The server `scripts/prosody.sh` started, read from the same environment variables.
    ///
    /// Panics when nothing listens on the port, saying how to start it.
    pub fn local() -> Prosody {
        let port = match std::env::var("HERALD_XMPP_TEST_PORT") {
            Ok(port) => port
                .parse()
                .unwrap_or_else(|_| panic!("HERALD_XMPP_TEST_PORT is not a port: {port:?}")),
            Err(_) => DEFAULT_PORT,
        };
        let prosody = Prosody {
            host: "127.0.0.1".to_owned(),
            port,
            domain: "localhost".to_owned(),
            muc_domain: "conference.localhost".to_owned(),
        };
        let addr = (std::net::Ipv4Addr::LOCALHOST, port).into();
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            panic!(
                "no XMPP server on 127.0.0.1:{port}: run scripts/prosody.sh (scripts/services.sh \
                 and `just test` run it) to install and start the tests' Prosody"
            );
        }
        prosody
    }

    /// The bot account the script registers: `herald@localhost` and its password.
    pub fn bot() -> (String, String) {
        let password = std::env::var("HERALD_XMPP_TEST_BOT_PASSWORD")
            .unwrap_or_else(|_| DEFAULT_BOT_PASSWORD.to_owned());
        ("herald@localhost".to_owned(), password)
    }

    /// Registers a new account named `prefix` plus a random suffix (`alice-3f9c2a7b01de`),
    /// with a random password. The prefix is lowercased, as XMPP does with user names.
    ///
    /// One registration takes about 50 ms (measured on the development machine: one
    /// `prosodyctl` process, mostly Lua start-up and the password's PBKDF2), so tests may
    /// register freely; registrations from parallel tests do not block each other.
    pub async fn register_unique(&self, prefix: &str) -> Account {
        let username = unique_username(prefix);
        let password = uuid::Uuid::new_v4().simple().to_string();
        prosodyctl(&["register", &username, &self.domain, &password]).await;
        Account {
            jid: format!("{username}@{}", self.domain),
            username,
            password,
        }
    }

    /// Deletes an account, for a test that wants to leave nothing behind. Accounts left over
    /// are harmless: their names never repeat.
    pub async fn unregister(&self, account: &Account) {
        prosodyctl(&["unregister", &account.username, &self.domain]).await;
    }
}

/// The config file `scripts/prosody.sh` writes, as an absolute path: prosodyctl changes
/// into the data directory before it reads the config.
pub fn config_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("the repository root above crates/herald-testkit");
    root.join(".local/prosody/prosody.cfg.lua")
}

fn unique_username(prefix: &str) -> String {
    let prefix = prefix.to_lowercase();
    assert!(
        !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "an account prefix is letters, digits, '-', '_' or '.': {prefix:?}"
    );
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &suffix[..12])
}

/// Runs `prosodyctl --config <config> ARGS`, panicking with its output when it fails.
///
/// Prosody's files belong to the user `prosody`: as root, prosodyctl switches to that user
/// itself; anyone else goes through `sudo -n` (which fails at once rather than asking).
async fn prosodyctl(args: &[&str]) -> Output {
    let config = config_path();
    assert!(
        config.is_file(),
        "{} is missing: run scripts/prosody.sh first",
        config.display()
    );
    let mut command = if is_root() {
        Command::new("prosodyctl")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "prosodyctl"]);
        sudo
    };
    let output = command
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .await
        .expect("prosodyctl (scripts/prosody.sh installs it)");
    assert!(
        output.status.success(),
        "prosodyctl {} failed ({}): {}{}",
        args.first().copied().unwrap_or_default(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

/// Whether this process runs as root, from /proc (no libc dependency for one check).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_usernames_keep_the_lowercased_prefix_and_never_repeat() {
        let first = unique_username("Alice");
        let second = unique_username("Alice");
        assert!(first.starts_with("alice-"), "{first}");
        assert_eq!(first.len(), "alice-".len() + 12);
        assert_ne!(first, second);
    }

    #[test]
    #[should_panic(expected = "an account prefix")]
    fn a_prefix_with_characters_a_jid_would_escape_is_refused() {
        unique_username("a@b");
    }

    #[test]
    fn the_config_path_is_absolute_and_under_the_repository() {
        let path = config_path();
        assert!(path.is_absolute());
        assert!(path.ends_with(".local/prosody/prosody.cfg.lua"));
        let root = path.ancestors().nth(3).unwrap();
        assert!(
            root.join("scripts/prosody.sh").is_file(),
            "{}",
            root.display()
        );
    }
}
