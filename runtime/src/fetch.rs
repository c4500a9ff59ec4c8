//! `orchctl fetch ID DIR` and `orchctl logs ID TASK [-f]`: clients of the
//! admin API's outputs and logs (docs/collection.md, docs/logs.md).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use orch_actors::protocol::{CollectState, Collection};
use sha2::{Digest, Sha256};

use crate::exit::{FAILED, NOT_FOUND, USAGE};

/// An admin endpoint and its token.
pub struct Endpoint {
    /// `host:port`, or `https://host:port`.
    pub node: String,
    pub token: Option<String>,
    /// TLS (`orchctl --ca`): the client configuration trusting the cluster's CA.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// An error for the command line: exit code and one line.
pub type Failure = (u8, String);

/// The URL of `path` on admin endpoint `node` (`host:port`, with or
/// without a scheme; HTTPS when `tls`).
pub fn admin_url(node: &str, tls: bool, path: &str) -> String {
    let host = node
        .strip_prefix("https://")
        .or_else(|| node.strip_prefix("http://"))
        .unwrap_or(node)
        .trim_end_matches('/');
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}{path}")
}

/// A client of an admin endpoint, over TLS when `tls` is given.
pub fn admin_agent(
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    connect: Duration,
    read: Duration,
) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout_read(read);
    if let Some(t) = tls {
        b = b.tls_config(t.clone());
    }
    b.build()
}

impl Endpoint {
    fn get(&self, path: &str, range: Option<u64>) -> Result<ureq::Response, Failure> {
        let url = admin_url(&self.node, self.tls.is_some(), path);
        let agent = admin_agent(
            self.tls.as_ref(),
            Duration::from_secs(5),
            Duration::from_secs(30),
        );
        let mut req = agent.get(&url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        if let Some(from) = range {
            req = req.set("Range", &format!("bytes={from}-"));
        }
        match req.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let msg = r
                    .into_json::<serde_json::Value>()
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "no details".into());
                let exit = match code {
                    401 | 403 => crate::exit::AUTH,
                    404 => NOT_FOUND,
                    _ => FAILED,
                };
                Err((exit, format!("`{}` answered {code}: {msg}", self.node)))
            }
            Err(e) => Err((FAILED, format!("cannot reach `{}`: {e}", self.node))),
        }
    }
}

/// What a fetch did.
#[derive(Debug, Default)]
pub struct Fetched {
    pub files: u64,
    pub bytes: u64,
    /// Already there, whole and matching: not downloaded again.
    pub kept: u64,
    /// Outputs the collector does not have (pending, uncollected, failed, conflict).
    pub missing: Vec<String>,
}

/// Download the collected outputs of `session` into `dir` (made if
/// missing), each verified against its sha256; a file already there and
/// matching is kept, a partial one resumed.
pub fn fetch(ep: &Endpoint, session: &str, dir: &Path, progress: bool) -> Result<Fetched, Failure> {
    let state: Collection = ep
        .get(&format!("/v1/sessions/{session}/output"), None)?
        .into_json()
        .map_err(|e| (FAILED, format!("unexpected answer from `{}`: {e}", ep.node)))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| (USAGE, format!("cannot create `{}`: {e}", dir.display())))?;
    let mut done = Fetched::default();
    let wanted: Vec<_> = state
        .files
        .iter()
        .filter(|f| {
            if f.state == CollectState::Collected {
                return true;
            }
            if f.state != CollectState::Conflict {
                done.missing
                    .push(format!("{} ({:?})", f.name, f.state).to_lowercase());
            }
            false
        })
        .collect();
    let total: u64 = wanted.iter().map(|f| f.size).sum();
    let bar = if progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for f in wanted {
        if !crate::outputs::safe_rel(&f.name) {
            return Err((
                FAILED,
                format!(
                    "the collector listed `{}`, not a plain relative name; refused",
                    f.name
                ),
            ));
        }
        let dest = dir.join(&f.name);
        bar.set_message(f.name.clone());
        if crate::outputs::sha256_file(&dest).is_ok_and(|(n, h)| n == f.size && h == f.sha256) {
            done.kept += 1;
            bar.inc(f.size);
            continue;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| (FAILED, format!("cannot create `{}`: {e}", parent.display())))?;
        }
        let part = dest.with_file_name(format!(
            ".{}.part",
            dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        let mut tries = 0;
        loop {
            tries += 1;
            match fetch_one(ep, session, &f.name, &part, f.size, &bar) {
                Ok((n, sha)) if n == f.size && sha == f.sha256 => break,
                Ok((n, sha)) => {
                    let _ = std::fs::remove_file(&part);
                    if tries >= 3 {
                        return Err((FAILED, format!("`{}` does not match the manifest after {tries} tries: expected {} bytes with sha256 {}, got {n} bytes with sha256 {sha}", f.name, f.size, f.sha256)));
                    }
                }
                Err(e) if tries >= 3 => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        std::fs::rename(&part, &dest)
            .map_err(|e| (FAILED, format!("cannot write `{}`: {e}", dest.display())))?;
        done.files += 1;
        done.bytes += f.size;
    }
    bar.finish_and_clear();
    Ok(done)
}

/// One file into `part`, resumed from what it holds: its size and sha256.
fn fetch_one(
    ep: &Endpoint,
    session: &str,
    name: &str,
    part: &Path,
    size: u64,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, String), Failure> {
    let io = |e: std::io::Error| (FAILED, format!("`{}`: {e}", part.display()));
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    let mut h = Sha256::new();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part)
        .map_err(io)?;
    f.set_len(have).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    {
        let mut r = (&mut f).take(have);
        loop {
            let n = r.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    let resp = ep.get(
        &format!("/v1/sessions/{session}/output/{name}"),
        (have > 0).then_some(have),
    )?;
    if resp.status() == 200 && have > 0 {
        f.set_len(0).map_err(io)?;
        h = Sha256::new();
        have = 0;
    }
    bar.inc(have);
    let mut r = resp.into_reader().take(size - have + 1);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
    let mut n_total = have;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| (FAILED, format!("download of `{name}` cut off: {e}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).map_err(io)?;
        n_total += n as u64;
        bar.inc(n as u64);
    }
    w.flush().map_err(io)?;
    Ok((n_total, crate::outputs::hex(&h.finalize())))
}

/// Print the log of one attempt (its last when `attempt` is `None`) to
/// `out`; with `follow`, until the attempt ends.
pub fn logs(
    ep: &Endpoint,
    session: &str,
    task: u64,
    attempt: Option<u32>,
    follow: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut offset = 0u64;
    let mut attempt = attempt;
    loop {
        let mut path = format!("/v1/sessions/{session}/tasks/{task}/log?offset={offset}");
        if let Some(a) = attempt {
            path.push_str(&format!("&attempt={a}"));
        }
        let resp = match ep.get(&path, None) {
            // Following a task that has not started (or written) yet: wait.
            Err((NOT_FOUND, _)) if follow && offset == 0 => {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            other => other?,
        };
        let open = resp.header(crate::data_plane::LOG_OPEN_HEADER) == Some("true");
        // Follow the attempt first answered, not a later one.
        if attempt.is_none() {
            attempt = resp.header("x-orch-attempt").and_then(|a| a.parse().ok());
        }
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(crate::data_plane::LOG_CHUNK as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| (FAILED, format!("log read cut off: {e}")))?;
        out.write_all(&bytes).map_err(|e| (FAILED, e.to_string()))?;
        let _ = out.flush();
        offset += bytes.len() as u64;
        if bytes.len() >= crate::data_plane::LOG_CHUNK {
            continue;
        }
        if !follow || !open {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
