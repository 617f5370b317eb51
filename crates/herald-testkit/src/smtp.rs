//! A real SMTP server for tests: `scripts/smtp_sink.py` (Python's aiosmtpd), started on a
//! free loopback port, writing each accepted mail to a Maildir. Recipients choose faults by
//! their local part: `tempfail…` gets 451, `nosuchuser…` 550, `reject…` 554 at DATA.
//!
//! [`SmtpSink::start_with`] makes it a relay as the real ones are: STARTTLS or implicit TLS
//! with a certificate, and a required login. [`TestCertificates`] makes a throwaway CA and a
//! certificate for `127.0.0.1` / `localhost` to give it (with the `openssl` command).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::free_port;

pub struct SmtpSink {
    port: u16,
    maildir: PathBuf,
    /// The TLS and login arguments, kept for [`SmtpSink::restart`].
    extra_args: Vec<OsString>,
    child: Option<Child>,
}

/// How the sink does TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkTlsMode {
    /// Offers STARTTLS and refuses MAIL before it.
    Starttls,
    /// TLS from the first byte (port 465 style).
    Implicit,
}

/// The certificate the sink presents, and how.
#[derive(Debug, Clone)]
pub struct SinkTls {
    pub mode: SinkTlsMode,
    /// PEM certificate (chain).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
}

/// What [`SmtpSink::start_with`] adds to a plain sink. The default is a plain sink.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    pub tls: Option<SinkTls>,
    /// `(user, password)` every client must log in with. Needs `tls`: no login in clear text.
    pub auth: Option<(String, String)>,
}

impl SmtpSink {
    /// Starts a plain server and waits until it accepts connections.
    pub async fn start() -> SmtpSink {
        SmtpSink::start_with(SinkOptions::default()).await
    }

    /// Starts a server with TLS and a login as `options` say, and waits until it accepts
    /// connections. A mail that came over TLS or after a login starts with `X-Sink-TLS:
    /// <version>` and `X-Sink-Auth: <user>` in [`SmtpSink::messages`].
    pub async fn start_with(options: SinkOptions) -> SmtpSink {
        let mut extra_args: Vec<OsString> = Vec::new();
        if let Some(tls) = &options.tls {
            let mode = match tls.mode {
                SinkTlsMode::Starttls => "starttls",
                SinkTlsMode::Implicit => "implicit",
            };
            extra_args.extend([
                "--tls-cert".into(),
                tls.cert.clone().into(),
                "--tls-key".into(),
                tls.key.clone().into(),
                "--tls-mode".into(),
                mode.into(),
            ]);
        }
        if let Some((user, password)) = &options.auth {
            extra_args.extend(["--auth".into(), format!("{user}:{password}").into()]);
        }
        let port = free_port();
        let maildir =
            std::env::temp_dir().join(format!("herald-smtp-{}", uuid::Uuid::new_v4().simple()));
        let mut sink = SmtpSink {
            port,
            maildir,
            extra_args,
            child: None,
        };
        sink.spawn();
        sink
    }

    fn spawn(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &self.port.to_string(), "--maildir"])
            .arg(&self.maildir)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/services.sh installs it)");
        for _ in 0..200 {
            // A script that exited (bad arguments, unreadable certificate) will never listen.
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the SMTP sink exited at start ({status}); its stderr says why");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
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

/// A throwaway PKI for TLS tests, in a temporary directory removed on drop: a CA, a server
/// certificate for `127.0.0.1` and `localhost` signed by it, and a second, unrelated CA
/// (what a client that trusts the wrong authority has). ECDSA P-256, valid for two days.
pub struct TestCertificates {
    dir: PathBuf,
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Herald test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl TestCertificates {
    /// Makes the certificates with the `openssl` command.
    pub fn generate() -> TestCertificates {
        let dir =
            std::env::temp_dir().join(format!("herald-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG).expect("write openssl.cnf");
        let certs = TestCertificates { dir };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-noenc",
        ];
        for (name, subject) in [
            ("ca", "/CN=Herald test CA"),
            ("other-ca", "/CN=Unrelated CA"),
        ] {
            certs.openssl(&[
                &[
                    "req",
                    "-x509",
                    "-config",
                    "openssl.cnf",
                    "-extensions",
                    "ca",
                ][..],
                &new_key,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                ],
                &["-days", "2", "-subj", subject],
            ]);
        }
        certs.openssl(&[
            &["req", "-new", "-config", "openssl.cnf"][..],
            &new_key,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]);
        certs.openssl(&[&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "server",
        ][..]]);
        certs
    }

    fn openssl(&self, args: &[&[&str]]) {
        let output = Command::new("openssl")
            .args(args.concat())
            .current_dir(&self.dir)
            .output()
            .expect("the openssl command (apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {:?}: {}",
            args.concat(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The CA that signed [`TestCertificates::server_cert`] (PEM).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing here (PEM).
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server certificate for `127.0.0.1` and `localhost` (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server certificate's private key (PEM, PKCS#8, unencrypted).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The sink's TLS settings with this server certificate.
    pub fn sink_tls(&self, mode: SinkTlsMode) -> SinkTls {
        SinkTls {
            mode,
            cert: self.server_cert(),
            key: self.server_key(),
        }
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
