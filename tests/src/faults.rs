//! A PostgreSQL and a Redis of a test's own, on free ports in a temporary
//! directory, that the test may stop, kill and restart without touching
//! anything else on the machine (the shared servers other tests use stay
//! up). Anything missing fails the test with a message saying what to
//! install: a fault test that cannot run must not pass silently.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{Process, restartable_port};

/// The directory holding `initdb` and `pg_ctl`: `PG_BIN` when set, else
/// the newest `/usr/lib/postgresql/*/bin`.
fn postgres_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let version = entry.file_name().to_str()?.parse().ok()?;
                    Some((version, entry.path().join("bin")))
                })
                .filter(|(_, bin)| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "this fault test needs PostgreSQL's server binaries (initdb, pg_ctl): install \
             postgresql, or set PG_BIN to the directory that holds them"
        )
    })
}

/// Whether this process runs as root, which PostgreSQL refuses: its
/// commands then run as the `postgres` user.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL server of the test's own. Stopped when dropped.
pub struct OwnPostgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl OwnPostgres {
    /// Creates a cluster in a temporary directory and starts it on a free
    /// port (trust authentication, user `postgres`, loopback only).
    pub fn start() -> OwnPostgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the PostgreSQL directory failed");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let server = OwnPostgres {
            data,
            log,
            bin,
            as_postgres,
            port: restartable_port(),
            _dir: dir,
        };
        let data = server.data.to_string_lossy().into_owned();
        server.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        server.start_again();
        server
    }

    /// The admin URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let binary = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        let output = command
            .args(args)
            .current_dir("/")
            .output()
            .unwrap_or_else(|err| panic!("{}: {err}", binary.display()));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_again(&self) {
        let data = self.data.to_string_lossy().into_owned();
        let log = self.log.to_string_lossy().into_owned();
        let socket_dir = self.data.to_string_lossy().into_owned();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {socket_dir} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=100",
            self.port
        );
        self.pg(
            "pg_ctl",
            &[
                "start", "-w", "-t", "60", "-D", &data, "-l", &log, "-o", &options,
            ],
        );
    }

    /// Stops the server the way an operator's restart does: connections
    /// are cut, in-flight transactions roll back.
    pub fn stop(&self) {
        self.stopper()();
    }

    /// [`OwnPostgres::stop`] as a function to run on another thread.
    pub fn stopper(&self) -> impl FnOnce() + Send + 'static {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data.to_string_lossy().into_owned();
        let as_postgres = self.as_postgres;
        move || {
            let mut command = if as_postgres {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(&pg_ctl);
                command
            } else {
                Command::new(&pg_ctl)
            };
            let output = command
                .args(["stop", "-w", "-m", "fast", "-D", &data])
                .current_dir("/")
                .output()
                .expect("pg_ctl");
            assert!(
                output.status.success(),
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, dir: &Path, name: &str) -> String {
        let (ok, _, stderr) = crate::run(
            Path::new("psql"),
            &[&self.url(), "-q", "-c", &format!("CREATE DATABASE {name}")],
            dir,
            &[],
        );
        assert!(ok, "psql is required for this test: {stderr}");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().into_owned();
        let binary = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        let _ = command
            .args(["stop", "-m", "immediate", "-D", &data])
            .current_dir("/")
            .output();
    }
}

/// A Redis server of the test's own (no persistence). Killed when dropped.
pub struct OwnRedis {
    process: Option<Process>,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl OwnRedis {
    /// Starts `redis-server` on a free port.
    pub fn start(dir: &Path) -> OwnRedis {
        let mut redis = OwnRedis {
            process: None,
            dir: dir.to_owned(),
            port: restartable_port(),
        };
        redis.start_again();
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) and waits until it accepts connections.
    pub fn start_again(&mut self) {
        let port = self.port.to_string();
        let found = Command::new("redis-server").arg("--version").output();
        assert!(
            found.is_ok_and(|out| out.status.success()),
            "this fault test needs redis-server on the PATH: install redis"
        );
        let process = Process::start(
            Path::new("redis-server"),
            &[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                "",
            ],
            &self.dir,
            &[],
        );
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (its data goes with it, as in a restart without
    /// persistence).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}
