//! The loopback Redis Cluster helper forms a real cluster: three masters
//! serving all 16 384 slots between them, each with a replica that follows
//! it, and a key written to its owner reaches that owner's replica.

use std::time::{Duration, Instant};
use testkit::RedisCluster;

#[test]
fn forms_three_masters_with_a_replica_each() {
    let cluster = RedisCluster::start();
    let topology = cluster.topology();
    let masters: Vec<_> = topology.iter().filter(|n| n.is_master).collect();
    assert_eq!(masters.len(), 3, "{topology:?}");
    assert_eq!(masters.iter().map(|m| m.slots).sum::<usize>(), 16_384);
    for master in &masters {
        let replicas = topology
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .count();
        assert_eq!(replicas, 1, "replicas of {master:?}");
    }

    // Exactly one master takes the key; the others redirect with MOVED.
    let key = format!("{{tessera-{}}}:probe", testkit::random_id());
    let mut owners = Vec::new();
    for master in &masters {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}", master.port)).expect("url");
        let mut conn = client.get_connection().expect("connect");
        match redis::cmd("SET")
            .arg(&key)
            .arg("v")
            .query::<String>(&mut conn)
        {
            Ok(_) => owners.push(*master),
            Err(e) => assert!(e.to_string().to_lowercase().contains("moved"), "{e}"),
        }
    }
    assert_eq!(owners.len(), 1, "one owner for {key}");

    // The owner's replica gets it (read with READONLY, within a few seconds).
    let replica = topology
        .iter()
        .find(|n| n.master_id.as_deref() == Some(owners[0].id.as_str()))
        .expect("a replica of the owner");
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", replica.port)).expect("url");
    let mut conn = client.get_connection().expect("connect");
    let _: () = redis::cmd("READONLY").query(&mut conn).expect("readonly");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value: Option<String> = redis::cmd("GET").arg(&key).query(&mut conn).expect("get");
        if value.as_deref() == Some("v") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never got {key}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
