//! A real Kafka-protocol broker process (Tansu, with its SQLite storage so records survive a
//! restart) for durability and failure tests. `scripts/tansu.sh install` installs it; CI sets
//! ADCLICK_REQUIRE_TANSU=1 so a missing broker fails instead of skipping.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

pub use adclick::kafka::embedded::find_tansu;

/// The tansu binary, or None (test skipped, with a note) when it is not installed and not
/// required; panics when ADCLICK_REQUIRE_TANSU=1 (CI) and it is missing.
pub fn tansu_or_skip() -> Option<PathBuf> {
    let bin = find_tansu();
    if bin.is_none() {
        if std::env::var("ADCLICK_REQUIRE_TANSU").as_deref() == Ok("1") {
            panic!("tansu not found: run scripts/tansu.sh install");
        }
        eprintln!("SKIPPED: tansu not installed (scripts/tansu.sh install)");
    }
    bin
}

/// Starts Tansu, or returns None (test skipped) when it is not installed and not required.
pub fn start_tansu(dir: &Path) -> Option<Tansu> {
    let bin = tansu_or_skip()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut t = Tansu {
        bin,
        dir: dir.to_path_buf(),
        port,
        child: None,
    };
    t.start();
    Some(t)
}

impl Tansu {
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the broker on the same port and storage.
    pub fn start(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9: no goodbye to clients, whatever was not on disk is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(&self.bin)
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What Tansu's retention does, at once: deletes the records of `topic`/`partition` below
/// `before` from the broker's SQLite storage in `dir` (its delete policy removes rows of the
/// same `record` table, but only every 10 minutes, and its DeleteRecords is unimplemented).
/// Returns how many records were deleted.
pub fn delete_oldest_records(dir: &Path, topic: &str, partition: i32, before: u64) -> u64 {
    let script = "import sqlite3, sys\n\
        db = sqlite3.connect(sys.argv[1], timeout=30)\n\
        cur = db.execute('delete from record where offset_id < ? and topition = (select tp.id \
        from topition tp join topic t on t.id = tp.topic where t.name = ? and tp.partition = ?)', \
        (int(sys.argv[4]), sys.argv[2], int(sys.argv[3])))\n\
        db.commit()\n\
        print(cur.rowcount)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.join("tansu.db"))
        .args([topic, &partition.to_string(), &before.to_string()])
        .output()
        .expect("python3 (for its sqlite3 module)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
