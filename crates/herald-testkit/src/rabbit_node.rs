//! A RabbitMQ node of a test's own, to kill and start again: fault tests must never stop the
//! machine's shared broker on 5672. The recipe is the one in ../shared/LOCAL_SERVICES.md: its
//! own AMQP and distribution ports, config file and data directory (owned by the `rabbitmq`
//! user, which the server drops to), started with `rabbitmq-server -detached`.
//!
//! Quorum queues and persistent messages live in the data directory, so a node killed with
//! SIGKILL and started again has them back, as a production broker would.

use std::path::PathBuf;
use std::process::Command;

use crate::net::{accepts, free_port};
use std::time::{Duration, Instant};

pub struct RabbitNode {
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    node: String,
}

impl RabbitNode {
    /// Starts a fresh node and waits until it takes connections.
    pub fn start(test: &str) -> RabbitNode {
        let port = free_port();
        let dist_port = free_port();
        let short: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        let node = format!("herald-{short}-{port}@localhost");
        let dir = std::env::temp_dir().join(format!("herald-rmq-{short}-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnesia")).expect("node directory");
        std::fs::create_dir_all(dir.join("log")).expect("node log directory");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("config file");
        let owned = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(owned.success(), "chown {} to rabbitmq", dir.display());
        let node = RabbitNode {
            dir,
            port,
            dist_port,
            node,
        };
        node.boot();
        node
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes this (fresh) node a member of `other`'s cluster, as the recipe in
    /// ../shared/LOCAL_SERVICES.md does: stop the app, join, start it again. Quorum queues
    /// declared afterwards have a member on every node of the cluster.
    pub fn join(&self, other: &RabbitNode) {
        self.ctl(&["stop_app"]);
        self.ctl(&["join_cluster", &other.node]);
        self.ctl(&["start_app"]);
    }

    /// A broker user with every permission on the default vhost: `amqp://name:password@…`.
    pub fn add_user(&self, name: &str, password: &str) -> String {
        self.ctl(&["add_user", name, password]);
        self.ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        format!("amqp://{name}:{password}@127.0.0.1:{}/%2f", self.port)
    }

    fn ctl(&self, args: &[&str]) {
        let out = Command::new("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL, as a crash or an OOM kill: no connection is closed cleanly. Returns once the
    /// port refuses connections.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        // The pid may be another process's by the time this node is dropped.
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while accepts(self.port) {
            assert!(Instant::now() < deadline, "node {} did not die", self.node);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the node again on the same port and data; returns once it takes connections.
    pub fn restart(&self) {
        self.boot();
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
    }

    fn boot(&self) {
        let d = &self.dir;
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_BASE", d)
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .status()
            .expect("rabbitmq-server (Debian's rabbitmq-server package)");
        assert!(status.success(), "rabbitmq-server -detached failed");
        // `rabbitmqctl await_startup` fails until the node has registered; the port is the
        // honest sign.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !accepts(self.port) {
            assert!(
                Instant::now() < deadline,
                "node {} did not open port {} (logs in {})",
                self.node,
                self.port,
                d.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
