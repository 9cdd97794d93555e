//! A real Kafka-protocol broker process (Tansu, with its SQLite storage so records survive a
//! restart) for durability and failure tests. `scripts/tansu.sh install` installs it.
//!
//! A test that needs it carries `#[cfg_attr(tansu_missing, ignore = "…")]`: the build script
//! (`build.rs`) sets `tansu_missing` when no Tansu is found at build time, so such a test is
//! reported as ignored, with the reason, rather than passing without having run. CI sets
//! ADCLICK_REQUIRE_TANSU=1, which never sets it: there a missing broker fails the test.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::outage::Broker;
use crate::poll::wait_until;
use crate::process::{Spawned, run_ok};

pub struct Tansu {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    process: Option<Spawned>,
}

/// The tansu binary; panics when it is missing (the test is not ignored: it was found when
/// the tests were built, or ADCLICK_REQUIRE_TANSU=1 requires it).
pub fn tansu() -> PathBuf {
    adclick::kafka::embedded::find_tansu()
        .expect("tansu not found: run scripts/tansu.sh install (and set TANSU_BIN)")
}

/// Starts Tansu on a free port with its storage in `dir`.
pub fn start_tansu(dir: &Path) -> Tansu {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut t = Tansu {
        bin: tansu(),
        dir: dir.to_path_buf(),
        port,
        process: None,
    };
    t.start();
    t
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
        let process = Spawned::spawn(
            Command::new(&self.bin)
                .arg("broker")
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "sqlite://tansu.db"])
                .current_dir(&self.dir)
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log)),
        );
        self.process = Some(process);
        wait_until(Duration::from_secs(20), "tansu to come up", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// kill -9: no goodbye to clients, whatever was not on disk is gone.
    pub fn kill(&mut self) {
        self.process = None;
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        run_ok(
            Command::new(&self.bin)
                .args([
                    "topic",
                    "create",
                    name,
                    "--partitions",
                    &partitions.to_string(),
                ])
                .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)]),
        );
    }
}

/// The outage scenario takes Tansu away with kill -9 and brings it back on the same storage.
impl Broker for Tansu {
    fn brokers(&self) -> String {
        Tansu::brokers(self)
    }
    fn down(&mut self) {
        self.kill();
    }
    fn up(&mut self) {
        self.start();
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
