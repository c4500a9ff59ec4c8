//! Admin tokens with roles (docs/security.md).
//!
//! `[admin] tokens_file` names a TOML file of `[[token]]` entries, each a
//! label, a role and the sha256 of the token (never the token itself);
//! `orchctl token new` makes a token, prints it once and appends its entry.
//! The single token of `admin.token_file` has role `admin`.
//!
//! - `read`: every GET (status, sessions, manifests, logs, events, pages);
//! - `operate`: submit, cancel, pause, resume, retry, requeue, pipelines and runs;
//! - `admin`: everything, also drain, device kill/restart/unblock and workflows.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest tokens file read.
const MAX_TOKENS_FILE: u64 = 1 << 20;
/// Most entries in a tokens file.
const MAX_TOKENS: usize = 10_000;

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Operate,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "operate" => Some(Self::Operate),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One token: who it is for, its role and the digest it is known by.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub label: String,
    pub role: Role,
    pub sha256: [u8; 32],
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("label", &self.label)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    label: String,
    role: String,
    sha256: String,
}

/// The sha256 of `token`.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parse the text of a tokens file; every problem is one line naming the entry.
pub fn parse(text: &str) -> Result<Vec<TokenEntry>, Vec<String>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        vec![format!(
            "not a tokens file: {}",
            e.message().lines().next().unwrap_or("")
        )]
    })?;
    let mut problems = Vec::new();
    if raw.token.len() > MAX_TOKENS {
        problems.push(format!("{} tokens; at most {MAX_TOKENS}", raw.token.len()));
        return Err(problems);
    }
    let mut out = Vec::new();
    let mut labels = std::collections::BTreeSet::new();
    for (i, e) in raw.token.iter().enumerate() {
        let at = format!("token[{i}]");
        if !crate::config::valid_name(&e.label) {
            problems.push(format!(
                "{at}.label: expected 1 to 64 characters from `A-Z a-z 0-9 - _ .`, got `{}`",
                crate::config::shown(&e.label)
            ));
        } else if !labels.insert(e.label.clone()) {
            problems.push(format!("{at}.label: `{}` is used twice", e.label));
        }
        let role = Role::parse(&e.role);
        if role.is_none() {
            problems.push(format!(
                "{at}.role: expected `read`, `operate` or `admin`, got `{}`",
                crate::config::shown(&e.role)
            ));
        }
        let sha = unhex(&e.sha256.to_ascii_lowercase());
        if sha.is_none() {
            problems.push(format!(
                "{at}.sha256: expected 64 hexadecimal digits (the sha256 of the token, as `orchctl token new` writes it)"
            ));
        }
        if let (Some(role), Some(sha256)) = (role, sha) {
            out.push(TokenEntry {
                label: e.label.clone(),
                role,
                sha256,
            });
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Read and parse a tokens file.
pub fn load(path: &Path) -> Result<Vec<TokenEntry>, Vec<String>> {
    let text = crate::config::read_capped(path, MAX_TOKENS_FILE).map_err(|e| vec![e])?;
    parse(&text)
}

/// A fresh token: 32 random bytes, hex, with a prefix that secret
/// scanners can find.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("orch_{}", hex(&bytes))
}

/// Make a token for `label` with `role`, append its entry to `file`
/// (created with mode 0600), and return the token.
pub fn add(file: &Path, label: &str, role: Role) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let existing = match std::fs::metadata(file) {
        Ok(_) => load(file).map_err(|p| format!("`{}`: {}", file.display(), p.join("; ")))?,
        Err(_) => Vec::new(),
    };
    if !crate::config::valid_name(label) {
        return Err(format!(
            "label `{}`: expected 1 to 64 characters from `A-Z a-z 0-9 - _ .`",
            crate::config::shown(label)
        ));
    }
    if existing.iter().any(|e| e.label == label) {
        return Err(format!(
            "`{}` already holds a token labelled `{label}`; remove its entry first or pick another label",
            file.display()
        ));
    }
    let token = new_token();
    let entry = format!(
        "\n[[token]]\nlabel = \"{label}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
        hex(&digest(&token))
    );
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("cannot open `{}`: {e}", file.display()))?;
    f.write_all(entry.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write `{}`: {e}", file.display()))?;
    Ok(token)
}

