//! A real SMTP server for tests: `scripts/smtp_sink.py` (Python's aiosmtpd), started on a
//! free loopback port, writing each accepted mail to a Maildir. Recipients choose faults by
//! their local part: `tempfail…` gets 451, `nosuchuser…` 550, `reject…` 554 at DATA.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct SmtpSink {
    port: u16,
    maildir: PathBuf,
    child: Option<Child>,
}

impl SmtpSink {
    /// Starts the server and waits until it accepts connections.
    pub async fn start() -> SmtpSink {
        let port = free_port();
        let maildir =
            std::env::temp_dir().join(format!("herald-smtp-{}", uuid::Uuid::new_v4().simple()));
        let mut sink = SmtpSink {
            port,
            maildir,
            child: None,
        };
        sink.spawn();
        sink
    }

    fn spawn(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/smtp_sink.py");
        let child = Command::new("python3")
            .arg(script)
            .args(["--port", &self.port.to_string(), "--maildir"])
            .arg(&self.maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/services.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the SMTP sink did not start on port {}", self.port);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server: connections are refused until [`SmtpSink::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and Maildir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Every accepted mail, raw (headers and body).
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for entry in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(entry.path()) {
                        out.push(text);
                    }
                }
            }
        }
        out
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
