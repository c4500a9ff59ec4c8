//! The README's main job: one node on the embedded default `cluster.toml`
//! runs `examples/quickstart.toml` to the end and renders every frame as PNG.
//! (The file is copied to a temporary folder with free ports, so that the test
//! neither collides with a running node nor writes into the checkout.)

use std::path::Path;
use std::process::Command;

use orch_tests::{assert_exactly_once, free_port};
use serde_json::Value;

#[test]
fn the_main_job_renders_every_frame_and_writes_the_manifest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(root.join("cluster.toml"))
        .unwrap()
        .replace("127.0.0.1:7700", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:7701", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:9100", &format!("127.0.0.1:{}", free_port()));
    let cfg_path = dir.path().join("cluster.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orch-node"))
        .arg("--cluster")
        .arg(&cfg_path)
        .arg("--run")
        .arg(root.join("examples/quickstart.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(stdout.contains("48/48 done"), "{stdout}");
    // The manifest: every frame exactly once, each with its PNG and checksum.
    let sessions = dir.path().join("orch-data/sessions");
    let id = std::fs::read_dir(&sessions)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(sessions.join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["state"], "completed");
    assert_eq!(assert_exactly_once(&manifest, 0, 48), 48);
    assert!(
        stdout.contains(&format!(
            "{}",
            sessions.join(&id).join("manifest.json").display()
        )),
        "{stdout}"
    );
    let mut pngs = 0;
    for r in manifest["ranges"].as_array().unwrap() {
        let folder = dir
            .path()
            .join("orch-data")
            .join(r["out_dir"].as_str().unwrap());
        for o in r["outputs"].as_array().unwrap() {
            let bytes = std::fs::read(folder.join(o["path"].as_str().unwrap())).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", o["path"]);
            assert_eq!(bytes.len() as u64, o["size"].as_u64().unwrap());
            assert_eq!(o["sha256"].as_str().unwrap().len(), 64);
            pngs += 1;
        }
    }
    assert_eq!(pngs, 48, "one PNG per frame");
    // One folder holds every frame, each byte-identical to what the manifest says.
    let output = sessions.join(&id).join("output");
    assert!(
        stdout.contains(&format!("{}", output.display())),
        "{stdout}"
    );
    assert!(stdout.contains("48 files collected"), "{stdout}");
    let listed: std::collections::BTreeMap<String, String> = manifest["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["outputs"].as_array().unwrap().iter())
        .map(|o| {
            (
                o["path"].as_str().unwrap().to_string(),
                o["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut names: Vec<String> = std::fs::read_dir(&output)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected: Vec<String> = (0..48).map(|i| format!("frame_{i:05}.png")).collect();
    assert_eq!(names, expected);
    for (name, sha) in &listed {
        assert_eq!(
            &orch_tests::sha256_hex(&std::fs::read(output.join(name)).unwrap()),
            sha,
            "{name}"
        );
    }
    assert_eq!(
        manifest["collection"]["collected"], 48,
        "{}",
        manifest["collection"]
    );
    assert_eq!(manifest["collection"]["settled"], true);
}
