//! Master checkpoint and resume, and the workers' outbox (docs/design/durability.md), on
//! real `orch-node` processes: kill -9 of the master at random moments and
//! during store writes, a master down for 30 s, damaged and foreign stores.

use std::time::{Duration, Instant};

use orch_tests::{
    assert_exactly_once, assert_no_id_issued_twice, bins, id_events, rerun_outside_replay,
    NodeSpec, TestCluster,
};
use rand::Rng;
use serde_json::Value;

/// A master+worker `node-0` and `workers` workers, each with `devices` devices.
fn cluster(workers: usize, devices: u32) -> TestCluster {
    TestCluster::master_and_workers(bins!(), workers, devices).unwrap()
}

fn frames_done(c: &TestCluster, id: &str) -> u64 {
    c.session(id)
        .ok()
        .and_then(|v| v["frames_done"].as_u64())
        .unwrap_or(0)
}

/// How many times the master opened its store and replayed the ledger,
/// from its log: written before the node opens its admin port, so every
/// restart that returned counts, even one killed at once.
fn replays(c: &TestCluster) -> usize {
    c.nodes[0]
        .logged("master store opened, ledger replayed")
        .len()
}

#[test]
fn five_master_kills_during_a_200k_frame_session_lose_nothing_and_reissue_no_id() {
    let c = &mut cluster(2, 4);
    // 12 devices, 1 ms a frame: about 20 s of work, reported every 100 ms.
    let id = c
        .submit(
            "resume",
            "name = \"resume\"\nframes = { start = 0, end = 200000 }\nchunk_frames = 2000\nid_chunk_size = 5000\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 1\n",
        )
        .unwrap();
    // Five kill moments at random points of the session's progress.
    let mut rng = rand::rng();
    let mut at: Vec<u64> = (0..5).map(|_| rng.random_range(5_000..150_000)).collect();
    at.sort_unstable();
    for (k, threshold) in at.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while frames_done(c, &id) < *threshold {
            assert!(
                Instant::now() < deadline,
                "kill {k}: the session did not reach {threshold} frames\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let v = c.session(&id).unwrap();
        assert_eq!(
            v["state"], "running",
            "kill {k} must hit a running session: {v}"
        );
        c.nodes[0].kill9();
        c.restart(0).unwrap();
    }
    let v = c.wait_done(&id, Duration::from_secs(180)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(
        replays(c),
        5,
        "the master replayed its store after each kill"
    );
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 200_000), 200_000);
    let events = id_events(c);
    let chunks = assert_no_id_issued_twice(&events, &m);
    assert!(chunks >= 100, "every task's chunk was logged: {chunks}");
    // Completed work is not run again, unless the manifest says why.
    let rerun = rerun_outside_replay(&events, &m);
    assert!(rerun.is_empty(), "{rerun:#?}");
    for r in m["replay"].as_array().unwrap() {
        assert!(
            !r["reason"].as_str().unwrap_or_default().is_empty(),
            "every replayed range has a reason: {r}"
        );
    }
}

