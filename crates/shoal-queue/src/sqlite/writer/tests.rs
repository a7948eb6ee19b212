//! The writer's batch handling where only a trap can reach it: a statement failing in
//! the middle of one op (a trigger raises on a chosen body).

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::*;
use crate::sqlite::ids::new_id;
use crate::sqlite::schema;

const NOW: EpochMs = 1_000_000;

fn writer_with_trap() -> (Writer, Arc<Shared>) {
    let mut conn = Connection::open_in_memory().unwrap();
    schema::migrate(&mut conn).unwrap();
    conn.execute_batch(
        "CREATE TEMP TRIGGER trap BEFORE INSERT ON messages WHEN NEW.body = 'trap'
         BEGIN SELECT RAISE(ABORT, 'trapped'); END;",
    )
    .unwrap();
    let shared = Arc::new(Shared {
        state: Mutex::new(load(&conn, NOW).unwrap()),
    });
    let options = Options {
        clock: Arc::new(|| NOW),
        ..Options::default()
    };
    (Writer::new(conn, shared.clone(), &options), shared)
}

fn outgoing(body: &str) -> Outgoing {
    Outgoing {
        id: new_id(),
        body: body.into(),
        attributes: None,
        delay_ms: None,
        size: body.len(),
    }
}

fn send(bodies: &[&str]) -> (Op, oneshot::Receiver<Result<()>>) {
    let (reply, answer) = oneshot::channel();
    let op = Op::Send {
        queue: "q".into(),
        messages: bodies.iter().map(|b| outgoing(b)).collect(),
        reply,
    };
    (op, answer)
}

fn bodies(writer: &Writer) -> Vec<String> {
    let mut stmt = writer
        .conn
        .prepare("SELECT body FROM messages ORDER BY seq")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Sql<_>>()
        .unwrap()
}

fn setup() -> (Writer, Arc<Shared>) {
    let (mut writer, shared) = writer_with_trap();
    let (reply, mut answer) = oneshot::channel();
    writer.commit(
        vec![Op::CreateQueue {
            name: "q".into(),
            config: QueueConfig::default(),
            reply,
        }],
        NOW,
    );
    answer.try_recv().unwrap().unwrap();
    (writer, shared)
}

#[test]
fn a_failing_statement_undoes_only_its_op() {
    let (mut writer, shared) = setup();
    let (a, mut a_answer) = send(&["a"]);
    let (trapped, mut trapped_answer) = send(&["b", "trap"]);
    let (c, mut c_answer) = send(&["c"]);
    writer.commit(vec![a, trapped, c], NOW);
    a_answer.try_recv().unwrap().unwrap();
    assert!(matches!(
        trapped_answer.try_recv().unwrap(),
        Err(QueueError::Storage(why)) if why.contains("trapped")
    ));
    c_answer.try_recv().unwrap().unwrap();
    // "b" went with its op: all or none.
    assert_eq!(bodies(&writer), ["a", "c"]);
    assert_eq!(shared.lock().pending_messages, 2);
}

#[test]
fn a_second_failure_fails_the_batch() {
    let (mut writer, shared) = setup();
    let (first, mut first_answer) = send(&["trap"]);
    let (fine, mut fine_answer) = send(&["fine"]);
    let (second, mut second_answer) = send(&["trap"]);
    writer.commit(vec![first, fine, second], NOW);
    for answer in [&mut first_answer, &mut fine_answer, &mut second_answer] {
        assert!(matches!(
            answer.try_recv().unwrap(),
            Err(QueueError::Storage(_))
        ));
    }
    assert!(bodies(&writer).is_empty());
    assert_eq!(shared.lock().pending_messages, 0);
}
