//! The root `cluster.toml` and every node config under `examples/` parse and validate.

use std::path::{Path, PathBuf};

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml")
            && path.file_name().is_some_and(|n| n != "Cargo.toml")
        {
            out.push(path);
        }
    }
}

#[test]
fn the_embedded_default_is_one_node_with_both_roles_and_devices() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cfg = orch_runtime::config::load(&root.join("cluster.toml")).unwrap();
    assert!(cfg.node.master && cfg.node.worker);
    assert!(cfg.cluster.peers.is_empty());
    assert!(!cfg.devices.is_empty());
    assert!(
        cfg.node.listen.ip().is_loopback(),
        "the default binds loopback only"
    );
    assert!(cfg.admin.listen.ip().is_loopback());
}

#[test]
fn every_node_config_and_session_file_under_examples_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = Vec::new();
    toml_files(&root, &mut files);
    let (mut checked, mut sessions) = (0, 0);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if text.contains("[node]") {
            orch_runtime::config::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            checked += 1;
        } else if text.contains("[executor]") {
            orch_runtime::session_file::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            sessions += 1;
        }
    }
    assert!(checked >= 3, "found {checked} node configs under examples/");
    assert!(
        sessions >= 3,
        "found {sessions} session files under examples/"
    );
}