/// The role a request needs.
pub fn required(method: &axum::http::Method, path: &str) -> Role {
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return Role::Read;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "sessions"] => Role::Operate,
        ["v1", "sessions", _, "cancel" | "pause" | "resume" | "retry"] => Role::Operate,
        ["v1", "sessions", _, "tasks", _, "requeue"] => Role::Operate,
        ["v1", "pipelines"] | ["v1", "pipelines", _, "runs"] => Role::Operate,
        ["v1", "runs", _, "cancel" | "rerun"] => Role::Operate,
        _ => Role::Admin,
    }
}

/// Who a bearer token is: its label and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub label: String,
    pub role: Role,
}

/// The tokens a node accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// `admin.token_file`: role `admin`, label `token_file`.
    pub single: Option<crate::config::Secret>,
    /// `admin.tokens_file`.
    pub entries: Vec<TokenEntry>,
}

impl Tokens {
    /// Whether any token is required.
    pub fn required(&self) -> bool {
        self.single.is_some() || !self.entries.is_empty()
    }

    /// The caller a token belongs to, compared in constant time.
    pub fn caller(&self, given: &str) -> Option<Caller> {
        let given = given.trim();
        let mut found = None;
        if let Some(s) = &self.single {
            if crate::admin::constant_time_eq(given.as_bytes(), s.expose().as_bytes()) {
                found = Some(Caller {
                    label: "token_file".into(),
                    role: Role::Admin,
                });
            }
        }
        let d = digest(given);
        for e in &self.entries {
            // Every entry is compared: the time does not tell which matched.
            if crate::admin::constant_time_eq(&d, &e.sha256) && found.is_none() {
                found = Some(Caller {
                    label: e.label.clone(),
                    role: e.role,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn routes_need_the_documented_roles() {
        let get = Method::GET;
        let post = Method::POST;
        for p in [
            "/v1/status",
            "/v1/sessions/s/manifest",
            "/v1/events",
            "/v1/sessions/s/tasks/3/log",
        ] {
            assert_eq!(required(&get, p), Role::Read, "{p}");
        }
        for p in [
            "/v1/sessions",
            "/v1/sessions/s/cancel",
            "/v1/sessions/s/pause",
            "/v1/sessions/s/retry",
            "/v1/sessions/s/tasks/4/requeue",
            "/v1/pipelines",
            "/v1/pipelines/nightly/runs",
            "/v1/runs/r-1/rerun",
        ] {
            assert_eq!(required(&post, p), Role::Operate, "{p}");
        }
        for p in [
            "/v1/nodes/n/drain",
            "/v1/nodes/n/undrain",
            "/v1/nodes/n/devices/d/kill",
            "/v1/nodes/n/devices/d/restart",
            "/v1/workflows",
            "/v1/sessions/s/unknown",
        ] {
            assert_eq!(required(&post, p), Role::Admin, "{p}");
        }
        assert_eq!(required(&Method::DELETE, "/v1/status"), Role::Admin);
    }

    #[test]
    fn a_tokens_file_holds_digests_and_each_token_finds_its_caller() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens.toml");
        let r = add(&f, "ci-reader", Role::Read).unwrap();
        let o = add(&f, "alice", Role::Operate).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains(&r) && !text.contains(&o), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let t = Tokens {
            single: None,
            entries: load(&f).unwrap(),
        };
        assert_eq!(t.caller(&r).unwrap().role, Role::Read);
        assert_eq!(t.caller(&format!(" {o}\n")).unwrap().label, "alice");
        assert!(t.caller("orch_0000").is_none());
        assert!(add(&f, "alice", Role::Admin)
            .unwrap_err()
            .contains("already holds"));
    }

    #[test]
    fn bad_entries_are_one_line_each() {
        let text = r#"
[[token]]
label = "a b"
role = "root"
sha256 = "xyz"
"#;
        let e = parse(text).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("token[0].label"));
        assert!(e[1].contains("token[0].role"));
        assert!(e[2].contains("token[0].sha256"));
        assert!(parse("token = 3").is_err());
        assert!(parse("[[token]]\nlabel = \"x\"").is_err());
    }
}
