//! A session of a registered executor that no node has waits, saying why,
//! and runs nothing, while the node runs the executor it has; a bad
//! executor name is refused at submit, naming the key.

use std::sync::Arc;
use std::time::Duration;

use orch_actors::protocol::SessionState;
use orch_examples::embedded::{AdminError, Mandelbrot, Node, EXECUTOR, SESSION};
use orch_runtime::Executors;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_an_executor_no_node_registered_waits_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut executors = Executors::new();
    executors.register(EXECUTOR, Arc::new(Mandelbrot)).unwrap();
    let node = Node::start(dir.path(), executors).await.unwrap();

    // Refused at submit: one line naming the key.
    let e = node
        .admin
        .submit(&SESSION.replace("rust:mandelbrot", "rust:Mandel brot"))
        .await
        .unwrap_err();
    match &e {
        AdminError::Refused { status, message } => {
            assert_eq!(*status, 400);
            assert!(
                message.contains("`executor.kind`")
                    && message.contains("invalid executor name `Mandel brot`"),
                "{message}"
            );
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        other => panic!("{other}"),
    }

    let missing = node
        .admin
        .submit(&SESSION.replace("rust:mandelbrot", "rust:missing"))
        .await
        .unwrap();
    let v = node
        .admin
        .wait_for(
            &missing,
            "the session to say why it waits",
            Duration::from_secs(20),
            |v| v.waiting.is_some(),
        )
        .await
        .unwrap();
    assert_eq!(
        v.waiting.as_deref(),
        Some(r#"no healthy device matches `executor.rust:missing = "yes"`"#)
    );

    // The node's devices run the executor it registered meanwhile...
    let present = node.admin.submit(SESSION).await.unwrap();
    let done = node
        .admin
        .wait_for(
            &present,
            "the mandelbrot session to end",
            Duration::from_secs(60),
            |v| v.state.is_final(),
        )
        .await
        .unwrap();
    assert_eq!(done.state, SessionState::Completed, "{done:?}");

    // ...and the other still waits, with nothing run.
    let v = node.admin.session(&missing).await.unwrap();
    assert_eq!(v.state, SessionState::Running, "{v:?}");
    assert_eq!(
        (v.frames_done, v.tasks_running, v.tasks_completed),
        (0, 0, 0),
        "{v:?}"
    );
    assert!(v
        .waiting
        .is_some_and(|w| w.contains("executor.rust:missing")));
    assert!(!node.data_dir.join("out").join(&missing).exists());

    node.admin.cancel(&missing).await.unwrap();
    node.stop().await.unwrap();
}
