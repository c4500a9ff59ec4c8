//! The session page (docs/status-page.md) in headless Chromium, driven over
//! WebDriver against live nodes: the task grid changes while the session
//! runs, a clicked task shows its attempts and the lines its program prints
//! as it prints them, collected PNG frames appear as thumbnails, and the
//! page's buttons pause, resume and cancel.

use std::time::Duration;

use orch_tests::webdriver::{self, Browser};
use orch_tests::{bins, TestCluster};
use serde_json::Value;

const RENDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/mandelbrot/render.py"
);

/// `frames` one-frame tasks that print a line, wait `sleep` s, render one
/// small PNG and print a last line on stderr.
fn render_session(name: &str, frames: u64, sleep: &str) -> String {
    format!(
        "name = \"{name}\"\nframes = {{ start = 0, end = {frames} }}\nchunk_frames = 1\nid_chunk_size = 10\n\
         [executor]\nkind = \"command\"\n\
         argv = [\"sh\", \"-c\", \"echo rendering frame {{start}}; sleep {sleep}; python3 {RENDER} {{start}} {{end}} {{out_dir}} --frames {frames} --width 160 --height 120 && echo finished frame {{start}} >&2\"]\n"
    )
}

fn browser(c: &TestCluster) -> Option<Browser> {
    let Some((chromium, driver)) = webdriver::available() else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: no Chromium or chromedriver here (`apt-get install chromium chromium-driver`; .ci/run installs them)\n"
        );
        return None;
    };
    let profile = c.dir.path().join("chromium-profile");
    Some(Browser::start(&chromium, &driver, &profile, 1400, 1000).expect("headless Chromium"))
}

/// The grid's cells, as the page shows them: one state per task.
const GRID: &str = "return [...document.querySelectorAll('#grid .task')].map(e => e.dataset.state)";

