//! `REPORT` lines, data-driven: each case in `cases.json` is a call as the dispatcher
//! reports it and the exact line Lambda's readers (and ours) must see; the line must also
//! read back to the same report.

use std::time::Duration;

use serde::Deserialize;
use shoal_dispatch::meter::Usage;
use shoal_dispatch::CallReport;

use super::*;

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    status: Option<String>,
    call: Call,
    line: String,
}

#[derive(Deserialize)]
struct Call {
    request_id: String,
    instance: String,
    duration_us: u64,
    #[serde(default)]
    init_us: Option<u64>,
    queued_us: u64,
    memory_limit_kib: u64,
    peak_rss_kib: u64,
    instance_time_us: u64,
    cpu_us: u64,
    memory_kib_seconds: f64,
}

#[test]
fn report_lines_match_lambdas_format_and_read_back() {
    let cases: Vec<Case> =
        serde_json::from_str(include_str!("cases.json")).expect("cases.json parses");
    assert!(cases.len() >= 3);
    for case in cases {
        let c = &case.call;
        let call = CallReport {
            instance: c.instance.clone(),
            queued: Duration::from_micros(c.queued_us),
            duration: Duration::from_micros(c.duration_us),
            init: c.init_us.map(Duration::from_micros),
            usage: Usage {
                instance_time: Duration::from_micros(c.instance_time_us),
                cpu: Duration::from_micros(c.cpu_us),
                memory_kib_seconds: c.memory_kib_seconds,
                peak_rss_kib: c.peak_rss_kib,
            },
            memory_limit_kib: c.memory_limit_kib,
        };
        let report = Report::from_call(&c.request_id, &call, case.status.as_deref());
        let line = report.to_string();
        assert_eq!(line, case.line, "case: {}", case.name);
        assert_eq!(report.line(), line, "case: {}", case.name);
        let back = Report::parse(&line).expect("a REPORT line parses");
        assert_eq!(back.to_string(), line, "case: {}", case.name);
        assert_eq!(back.billed_ms(), report.billed_ms(), "case: {}", case.name);
    }
}

#[test]
fn start_and_end_lines_are_lambdas() {
    assert_eq!(
        start_line("8f507cfc-1c2d-4697-b07a-ac58fc914c95", 3),
        "START RequestId: 8f507cfc-1c2d-4697-b07a-ac58fc914c95 Version: 3"
    );
    assert_eq!(
        end_line("8f507cfc-1c2d-4697-b07a-ac58fc914c95"),
        "END RequestId: 8f507cfc-1c2d-4697-b07a-ac58fc914c95"
    );
    assert_eq!(Report::parse("START RequestId: x Version: 1"), None);
    assert_eq!(Report::parse("REPORT nonsense"), None);
}

#[test]
fn numbers_read_as_float_formatting_writes_them() {
    struct Fixed(f64, u32);
    impl fmt::Display for Fixed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fixed(f, &mut [0u8; 20], self.0, self.1)
        }
    }
    // Whole numbers, values rounded to hundredths as `ms` rounds them, ties in binary
    // (0.125, 2.5) and near-ties, tiny, large and beyond the integer path.
    let mut values = vec![
        0.0,
        1.0,
        0.005,
        0.125,
        2.5,
        0.0049999999,
        0.0050000001,
        1e-9,
        123456.789,
        9.9999,
        1e13,
        -1.25,
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        // A fixed pseudo-random walk over magnitudes 1e-6 .. 1e7.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mantissa = (x >> 11) as f64 / (1u64 << 53) as f64;
        let value = mantissa * 10f64.powi((x % 14) as i32 - 6);
        values.push(value);
        values.push((value * 100.0).round() / 100.0);
    }
    for value in values {
        for decimals in [2, 3] {
            assert_eq!(
                Fixed(value, decimals).to_string(),
                format!("{value:.*}", decimals as usize),
                "{value:e} with {decimals} decimals"
            );
        }
    }
    let mut digits = [0u8; 20];
    for n in [0, 9, 10, 2185, u64::MAX] {
        assert_eq!(json::decimal(n, &mut digits), n.to_string());
    }
}
