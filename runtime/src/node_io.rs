//! The node's file work: output folders, quarantine and manifests, all
//! confined to `data_dir` (docs/sessions.md, docs/operating.md).

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use orch_actors::executor::{Executor, NodeIo, Noop, Sleep};
use orch_actors::protocol::{ExecutorSpec, Manifest, ReplayRecord};
use orch_actors::scheduler::ManifestStream;

use crate::command::CommandExecutor;
use crate::outputs::OutputWatch;
use crate::procs::TaskGroups;

/// [`NodeIo`] on the local file system under `data_dir`.
pub struct FsIo {
    data_dir: PathBuf,
    command: Arc<CommandExecutor>,
}

impl FsIo {
    fn manifest_path(&self, session: &str) -> Result<PathBuf, String> {
        self.confined(&format!("sessions/{session}/manifest.json"))
    }

    /// Write a manifest whole and synced, under a temporary name renamed into
    /// place: once this returns, a crash leaves the manifest (the master may
    /// then drop the session's ledger from memory).
    fn write_manifest_json(
        &self,
        session: &str,
        manifest: &impl serde::Serialize,
    ) -> Result<PathBuf, String> {
        use std::io::Write;
        let dir = self.confined(&format!("sessions/{session}"))?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let path = dir.join("manifest.json");
        let tmp = dir.join(".manifest.json.tmp");
        let file = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        serde_json::to_writer_pretty(&mut w, manifest).map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())?;
        w.get_ref()
            .sync_all()
            .map_err(|e| format!("cannot sync `{}`: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        let _ = std::fs::File::open(&dir).and_then(|d| d.sync_all());
        Ok(path)
    }

    /// File work under `data_dir`; `command` tasks run as `groups`.
    pub fn new(data_dir: PathBuf, groups: Arc<TaskGroups>) -> Self {
        let command = Arc::new(CommandExecutor {
            work_dir: data_dir.join("work"),
            groups,
            watch: Arc::new(OutputWatch::new()),
        });
        Self { data_dir, command }
    }

    /// `data_dir/rel`, refusing anything but plain relative components.
    pub fn confined(&self, rel: &str) -> Result<PathBuf, String> {
        let p = Path::new(rel);
        if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!(
                "path `{rel}` is not a plain relative path inside `data_dir`"
            ));
        }
        Ok(self.data_dir.join(p))
    }
}

fn files_under(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            files_under(&path, base, out)?;
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

impl NodeIo for FsIo {
    fn prepare_out_dir(&self, rel: &str) -> Result<PathBuf, String> {
        let dir = self.confined(rel)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        Ok(dir)
    }

    fn quarantine(&self, rel: &str, keep: &[String]) -> Result<usize, String> {
        let src = self.confined(rel)?;
        if !src.exists() {
            return Ok(0);
        }
        let tail = rel.strip_prefix("out/").unwrap_or(rel);
        let dst = self.confined(&format!("quarantine/{tail}"))?;
        let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
        let mut files = Vec::new();
        files_under(&src, &src, &mut files)
            .map_err(|e| format!("cannot list `{}`: {e}", src.display()))?;
        let mut moved = 0;
        for f in files {
            if keep.contains(f.to_string_lossy().as_ref()) {
                continue;
            }
            let to = dst.join(&f);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
            }
            std::fs::rename(src.join(&f), &to)
                .map_err(|e| format!("cannot move `{}` to quarantine: {e}", f.display()))?;
            moved += 1;
        }
        Ok(moved)
    }

    fn manifest_exists(&self, session: &str) -> bool {
        self.confined(&format!("sessions/{session}/manifest.json"))
            .is_ok_and(|p| p.is_file())
    }

    fn write_manifest(&self, manifest: &ManifestStream<'_>) -> Result<PathBuf, String> {
        self.write_manifest_json(manifest.session(), manifest)
    }

    fn read_manifest(&self, session: &str) -> Result<Manifest, String> {
        let path = self.manifest_path(session)?;
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
    }

    fn amend_manifest(&self, session: &str, record: &ReplayRecord) -> Result<(), String> {
        let mut m = self.read_manifest(session)?;
        if m.replay
            .iter()
            .any(|r| r.task == record.task && r.old_attempt == record.old_attempt)
        {
            return Ok(());
        }
        m.replay.push(record.clone());
        self.write_manifest_json(session, &m).map(|_| ())
    }

    fn executor(&self, spec: &ExecutorSpec) -> Arc<dyn Executor> {
        match spec {
            ExecutorSpec::Noop => Arc::new(Noop),
            ExecutorSpec::Sleep { .. } => Arc::new(Sleep),
            ExecutorSpec::Command { .. } => self.command.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(dir: &Path) -> Arc<TaskGroups> {
        Arc::new(TaskGroups::in_dir(dir.join("procs")))
    }

    #[test]
    fn paths_stay_inside_data_dir() {
        let io = FsIo::new(PathBuf::from("/data"), groups(Path::new("/tmp")));
        assert!(io.confined("out/s/n/d/1-a1").is_ok());
        assert!(io.confined("../etc").is_err());
        assert!(io.confined("/etc/passwd").is_err());
        assert!(io.confined("out/../../x").is_err());
        assert!(io.confined("").is_err());
    }

    #[test]
    fn quarantine_moves_all_but_kept_files() {
        let d = tempfile::tempdir().unwrap();
        let io = FsIo::new(d.path().to_path_buf(), groups(d.path()));
        let out = io.prepare_out_dir("out/s/n/dev/3-a1").unwrap();
        std::fs::write(out.join("frame_0.png"), b"ok").unwrap();
        std::fs::write(out.join("frame_1.png"), b"partial").unwrap();
        let moved = io
            .quarantine("out/s/n/dev/3-a1", &["frame_0.png".into()])
            .unwrap();
        assert_eq!(moved, 1);
        assert!(out.join("frame_0.png").exists());
        assert!(d
            .path()
            .join("quarantine/s/n/dev/3-a1/frame_1.png")
            .exists());
    }
}