fn states(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn count(v: &Value, state: &str) -> usize {
    states(v).iter().filter(|s| **s == state).count()
}

#[test]
fn the_session_page_shows_the_grid_a_live_log_and_thumbnails_as_the_session_runs() {
    let c = TestCluster::three_healthy(bins!(), 300).unwrap();
    let Some(b) = browser(&c) else { return };
    let frames = 30;
    let id = c
        .submit("page", &render_session("page", frames, "1.5"))
        .unwrap();
    b.goto(&format!("http://{}/sessions/{id}", c.nodes[0].admin_addr))
        .unwrap();

    // The grid: every task, some running.
    let first = b
        .wait_for(
            "a grid of every task with one running",
            Duration::from_secs(30),
            GRID,
            |v| states(v).len() == frames as usize && count(v, "running") > 0,
        )
        .unwrap();
    let done_first = count(&first, "done");

    // A click on a running task: its attempts, and the line its program
    // printed, read from the worker that runs it.
    b.click("#grid .task.running").unwrap();
    let picked = b
        .eval("const s = document.querySelector('#grid .task.selected'); return s && s.title")
        .unwrap();
    let title = picked.as_str().expect("a selected task").to_string();
    // "task N [S, E) running"
    let start: u64 = title
        .split('[')
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a task title with its frames: {title}"));
    let detail = "return { log: document.getElementById('log').textContent, \
                  attempts: [...document.querySelectorAll('#attempts tr')].map(r => r.textContent) }";
    let shown = b
        .wait_for(
            "the clicked task's log shows the line it printed, and its attempt",
            Duration::from_secs(10),
            detail,
            |v| {
                v["log"]
                    .as_str()
                    .is_some_and(|l| l.contains(&format!("rendering frame {start}")))
                    && v["attempts"].as_array().is_some_and(|a| !a.is_empty())
            },
        )
        .unwrap();
    let row = shown["attempts"][0].as_str().unwrap();
    assert!(
        row.contains("node-") && row.contains("-dev-"),
        "the attempt names its node and device: {row}"
    );
    // Followed to its end: the line printed last, on stderr, arrives too.
    b.wait_for(
        "the clicked task's last line, printed after it rendered",
        Duration::from_secs(20),
        detail,
        |v| {
            v["log"]
                .as_str()
                .is_some_and(|l| l.contains(&format!("finished frame {start}")))
        },
    )
    .unwrap();

    // The grid changed while the page was open.
    b.wait_for(
        "more tasks done than when the page first showed the grid",
        Duration::from_secs(20),
        GRID,
        |v| count(v, "done") > done_first,
    )
    .unwrap();

    // A collected frame, shown as a decoded image.
    let thumbs = "return [...document.querySelectorAll('#thumbs img.thumb')]\
                  .filter(i => i.complete && i.naturalWidth > 0).map(i => i.dataset.name)";
    let some = b
        .wait_for(
            "a thumbnail of a collected frame",
            Duration::from_secs(30),
            thumbs,
            |v| !states(v).is_empty(),
        )
        .unwrap();
    assert!(
        states(&some)
            .iter()
            .all(|n| n.starts_with("frame_") && n.ends_with(".png")),
        "{some}"
    );

    // The page's buttons act on the session.
    b.click("#actions button[data-act=pause]").unwrap();
    c.wait_session(&id, "paused from the page", Duration::from_secs(10), |v| {
        v["paused"] == true
    })
    .unwrap();
    b.wait_for(
        "the page shows it paused, with a resume button",
        Duration::from_secs(10),
        "return [document.getElementById('k-state').textContent, !!document.querySelector('#actions button[data-act=resume]')]",
        |v| v[0] == "paused" && v[1] == true,
    )
    .unwrap();
    b.click("#actions button[data-act=resume]").unwrap();
    c.wait_session(&id, "resumed from the page", Duration::from_secs(10), |v| {
        v["paused"] == false
    })
    .unwrap();

    // The end: every cell done, every frame a thumbnail.
    b.wait_for(
        "every task done on the grid",
        Duration::from_secs(60),
        GRID,
        |v| count(v, "done") == frames as usize,
    )
    .unwrap();
    let all = b
        .wait_for(
            "a thumbnail of every frame",
            Duration::from_secs(30),
            thumbs,
            |v| states(v).len() == frames as usize,
        )
        .unwrap();
    let want: Vec<String> = (0..frames).map(|f| format!("frame_{f:05}.png")).collect();
    assert_eq!(
        states(&all),
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );

    // A screenshot, for people: docs/session-page.png when asked for.
    b.click(&format!("#grid .task[data-task=\"{}\"]", frames / 2))
        .unwrap();
    b.wait_for(
        "the last task's log",
        Duration::from_secs(10),
        detail,
        |v| {
            v["log"]
                .as_str()
                .is_some_and(|l| l.contains("finished frame"))
        },
    )
    .unwrap();
    let png = b.screenshot().unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dir = std::env::var_os("ORCH_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_TARGET_TMPDIR").into());
    std::fs::write(dir.join("session-page.png"), png).unwrap();
}

#[test]
fn the_session_pages_cancel_button_asks_then_cancels() {
    let c = TestCluster::three_healthy(bins!(), 300).unwrap();
    let Some(b) = browser(&c) else { return };
    let id = c.submit("long", &render_session("long", 40, "30")).unwrap();
    b.goto(&format!("http://{}/sessions/{id}", c.nodes[0].admin_addr))
        .unwrap();
    b.wait_for(
        "a cancel button",
        Duration::from_secs(20),
        "return !!document.querySelector('#actions button[data-act=cancel]')",
        |v| v == true,
    )
    .unwrap();
    b.click("#actions button[data-act=cancel]").unwrap();
    b.accept_alert().unwrap();
    c.wait_session(
        &id,
        "cancelled from the page",
        Duration::from_secs(15),
        |v| v["state"] == "cancelled",
    )
    .unwrap();
    b.wait_for(
        "the page shows it cancelled, with no buttons left",
        Duration::from_secs(10),
        "return [document.getElementById('k-state').textContent, document.getElementById('actions').textContent]",
        |v| v[0] == "cancelled" && v[1] == "",
    )
    .unwrap();
}
