//! A PostgreSQL cluster of a test's own, to stop, crash and start again: fault tests must never
//! stop the machine's shared cluster on 5432. The recipe is the one in
//! ../shared/LOCAL_SERVICES.md: `initdb -A trust` and `pg_ctl start` on a free port, with the
//! socket in the data directory's parent, run as the `postgres` user (PostgreSQL refuses
//! root).
//!
//! The data survives [`PgNode::crash`] (SIGKILL of the postmaster, then the server's own crash
//! recovery at the next start), as it would in production.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::net::{accepts, free_port};
use std::time::{Duration, Instant};

pub struct PgNode {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl PgNode {
    /// Creates a fresh cluster in a temporary directory and starts it.
    pub fn start(name: &str) -> PgNode {
        let bin = pg_bin_dir();
        let port = free_port();
        let short: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        let dir = std::env::temp_dir().join(format!("herald-pg-{short}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("cluster directory");
        let owned = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(owned.success(), "chown {} to postgres", dir.display());
        let node = PgNode { dir, port, bin };
        let init = node
            .as_postgres(&node.bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(node.data())
            .output()
            .expect("initdb (Debian's postgresql package)");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        node.boot();
        node
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database (as `createdb` would).
    pub fn create_database(&self, name: &str) {
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fast shutdown: the server ends every session and stops cleanly.
    pub fn stop(&self) {
        let out = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .args(["-m", "fast", "-w", "-D"])
            .arg(self.data())
            .arg("stop")
            .output()
            .expect("pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL of the postmaster, as a crash or an OOM kill. Returns once the port refuses
    /// connections. The backends notice their postmaster is gone and exit by themselves.
    pub fn crash(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while accepts(self.port) {
            assert!(Instant::now() < deadline, "PostgreSQL did not die");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the cluster again on the same port and data; returns once it takes connections.
    /// After a crash, backends that outlived their postmaster hold its shared memory until
    /// they notice and exit, and a start refuses meanwhile: so it is tried for a while.
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_boot() {
                Ok(()) => return,
                Err(error) if Instant::now() >= deadline => panic!("{error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pid(&self) -> Option<String> {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        pid_file
            .lines()
            .next()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
    }

    fn boot(&self) {
        if let Err(error) = self.try_boot() {
            panic!("{error}");
        }
    }

    fn try_boot(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let out = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .arg("-D")
            .arg(self.data())
            .arg("start")
            .output()
            .expect("pg_ctl start");
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "pg_ctl start: {}{} (log: {})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.dir.join("server.log").display()
        ))
    }

    /// A command run as the `postgres` user when this process is root, as itself otherwise.
    fn as_postgres(&self, program: &Path) -> Command {
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        let _ = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/usr/lib/postgresql/<newest>/bin`, where Debian keeps `initdb` and `pg_ctl` (not on PATH).
fn pg_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .expect("/usr/lib/postgresql (Debian's postgresql package)")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("initdb under /usr/lib/postgresql/<version>/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}
