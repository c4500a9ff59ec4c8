//! Fuzzing of the files and lines orch reads from people and programs
//! (docs/fuzzing.md): session, workflow and pipeline files, `cluster.toml`,
//! the tokens file, `ORCH_PROGRESS` lines and discovery-source output, as
//! arbitrary text and as mutations of the real files under `examples/`.
//! Each must give a value or errors of one line each, never panic.
//!
//! Cases per property: `ORCH_FUZZ_CASES` (default 256).

use std::path::Path;

use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("ORCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

const EXAMPLES: &[&str] = &[
    include_str!("../../examples/quickstart.toml"),
    include_str!("../../examples/sessions/gpu-transcode.toml"),
    include_str!("../../examples/sessions/mandelbrot-rows.toml"),
    include_str!("../../examples/device-farm/login-screenshot.toml"),
    include_str!("../../examples/device-farm/nightly.session.toml"),
    include_str!("../../examples/device-farm/host-1.cluster.toml"),
    include_str!("../../examples/local-cluster/node-0.toml"),
    include_str!("../../examples/local-cluster/node-1.toml"),
    include_str!("../../examples/pipelines/sync.toml"),
    include_str!("../../examples/pipelines/notify.toml"),
    include_str!("../../cluster.toml"),
];

/// A mutation of `text` line by line: delete, duplicate, swap a value for
/// `junk`, or insert `junk` as a line.
fn mutate(text: &str, ops: &[(u8, usize)], junk: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for &(op, at) in ops {
        if lines.is_empty() {
            lines.push(junk.to_string());
            continue;
        }
        let i = at % lines.len();
        match op % 4 {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                if let Some((k, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{k}= {junk}");
                }
            }
            _ => lines.insert(i, junk.to_string()),
        }
    }
    lines.join("\n")
}

/// Values that break parsers: huge and negative numbers, odd strings, tables.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("1e309".to_string()),
        Just("\"..\"".to_string()),
        Just("\"/etc/passwd\"".to_string()),
        Just("[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]".to_string()),
        Just("{ a = { b = { c = 1 } } }".to_string()),
        Just("\"\\u0000\"".to_string()),
        "[ -~]{0,40}",
        any::<i64>().prop_map(|i| i.to_string()),
        "\\PC{0,20}",
    ]
}

/// Every error line: one line, under 2 KiB.
fn check_errors(what: &str, text: &str, errors: &str) {
    for line in errors.lines() {
        assert!(
            line.len() < 2048,
            "{what}: an error line of {} bytes for:\n{text}\n{line}",
            line.len()
        );
    }
    assert!(!errors.is_empty(), "{what}: an empty error");
}

/// Parse `text` as each kind of file; check each error.
fn parse_everything(text: &str) {
    let dir = Path::new("/nonexistent-orch-fuzz");
    if let Err(e) = orch_runtime::session_file::parse(text, "s.toml", Some(dir)) {
        for e in &e.0 {
            check_errors("session file", text, &e.to_string());
        }
    }
    if let Err(e) = orch_runtime::workflow_file::parse(text, "w.toml") {
        for e in &e.0 {
            check_errors("workflow file", text, &e.to_string());
        }
    }
    if let Err(e) = orch_runtime::pipeline_file::parse(text, "p.toml", None) {
        for e in &e.0 {
            check_errors("pipeline file", text, &e.to_string());
        }
    }
    if let Err(e) = orch_runtime::config::parse(text, "cluster.toml", dir) {
        for e in &e.0 {
            check_errors("cluster.toml", text, &e.to_string());
        }
    }
    if let Err(e) = orch_runtime::tokens::parse(text) {
        for e in &e {
            check_errors("tokens file", text, e);
        }
    }
    for line in text.lines() {
        let _ = orch_runtime::command::parse_progress(line);
    }
    if let Err(e) = orch_runtime::device_sources::parse_lines(text, &Default::default()) {
        check_errors("discovery output", text, &e);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_text_is_a_value_or_clear_errors(text in "\\PC{0,2000}") {
        parse_everything(&text);
    }

    #[test]
    fn arbitrary_bytes_read_lossily_are_a_value_or_clear_errors(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        parse_everything(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_example_files_are_a_value_or_clear_errors(
        which in any::<usize>(),
        ops in proptest::collection::vec((any::<u8>(), any::<usize>()), 1..6),
        junk in junk(),
    ) {
        let text = mutate(EXAMPLES[which % EXAMPLES.len()], &ops, &junk);
        parse_everything(&text);
    }

    #[test]
    fn progress_lines_parse_only_when_well_formed(done in any::<u64>(), last in proptest::option::of(any::<u64>()), junk in "[ -~]{0,30}") {
        let line = match last {
            Some(l) => format!("ORCH_PROGRESS {done} {l}"),
            None => format!("ORCH_PROGRESS {done}"),
        };
        prop_assert_eq!(orch_runtime::command::parse_progress(&line), Some((done, last)));
        let bad = format!("ORCH_PROGRESS {done}x{junk}");
        prop_assert_eq!(orch_runtime::command::parse_progress(&bad), None);
    }

    #[test]
    fn discovery_lines_with_junk_are_one_error_naming_the_line(n in 0usize..50, junk in "[ -~]{1,60}") {
        let mut out = String::new();
        for i in 0..n {
            out.push_str(&format!("{{\"id\": \"phone-{i}\", \"handle\": \"S{i}\"}}\n"));
        }
        out.push_str(&format!("{{{junk}\n"));
        let e = orch_runtime::device_sources::parse_lines(&out, &Default::default()).unwrap_err();
        prop_assert!(!e.contains('\n'), "{}", e);
        prop_assert!(e.contains(&format!("line {}", n + 1)), "{}", e);
    }
}
