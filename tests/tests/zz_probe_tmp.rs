//! TEMPORARY probe (removed after use): kill -9 of an engine on tansu, no traffic.
use std::time::Duration;
use loyalty_testkit::process::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn zz_probe_kill9_handover() {
    let mut c = Cluster::builder().gateways(1).engines(2).partitions(12).start().await.unwrap();
    let t0 = std::time::Instant::now();
    println!("cluster up; killing engine-0");
    c.kill9_engine(0);
    let log = c.engine(1).stderr_path();
    let deadline = std::time::Instant::now() + Duration::from_secs(420);
    let mut seen = 0;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("loyalty_core::engine") && l.contains("partitions")).collect();
        for l in &lines[seen..] { println!("+{:.1}s {}", t0.elapsed().as_secs_f64(), l); }
        seen = lines.len();
        if lines.last().is_some_and(|l| l.contains("assigned") && l.contains("0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")) { println!("handover after {:.1}s", t0.elapsed().as_secs_f64()); break; }
        if std::time::Instant::now() > deadline { println!("no handover"); break; }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::copy(c.broker.dir().join("tansu.log"), "/tmp/probe/tansu.log");
    let _ = std::fs::copy(&log, "/tmp/probe/engine-1.log");
}
