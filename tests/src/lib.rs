//! Helpers for tests that run the real binaries as separate processes, the
//! way an operator or a new user would, and talk to them over loopback.

pub mod faults;
pub mod load;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The path of a workspace binary built next to this test executable.
/// `scripts/test` builds every binary before running the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (scripts/test does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A `chat-core` (or other) process whose stderr is collected, killed when
/// dropped.
pub struct Process {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Starts `binary args…` in `dir` with exactly `env` on top of a clean
    /// environment (PATH kept), so no developer variable leaks in.
    pub fn start(binary: &Path, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(binary);
        command
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start process");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Process {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits until a log line contains `needle`, returning that line.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.finish_log();
                panic!(
                    "process exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Once the process has exited: waits until everything it wrote to
    /// stderr is in the log.
    fn finish_log(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.finish_log();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not stop within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.finish_log();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `key=ADDR` from a log line such as
/// `chat-core listening grpc=127.0.0.1:4321 http=127.0.0.1:4322`.
pub fn addr_in(line: &str, key: &str) -> SocketAddr {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .trim_matches(|c| c == ',' || c == '"')
        .parse()
        .unwrap_or_else(|_| panic!("bad {key} address in {line:?}"))
}

/// A minimal HTTP/1.1 request: status code and body.
fn http_request(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// POST a JSON body with a bearer token.
pub fn http_post_json(addr: SocketAddr, path: &str, token: &str, body: &str) -> (u16, String) {
    http_request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"
        ),
        body,
    )
}

/// GET with a bearer token.
pub fn http_get_auth(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nAuthorization: Bearer {token}"),
        "",
    )
}

/// A minimal HTTP/1.1 GET: status code and body. Enough for `/healthz`
/// and `/metrics` without pulling an HTTP client into the build.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, &format!("GET {path} HTTP/1.1"), "")
}

/// Runs a command to completion: exit success, stdout, stderr.
pub fn run(
    binary: &Path,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut command = Command::new(binary);
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run command");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A fresh PostgreSQL database on the test server, dropped with this value.
pub struct PgDatabase {
    admin: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl PgDatabase {
    /// Creates `chat_test_<unique>`; fails the test when PostgreSQL is not
    /// reachable (never a silent skip).
    pub fn create(dir: &Path) -> PgDatabase {
        let admin = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let name = format!("chat_test_{nanos:x}{:x}", std::process::id());
        let (ok, _, stderr) = run(
            Path::new("psql"),
            &[&admin, "-q", "-c", &format!("CREATE DATABASE {name}")],
            dir,
            &[],
        );
        assert!(ok, "PostgreSQL is required for this test: {stderr}");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .expect("url");
        PgDatabase {
            url: format!("{base}/{name}"),
            admin,
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.admin.as_str(),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// A port free on 127.0.0.1 now, for a server that may be stopped and
/// started again on it.
///
/// Why not [`free_port`]: ports the kernel hands out for `127.0.0.1:0`
/// (every other test's listeners and outgoing connections) come from the
/// ephemeral range, so while such a server is down another test may take
/// its port, and the restart then fails, or worse, `pg_ctl start -w` finds
/// the other server answering there and reports success. Below that range
/// only another restartable server could collide, and the choice is
/// random.
pub fn restartable_port() -> u16 {
    use std::hash::BuildHasher as _;
    loop {
        let n = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
        let port = 20_000 + u16::try_from(n % 12_000).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A token from `chat-core token`, signed with `secret`.
pub fn token(dir: &Path, secret: &str, sub: &str) -> String {
    let (ok, token, stderr) = run(
        &binary("chat-core"),
        &["token", "--sub", sub],
        dir,
        &[
            ("JWT_SECRET", secret),
            ("DATABASE_URL", "postgres://unused/x"),
        ],
    );
    assert!(ok, "token: {stderr}");
    token.trim().to_owned()
}
