//! A device farm on real `orch-node` processes: 3 nodes of 100 devices, 20
//! busy at once on each, a 3,000-task workflow session, and the example farm
//! under `examples/device-farm/` checked as an operator would use it.

use std::time::Duration;

use orch_tests::{assert_exactly_once, bins, free_port, max_overlap, NodeSpec, TestCluster};

#[test]
fn three_hundred_devices_run_a_3000_task_workflow_one_thing_at_a_time_twenty_per_node() {
    let mut c = TestCluster::new(bins!());
    let port = free_port();
    let mut m = NodeSpec::new("node-0").master().heartbeat(500, 6);
    m.devices = 100;
    m.max_concurrency = 20;
    c.add_with_port(m, port).unwrap();
    for i in 1..=2 {
        let mut w = NodeSpec::new(&format!("node-{i}"))
            .peer(format!("127.0.0.1:{port}"))
            .heartbeat(500, 6);
        w.devices = 100;
        w.max_concurrency = 20;
        c.add(w).unwrap();
    }
    c.wait_all_healthy(2).unwrap();
    let recipe = c.dir.path().join("farm.toml");
    std::fs::write(
        &recipe,
        "name = \"farm\"\n[check]\nargv = [\"true\"]\n[[step]]\nname = \"shot\"\nargv = [\"sh\", \"-c\", \"echo {start} > shot_{start}.png\"]\n",
    )
    .unwrap();
    let out = c.orchctl(0, &["workflow", "add", recipe.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = c
        .submit(
            "farm",
            "name = \"farm\"\nframes = { start = 0, end = 3000 }\nchunk_frames = 1\nid_chunk_size = 10\nworkflow = \"farm\"\n",
        )
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(300)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 3000), 3000);
    let per_device = max_overlap(&m, "device");
    assert_eq!(
        per_device.len(),
        300,
        "every device got work: {} did",
        per_device.len()
    );
    assert!(
        per_device.values().all(|&n| n == 1),
        "a device ran two things at once: {:?}",
        per_device
            .iter()
            .filter(|(_, &n)| n > 1)
            .collect::<Vec<_>>()
    );
    let per_node = max_overlap(&m, "node");
    assert_eq!(per_node.len(), 3);
    assert!(
        per_node.values().all(|&n| n <= 20),
        "a node ran more than 20: {per_node:?}"
    );
}

#[test]
fn the_example_farm_s_files_are_valid_as_shipped() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/device-farm");
    for host in ["host-1", "host-2", "host-3"] {
        let file = dir.join(format!("{host}.cluster.toml"));
        orch_runtime::config::load(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let recipe = std::fs::read_to_string(dir.join("login-screenshot.toml")).unwrap();
    let recipe = recipe.replace("{workflow_dir}", &dir.display().to_string());
    let w = orch_runtime::workflow_file::parse(&recipe, "login-screenshot.toml").unwrap();
    assert!(w.check.is_some() && w.steps.len() >= 4, "{w:?}");
    orch_runtime::session_file::load(&dir.join("nightly.session.toml")).unwrap();
    let script = dir.join("fake-phone.sh");
    assert!(script.exists());
    // The fake phone answers its check.
    let out = std::process::Command::new("sh")
        .arg(&script)
        .args(["check", "phone-007"])
        .env("FAKE_PHONE_CALM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
