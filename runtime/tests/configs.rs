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

#[test]
fn the_grafana_dashboard_uses_only_real_metric_names() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/monitoring");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let known: Vec<&str> = orch_actors::metrics::CATALOG
        .iter()
        .chain(orch_runtime::metrics::CATALOG)
        .map(|(n, _)| *n)
        .collect();
    let mut used = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("orch_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_count"))
                    .or_else(|| name.strip_suffix("_sum"))
                    .unwrap_or(&name);
                assert!(
                    known.contains(&base),
                    "dashboard panel `{}` uses unknown metric `{name}`",
                    panel["title"]
                );
                used += 1;
            }
        }
    }
    assert!(used >= 20, "the dashboard covers the catalog ({used} uses)");
    let scrape = std::fs::read_to_string(root.join("prometheus.yml")).unwrap();
    assert!(scrape.contains("metrics_path: /metrics"));
}
