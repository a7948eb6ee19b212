//! The sharing arithmetic on synthetic readings: overlapping calls on one instance, with
//! CPU time and memory scripted, so every expected share can be worked out by hand.

use super::*;

fn reading(cpu_ms: u64, rss_kib: u64) -> Option<Resources> {
    Some(Resources {
        cpu_time: Duration::from_millis(cpu_ms),
        rss_kib,
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

#[test]
fn ten_calls_side_by_side_share_the_instance_equally() {
    let t0 = Instant::now();
    let mut meter = Meter::new();
    // All ten arrive within the reuse window: one reading, at 50 ms of CPU and 100 MiB.
    let marks: Vec<Mark> = (0..10)
        .map(|i| {
            let at = t0 + Duration::from_micros(i * 50);
            let r = meter
                .wants_reading(at)
                .then(|| reading(50, 102_400))
                .flatten();
            meter.start(at, r)
        })
        .collect();
    // They run 2 s together; the instance burns 100 ms of CPU meanwhile, and all end at once.
    let end = t0 + Duration::from_millis(2000);
    let usages: Vec<Usage> = marks
        .into_iter()
        .enumerate()
        .map(|(i, mark)| {
            let r = (i == 0).then(|| reading(150, 102_400)).flatten();
            meter.finish(mark, end, r)
        })
        .collect();
    let totals = meter.totals();
    assert_eq!(totals.busy_cpu, Duration::from_millis(100));
    let cpu: f64 = usages.iter().map(|u| u.cpu.as_secs_f64()).sum();
    let time: f64 = usages.iter().map(|u| u.instance_time.as_secs_f64()).sum();
    let memory: f64 = usages.iter().map(|u| u.memory_kib_seconds).sum();
    assert!(close(cpu, totals.busy_cpu.as_secs_f64()), "{cpu}");
    assert!(close(time, totals.busy.as_secs_f64()), "{time}");
    assert!(close(memory, totals.busy_memory_kib_seconds), "{memory}");
    // The first call started 450 µs before the last: it alone held a little more time,
    // the rest is shared ten ways (about 200 ms of wall time and 10 ms of CPU each).
    for usage in &usages {
        assert!(
            (usage.instance_time.as_secs_f64() - 0.2).abs() < 0.001,
            "{usage:?}"
        );
        assert!(close(usage.cpu.as_secs_f64(), 0.010), "{usage:?}");
        assert_eq!(usage.peak_rss_kib, 102_400);
    }
    // Memory: 100 MiB over ~2 s is ~200 MiB·s in all, ~20 MiB·s each.
    assert!((memory / 1024.0 - 200.0).abs() < 0.1, "{memory}");
}

#[test]
fn staggered_calls_get_what_ran_while_they_ran() {
    let s = |ms: u64| Instant::now() + Duration::from_millis(ms);
    let base = s(0);
    let at = |ms: u64| base + Duration::from_millis(ms);
    let mut meter = Meter::new();
    // A alone for 1 s (100 ms CPU, 10 MiB), then A and B for 1 s (200 ms CPU, 20 MiB),
    // then B alone for 1 s (300 ms CPU, 20 MiB).
    let a = meter.start(at(0), reading(1000, 10_240));
    let b = meter.start(at(1000), reading(1100, 20_480));
    let ua = meter.finish(a, at(2000), reading(1300, 20_480));
    let ub = meter.finish(b, at(3000), reading(1600, 20_480));
    assert!(close(ua.cpu.as_secs_f64(), 0.100 + 0.100));
    assert!(close(ub.cpu.as_secs_f64(), 0.100 + 0.300));
    assert!(close(ua.instance_time.as_secs_f64(), 1.5));
    assert!(close(ub.instance_time.as_secs_f64(), 1.5));
    assert!(close(ua.memory_kib_seconds, 10_240.0 + 10_240.0));
    assert!(close(ub.memory_kib_seconds, 10_240.0 + 20_480.0));
    let totals = meter.totals();
    assert_eq!(totals.busy, Duration::from_secs(3));
    assert_eq!(totals.busy_cpu, Duration::from_millis(600));
    assert!(close(
        ua.memory_kib_seconds + ub.memory_kib_seconds,
        totals.busy_memory_kib_seconds
    ));
    assert_eq!(ua.peak_rss_kib, 20_480);
}

#[test]
fn idle_cpu_is_nobodys_and_a_late_reading_never_goes_back() {
    let base = Instant::now();
    let at = |ms: u64| base + Duration::from_millis(ms);
    let mut meter = Meter::new();
    let a = meter.start(at(0), reading(500, 1000));
    let ua = meter.finish(a, at(100), reading(520, 1000));
    // 80 ms of CPU while nothing ran (a timer, GC): counted apart.
    let b = meter.start(at(1000), reading(600, 1000));
    // A reading older than the last one (taken on another task) adds nothing.
    let ub = meter.finish(b, at(1100), reading(590, 1000));
    assert!(close(ua.cpu.as_secs_f64(), 0.020));
    assert_eq!(ub.cpu, Duration::ZERO);
    let totals = meter.totals();
    assert_eq!(totals.idle_cpu, Duration::from_millis(80));
    assert_eq!(totals.busy_cpu, Duration::from_millis(20));
    assert_eq!(totals.busy, Duration::from_millis(200));
}
