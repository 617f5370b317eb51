//! One Herald service as an operating-system process: the binary `just up` and the deploy
//! files run, with its configuration in the environment, its log in a file, and the signals
//! an orchestrator or a crash sends it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

pub struct ServiceProcess {
    /// The binary's name (`fanout-router`).
    pub binary: String,
    /// The name in the suite's output and log file (`sender-sms-2` for a second replica).
    pub name: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    /// Where it serves `/readyz` (`HERALD_HTTP__ADDR`).
    pub addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl ServiceProcess {
    /// Prepares the process (not started yet): `env` on top of a cleared environment, so an
    /// operator's own `HERALD_*` variables cannot leak into the run.
    pub fn new(
        bin_dir: &Path,
        binary: &str,
        name: &str,
        addr: SocketAddr,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> anyhow::Result<ServiceProcess> {
        let program = bin_dir.join(binary);
        if !program.exists() {
            bail!(
                "{} is missing: build the services first (cargo build --release --bins)",
                program.display()
            );
        }
        Ok(ServiceProcess {
            binary: binary.to_owned(),
            name: name.to_owned(),
            program,
            env,
            addr,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        })
    }

    /// Starts it; its output is appended to its log file.
    pub fn start(&mut self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        writeln!(log, "\n===== chaos: starting {} =====", self.name)?;
        let err = log.try_clone()?;
        let mut command = Command::new(&self.program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HERALD_HTTP__ADDR", self.addr.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("start {}", self.program.display()))?,
        );
        Ok(())
    }

    /// Waits until `/readyz` answers 200; returns how long that took.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.ready().await {
                return Ok(started.elapsed());
            }
            if !self.running() {
                bail!(
                    "{} exited while starting (log: {})",
                    self.name,
                    self.log.display()
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} not ready after {timeout:?} (log: {})",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.addr);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().as_u16() == 200)
    }

    /// Whether the process is still there (it has not exited or been killed).
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, as a crash or an OOM kill; returns once the process is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, as an orchestrator stopping it for a rolling update. Waits up to `wait` for
    /// the exit and returns how long it took and whether it exited with status 0; past
    /// `wait` it is killed, and that is reported as an error.
    pub async fn terminate(&mut self, wait: Duration) -> anyhow::Result<(Duration, bool)> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        let pid = child.id().context("the process has no pid")?;
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed");
        }
        match tokio::time::timeout(wait, child.wait()).await {
            Ok(status) => Ok((started.elapsed(), status?.success())),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!("{} did not exit within {wait:?} of SIGTERM", self.name)
            }
        }
    }

    /// SIGKILL, `pause`, a new start, and its readiness: a crash and the orchestrator's
    /// restart. Returns a note for the scenario's output.
    pub async fn crash_and_restart(
        &mut self,
        pause: Duration,
        ready_within: Duration,
    ) -> anyhow::Result<String> {
        self.kill().await;
        tokio::time::sleep(pause).await;
        self.start()?;
        let ready = self.wait_ready(ready_within).await?;
        Ok(format!(
            "{} killed, started again {:.0}s later, ready {:.1}s after its start",
            self.name,
            pause.as_secs_f64(),
            ready.as_secs_f64()
        ))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}
