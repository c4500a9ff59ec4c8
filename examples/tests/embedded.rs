//! The embedding example (examples/src/embedded.rs), run in this process:
//! its session completes with every frame in exactly one range, and every
//! row file the manifest lists is on disk as listed.

use orch_actors::protocol::SessionState;
use orch_examples::embedded::{render_row, row_file, run};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_example_renders_every_row_exactly_once_with_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path()).await.unwrap();
    let summary = o.summary();
    assert_eq!(o.session.state, SessionState::Completed, "{summary}");
    let (m, p) = (&o.manifest, &o.params);
    assert_eq!((m.frames.start, m.frames.end), (0, p.height));
    assert_eq!(o.session.frames_done, p.height, "{summary}");
    assert!(m.failed.is_empty(), "{summary}");
    assert_eq!(
        m.executor, "rust:mandelbrot",
        "the manifest names the executor"
    );

    // Exactly once: the produced ranges, in frame order, tile the frames.
    let mut next = m.frames.start;
    for r in &m.ranges {
        assert_eq!(
            r.frames.start, next,
            "a gap or an overlap at {next}: {summary}"
        );
        assert!(r.frames.end > r.frames.start);
        next = r.frames.end;
    }
    assert_eq!(next, m.frames.end, "{summary}");

    // One file per frame, on disk as listed.
    for r in &m.ranges {
        let mut listed: Vec<&str> = r.outputs.iter().map(|f| f.path.as_str()).collect();
        listed.sort();
        let expected: Vec<String> = (r.frames.start..r.frames.end).map(row_file).collect();
        assert_eq!(
            listed, expected,
            "frames [{}, {})",
            r.frames.start, r.frames.end
        );
        for f in &r.outputs {
            let bytes = std::fs::read(o.data_dir.join(&r.out_dir).join(&f.path)).unwrap();
            assert_eq!(bytes.len() as u64, f.size, "{}", f.path);
            let sha: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(sha, f.sha256, "{}", f.path);
        }
    }

    // The image is the rows in order, as the executor renders them.
    let pgm = std::fs::read(&o.image).unwrap();
    let header = format!("P5\n{} {}\n255\n", p.width, p.height);
    assert!(pgm.starts_with(header.as_bytes()));
    let pixels = &pgm[header.len()..];
    assert_eq!(pixels.len() as u64, u64::from(p.width) * p.height);
    let y = p.height / 2;
    let at = (y * u64::from(p.width)) as usize;
    assert_eq!(
        &pixels[at..at + p.width as usize],
        render_row(p, y).as_slice()
    );
}
