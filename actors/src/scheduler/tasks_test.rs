//! A session's tasks and its queue of pending ones.

use super::test_fixture::*;
use super::*;

fn drain_queue(q: &mut Queue) -> Vec<u32> {
    std::iter::from_fn(|| q.pop_front()).map(|t| t.0).collect()
}

#[test]
fn the_queue_serves_tasks_put_first_then_fresh_ones_then_retries() {
    let mut q = Queue::new(3);
    assert_eq!(
        (q.pop_front(), q.pop_front()),
        (Some(TaskIdx(0)), Some(TaskIdx(1)))
    );

    q.push_back(TaskIdx(0)); // a retry after its backoff
    q.push_front(TaskIdx(1)); // lost work

    assert_eq!(q.len(), 3);
    assert_eq!(
        (q.get(0), q.get(1), q.get(2), q.get(3)),
        (Some(TaskIdx(1)), Some(TaskIdx(2)), Some(TaskIdx(0)), None)
    );
    assert_eq!(drain_queue(&mut q), vec![1, 2, 0]);
    assert!(q.is_empty());
}

#[test]
fn a_queued_task_is_taken_out_only_within_reach() {
    let mut q = Queue::new(10);

    assert!(!q.remove(TaskIdx(5), 3), "five tasks ahead of it");
    assert!(q.remove(TaskIdx(2), 3));
    assert!(!q.remove(TaskIdx(2), 3), "taken already");

    assert_eq!(q.len(), 9);
    assert_eq!(drain_queue(&mut q), vec![0, 1, 3, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn a_task_has_a_record_only_while_in_play() {
    let mut tasks = Tasks::new(&spec(10, 4));
    assert_eq!((tasks.len(), tasks.range(TaskIdx(2))), (3, frames(8, 10)));
    let fresh = tasks.get(TaskIdx(1)).expect("a task");
    assert_eq!(
        (fresh.frames, fresh.attempt, tasks.touched.len()),
        (frames(4, 8), 1, 0)
    );
    assert!(tasks.get(TaskIdx(3)).is_none());

    tasks.get_mut(TaskIdx(1)).next_attempt();
    assert_eq!(tasks.touched.len(), 1);
    tasks.done(TaskIdx(1));

    assert_eq!(tasks.touched.len(), 0);
    let done = tasks.get(TaskIdx(1)).expect("a task");
    assert!(matches!(done.state, TaskState::Done));
    assert_eq!((done.attempt, done.frames.len()), (2, 0));
}
