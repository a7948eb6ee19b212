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