#[test]
fn a_master_down_for_30s_gets_every_result_from_the_outboxes() {
    let c = &mut cluster(2, 2);
    // 2-frame tasks of 1 s each: the workers hold 4 tasks each (running + prefetched).
    let id = c
        .submit(
            "outbox",
            "name = \"outbox\"\nframes = { start = 0, end = 120 }\nchunk_frames = 2\nid_chunk_size = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 500\n",
        )
        .unwrap();
    c.wait_session(&id, "some frames done", Duration::from_secs(30), |v| {
        v["frames_done"].as_u64().unwrap_or(0) >= 4
    })
    .unwrap();
    c.nodes[0].kill9();
    let down = Instant::now();
    // The workers finish what they hold and keep the results.
    let pending =
        |c: &TestCluster, i: usize| c.nodes[i].metric("orch_outbox_pending").unwrap_or(0.0);
    // Entries in outbox.db: reports unacknowledged for `WRITE_AFTER`, and
    // every report made once the master is gone.
    let stored = |c: &TestCluster, i: usize| c.nodes[i].metric("orch_outbox_stored").unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored(c, 1) < 1.0 || stored(c, 2) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no outbox entry reached outbox.db\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A worker restarted with a full outbox keeps it.
    let before = stored(c, 2);
    c.nodes[2].kill9();
    c.restart(2).unwrap();
    // What it reloaded shows once its worker has started: wait for it.
    let mut after = 0.0;
    let kept = orch_tests::wait_until(
        "node-2's outbox reloaded after its restart",
        Duration::from_secs(10),
        || {
            after = pending(c, 2);
            after >= before
        },
    );
    assert!(
        kept.is_ok(),
        "node-2's outbox survived its restart: {before} before, {after} after"
    );
    // The master stays down for 30 s; nothing is delivered anywhere meanwhile.
    while down.elapsed() < Duration::from_secs(30) {
        assert!(pending(c, 1) >= 1.0 && pending(c, 2) >= 1.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    c.restart(0).unwrap();
    let v = c.wait_done(&id, Duration::from_secs(120)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 120), 120);
    // Every attempt node-1 and node-2 completed is in the manifest, as theirs.
    let events = id_events(c);
    let ranges = m["ranges"].as_array().unwrap();
    let mut delivered = 0;
    for e in events
        .iter()
        .filter(|e| e.finished == Some(true) && e.node != "node-0")
    {
        let found = ranges.iter().any(|r| {
            r["task"].as_u64() == Some(e.task)
                && r["attempt"].as_u64() == Some(e.attempt)
                && r["node"] == e.node.as_str()
        });
        assert!(found, "result of {e:?} was lost\n{m}");
        delivered += 1;
    }
    assert!(delivered >= 8, "both workers completed work: {delivered}");
    let rerun = rerun_outside_replay(&events, &m);
    assert!(rerun.is_empty(), "{rerun:#?}");
    assert_no_id_issued_twice(&events, &m);
    for i in [1, 2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pending(c, i) > 0.0 {
            assert!(Instant::now() < deadline, "node-{i}'s outbox never emptied");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn fifty_kills_during_store_writes_always_reopen_and_resume() {
    let c = &mut cluster(1, 4);
    let id = c
        .submit(
            "writes",
            "name = \"writes\"\nframes = { start = 0, end = 300000 }\nchunk_frames = 10\nid_chunk_size = 10\n[executor]\nkind = \"builtin:noop\"\n",
        )
        .unwrap();
    let mut rng = rand::rng();
    for k in 0..50 {
        // A random moment within the first 400 ms: replaying, resuming,
        // taking registrations, or committing results.
        let ms = rng.random_range(0..400);
        std::thread::sleep(Duration::from_millis(ms));
        // Ten times, node-1 misses a master: frozen from just before one
        // kill until the master started after it is killed too, it names
        // what it holds to the next one.
        if k % 5 == 2 {
            // Once it works for this master, so that it holds attempts
            // sent before their commit.
            let deadline = Instant::now() + Duration::from_secs(10);
            let from = frames_done(c, &id);
            while Instant::now() < deadline
                && c.session(&id).is_ok_and(|v| v["state"] == "running")
                && !(c.worker("node-1").is_some_and(|w| w["state"] == "healthy")
                    && frames_done(c, &id) >= from + 1_000)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            c.nodes[1].sigstop();
        }
        c.nodes[0].kill9();
        c.restart(0)
            .unwrap_or_else(|e| panic!("restart {k} after {ms} ms: the store did not open: {e}"));
        if k % 5 == 3 {
            c.nodes[1].sigcont();
        }
    }
    assert_eq!(replays(c), 50);
    let v = c.wait_done(&id, Duration::from_secs(240)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 300_000), 300_000);
    let events = id_events(c);
    assert_no_id_issued_twice(&events, &m);
    // Assignments leave before their cause is committed. Those a kill cut
    // off ran under numbers the restarted master skips: node-1, which
    // outlived each kill, named them when it registered again (with the
    // next master or, when it missed one, a later one); node-0's own
    // worker died with its master and got early only tasks reserved in an
    // earlier commit, all listed after the restart. So every frame that ran
    // twice is in `replay`, on every node, even with tasks of microseconds.
    let rerun = rerun_outside_replay(&events, &m);
    assert!(
        rerun.is_empty(),
        "frames ran again with no replay record: {rerun:?}"
    );
    // Listed without a device: attempts the store never recorded. How many
    // of them had finished is how many frames really ran twice.
    let listed = |node: &str| -> (usize, usize) {
        let entries: Vec<_> = m["replay"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["device"] == "" && r["node"] == node)
            .collect();
        let ran = entries
            .iter()
            .filter(|r| {
                events.iter().any(|e| {
                    e.node == node
                        && e.finished.is_some()
                        && Some(e.task) == r["task"].as_u64()
                        && Some(e.attempt) == r["old_attempt"].as_u64()
                })
            })
            .count();
        (entries.len(), ran)
    };
    let (named, named_ran) = listed("node-1");
    let (reserved, reserved_ran) = listed("node-0");
    eprintln!(
        "listed after a kill without a record: {named} named by node-1 on re-registration ({named_ran} had finished), {reserved} reserved for node-0 ({reserved_ran} had finished)"
    );
}

/// Start `node-0` on its existing data_dir and expect a refusal: exit 2,
/// one error naming the store, and the file left as it was.
fn refused(c: &mut TestCluster, store: &std::path::Path, says: &str) {
    let before = std::fs::read(store).unwrap();
    let out = std::process::Command::new(&c.bins.node)
        .arg("--cluster")
        .arg(&c.nodes[0].config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&store.display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains(says), "expected `{says}` in: {err}");
    assert_eq!(std::fs::read(store).unwrap(), before, "nothing overwritten");
}

/// A master with one device that has run a session of `frames` noop frames,
/// and the session's id.
fn one_node_that_ran_noop_frames(frames: u64) -> (TestCluster, String) {
    let mut c = TestCluster::new(bins!());
    let mut spec = NodeSpec::new("node-0").master();
    spec.devices = 1;
    c.add(spec).unwrap();
    let session = format!(
        "name = \"small\"\nframes = {{ start = 0, end = {frames} }}\nchunk_frames = 5\n[executor]\nkind = \"builtin:noop\"\n"
    );
    let id = c.submit("small", &session).unwrap();
    c.wait_done(&id, Duration::from_secs(30)).unwrap();
    (c, id)
}

#[test]
fn damaged_foreign_or_other_version_stores_are_refused_untouched() {
    let (mut c, id) = one_node_that_ran_noop_frames(50);
    // A clean stop checkpoints the write-ahead log into the store file.
    c.nodes[0].sigterm();
    assert_eq!(
        c.nodes[0].wait_exit(Duration::from_secs(10)).unwrap(),
        Some(0)
    );
    let data = c.dir.path().join("node-0/data");
    let store = data.join("master.db");
    let good = std::fs::read(&store).unwrap();

    // Written by another version of orch.
    {
        let conn = rusqlite::Connection::open(&store).unwrap();
        conn.execute(
            "UPDATE meta SET value = '0.0.1' WHERE key = 'orch_version'",
            [],
        )
        .unwrap();
    }
    refused(&mut c, &store, "written by orch `0.0.1`");

    // Damaged: the schema page overwritten.
    let mut bad = good.clone();
    for b in &mut bad[100..4096] {
        *b = 0xA5;
    }
    std::fs::write(&store, &bad).unwrap();
    refused(&mut c, &store, "it is damaged");

    // Foreign: not a database at all.
    std::fs::write(&store, "a shopping list\n".repeat(20)).unwrap();
    refused(&mut c, &store, "not an orch store");

    // Another program's database.
    std::fs::remove_file(&store).unwrap();
    {
        let conn = rusqlite::Connection::open(&store).unwrap();
        conn.execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    refused(&mut c, &store, "not written by orch");

    // The good store still resumes, and its session kept its manifest.
    std::fs::write(&store, &good).unwrap();
    c.restart(0).unwrap();
    let m: Value = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 50), 50);
    assert_eq!(m["state"], "completed");
}

/// Each kind of damage to `store` as kill -9 left it (with or without
/// commits in its log): the node refuses to start with one line naming the
/// file, and its db, -wal and -shm stay byte for byte; then the store is
/// put back as it was.
fn refused_untouched(c: &TestCluster, store: &std::path::Path) {
    let file = store.file_name().unwrap().to_str().unwrap().to_string();
    let saved: Vec<(String, Option<Vec<u8>>)> = ["", "-wal", "-shm"]
        .iter()
        .map(|e| {
            let p = format!("{}{e}", store.display());
            (p.clone(), std::fs::read(&p).ok())
        })
        .collect();
    let log_frames = saved[1]
        .1
        .as_ref()
        .map_or(0, |w| w.len().saturating_sub(32) / (24 + 4096));
    if file == "master.db" {
        assert!(log_frames > 8, "kill -9 left commits in master.db's log");
    }
    let restore = || {
        for (p, bytes) in &saved {
            match bytes {
                Some(b) => std::fs::write(p, b).unwrap(),
                None => {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    };
    type Damage<'a> = &'a dyn Fn();
    // In a process of its own that dies without closing the store, so the
    // change stays in the log as a kill -9 leaves it (a connection left open
    // in this process would share its view of the log with the next one).
    let in_log = |sql: &'static str| {
        let store = store.to_path_buf();
        move || {
            let script = "import os, sqlite3, sys\n\
                c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                c.execute('PRAGMA wal_autocheckpoint = 0')\n\
                c.executescript(sys.argv[2])\n\
                os._exit(0)\n";
            let out = std::process::Command::new("python3")
                .args(["-c", script])
                .arg(&store)
                .arg(sql)
                .output()
                .expect("python3 runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let newer = in_log("UPDATE meta SET value = '99.0.0' WHERE key = 'orch_version'");
    let format = in_log("PRAGMA user_version = 9");
    let truncated = || {
        let f = std::fs::OpenOptions::new().write(true).open(store).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len((len / 2).min(8192)).unwrap();
    };
    let damaged_log = || {
        let wal = format!("{}-wal", store.display());
        let mut b = std::fs::read(&wal).unwrap();
        b[32 + 2 * (24 + 4096) + 24 + 500] ^= 0x5a;
        std::fs::write(&wal, b).unwrap();
    };
    let mut cases: Vec<(&str, Damage, &str)> = vec![
        (
            "a newer version, in the log",
            &newer,
            "written by orch `99.0.0`",
        ),
        ("a newer format, in the log", &format, "store format `9`"),
        ("a truncated store", &truncated, &file),
    ];
    // A bad frame followed by more log needs three frames.
    if log_frames >= 3 {
        cases.push(("a damaged log", &damaged_log, "write-ahead log"));
    }
    eprintln!(
        "{file}: {log_frames} frames in its log; {} kinds of damage",
        cases.len()
    );
    for (what, damage, says) in cases {
        let what = format!("{file}: {what}");
        restore();
        damage();
        let before = store_files(store);
        let started = Instant::now();
        let out = std::process::Command::new(&c.bins.node)
            .arg("--cluster")
            .arg(&c.nodes[0].config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{what}: one line: {err}");
        assert!(
            lines[0].contains(&store.display().to_string()) && lines[0].contains(says),
            "{what}: {err}"
        );
        assert_eq!(
            store_files(store),
            before,
            "{what}: db, -wal and -shm unchanged"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    restore();
}

/// The sha256 of a store, its `-wal` and its `-shm` (`None`: absent).
fn store_files(store: &std::path::Path) -> Vec<Option<String>> {
    use sha2::{Digest, Sha256};
    ["", "-wal", "-shm"]
        .iter()
        .map(|ext| {
            std::fs::read(format!("{}{ext}", store.display()))
                .ok()
                .map(|b| format!("{:x}", Sha256::digest(&b)))
        })
        .collect()
}

#[test]
fn a_store_left_by_kill_9_and_refused_keeps_every_byte_of_its_three_files() {
    let (mut c, id) = one_node_that_ran_noop_frames(400);
    // kill -9: the last commits stay in the write-ahead log.
    c.nodes[0].kill9();
    let data = c.dir.path().join("node-0/data");
    for file in ["master.db", "outbox.db"] {
        refused_untouched(&c, &data.join(file));
    }
    // The stores as kill -9 left them resume with every event.
    c.restart(0).unwrap();
    let m: Value = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 400), 400);
}
