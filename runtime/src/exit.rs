//! The exit codes of `orch-node` and `orchctl`, in one place
//! (docs/operating.md lists them for operators).

use std::process::ExitCode;

/// The work failed: an operation, a session that did not complete, any
/// error not listed below.
pub const FAILED: u8 = 1;
/// Bad input: arguments, a configuration or session file, a store that is
/// not orch's, of another version or damaged, a second master refused.
pub const USAGE: u8 = 2;
/// `orchctl`: what was named (session, node, device) does not exist.
pub const NOT_FOUND: u8 = 3;
/// `orchctl`: the node refused the token.
pub const AUTH: u8 = 4;

/// `code` as the process's exit status.
pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}
