//! The bill: what Lambda would charge for the calls of a window, next to what Shoal's
//! instances used to serve them, read from the `REPORT` lines in the functions' logs.
//!
//! Lambda's side is exact for its model: each call billed at the configured memory for
//! its duration plus init, rounded up to the millisecond, plus the request fee. Shoal's
//! side is the sum of the calls' shares of their instances (see `shoal_dispatch::meter`)
//! plus each instance's start: instance time with calls in flight or starting, the same
//! at the configured memory (Lambda's unit, for a like-for-like ratio), measured resident
//! memory × time (during a start, the peak the first call saw: an upper bound), and CPU
//! time of the calls. Instances
//! kept warm while idle are not in it (nor in Lambda's bill); the window covers what the
//! logs still hold (rotation drops the oldest).

use shoal_api::{CostReport, FunctionCost, Prices};

use crate::report::Report;
use crate::{Platform, Result};

/// Lambda's on-demand prices for x86 functions in us-east-1 (first pricing tier), as
/// aws.amazon.com/lambda/pricing has listed them since 1 ms billing began (December
/// 2020). This machine cannot reach the page, so they were not re-read when written
/// (November 2026): `shoal cost --price-gb-second --price-request` overrides them.
pub const LAMBDA_X86_GB_SECOND_USD: f64 = 0.000_016_666_7;
/// The per-request fee: $0.20 per million requests.
pub const LAMBDA_REQUEST_USD: f64 = 0.000_000_2;
/// Where the constants above come from.
pub const LAMBDA_PRICES_SOURCE: &str =
    "AWS Lambda x86 on-demand, us-east-1, first tier, as listed since 2020-12; not re-read since";

/// The default prices.
pub fn lambda_prices() -> Prices {
    Prices {
        gb_second_usd: LAMBDA_X86_GB_SECOND_USD,
        request_usd: LAMBDA_REQUEST_USD,
        source: LAMBDA_PRICES_SOURCE.to_owned(),
    }
}

/// Add one call's `REPORT` to a function's sums.
pub(crate) fn add(cost: &mut FunctionCost, report: &Report, prices: &Prices) {
    let gb = report.memory_size_mb as f64 / 1024.0;
    let billed = report.billed_ms();
    let lambda_gb_s = gb * billed as f64 / 1000.0;
    cost.invocations += 1;
    cost.cold_starts += u64::from(report.init_ms.is_some());
    cost.lambda_billed_ms += billed;
    cost.lambda_gb_seconds += lambda_gb_s;
    cost.lambda_usd += lambda_gb_s * prices.gb_second_usd + prices.request_usd;
    // The instance's start belongs to Shoal's side too (it held memory while starting):
    // the call that started it carries it, as Lambda's bill carries its init.
    let init_s = report.init_ms.unwrap_or(0.0) / 1000.0;
    let share_s = report.instance_share_ms / 1000.0 + init_s;
    cost.shoal_instance_seconds += share_s;
    cost.shoal_configured_gb_seconds += gb * share_s;
    // While starting, memory was rising to at most what the call saw: an upper bound.
    let init_memory_gb = report
        .max_memory_used_mb
        .map_or(gb, |mb| mb as f64 / 1024.0);
    cost.shoal_measured_gb_seconds += report.memory_share_mb_s / 1024.0 + init_s * init_memory_gb;
    cost.shoal_cpu_seconds += report.cpu_share_ms / 1000.0;
}

/// Sum `parts` into a total named `name`.
pub(crate) fn total<'a>(
    name: &str,
    parts: impl IntoIterator<Item = &'a FunctionCost>,
) -> FunctionCost {
    let mut sum = FunctionCost {
        function: name.to_owned(),
        ..FunctionCost::default()
    };
    for part in parts {
        sum.invocations += part.invocations;
        sum.cold_starts += part.cold_starts;
        sum.lambda_billed_ms += part.lambda_billed_ms;
        sum.lambda_gb_seconds += part.lambda_gb_seconds;
        sum.lambda_usd += part.lambda_usd;
        sum.shoal_instance_seconds += part.shoal_instance_seconds;
        sum.shoal_configured_gb_seconds += part.shoal_configured_gb_seconds;
        sum.shoal_measured_gb_seconds += part.shoal_measured_gb_seconds;
        sum.shoal_cpu_seconds += part.shoal_cpu_seconds;
    }
    sum
}

impl Platform {
    /// The bill of one function (or every deployed one) for calls that ended at or
    /// after `since_ms` (Unix epoch ms). Reads the logs: call from a blocking context.
    pub fn cost(
        &self,
        function: Option<&str>,
        since_ms: u64,
        prices: Prices,
    ) -> Result<CostReport> {
        let names: Vec<String> = match function {
            Some(name) => {
                if !self.exists(name) {
                    return Err(crate::Error::FunctionNotFound(name.to_owned()));
                }
                vec![name.to_owned()]
            }
            None => self.functions()?.into_iter().map(|f| f.name).collect(),
        };
        let mut functions = Vec::new();
        for name in names {
            let mut cost = FunctionCost {
                function: name.clone(),
                ..FunctionCost::default()
            };
            self.logs
                .scan(&name, "REPORT RequestId", |record| {
                    if record.ts < since_ms || record.stream != "platform" {
                        return;
                    }
                    if let Some(report) = Report::parse(&record.message) {
                        add(&mut cost, &report, &prices);
                    }
                })
                .map_err(|source| {
                    crate::Error::io("reading the log of", &self.logs.path(&name), source)
                })?;
            functions.push(cost);
        }
        Ok(CostReport {
            since_ms,
            until_ms: crate::now_ms(),
            total: total("total", &functions),
            functions,
            prices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: usize, init: Option<f64>) -> Report {
        Report {
            request_id: format!("r{id}"),
            duration_ms: 2100.4,
            init_ms: init,
            memory_size_mb: 512,
            max_memory_used_mb: Some(60),
            status: None,
            instance: "hello-1-1".into(),
            queue_wait_ms: 0.0,
            // Ten calls side by side on one instance for ~2.1 s.
            instance_share_ms: 210.04,
            cpu_share_ms: 10.0,
            memory_share_mb_s: 60.0 * 0.21004,
        }
    }

    #[test]
    fn a_burst_of_ten_on_one_instance_bills_about_nine_times_what_it_used() {
        let prices = lambda_prices();
        let mut cost = FunctionCost::default();
        for i in 0..10 {
            // Lambda's model starts ten instances; each call would be cold there, but the
            // lines are Shoal's: only the first call started its instance.
            add(&mut cost, &report(i, (i == 0).then_some(180.0)), &prices);
        }
        assert_eq!(cost.invocations, 10);
        assert_eq!(cost.cold_starts, 1);
        // 9 × ceil(2100.4) + ceil(2280.4) ms.
        assert_eq!(cost.lambda_billed_ms, 9 * 2101 + 2281);
        assert!((cost.lambda_gb_seconds - 0.5 * 21.19).abs() < 1e-9);
        let usd = 0.5 * 21.19 * LAMBDA_X86_GB_SECOND_USD + 10.0 * LAMBDA_REQUEST_USD;
        assert!((cost.lambda_usd - usd).abs() < 1e-12);
        // Ten shares of 210.04 ms, and the instance's 180 ms start.
        assert!((cost.shoal_instance_seconds - 2.2804).abs() < 1e-9);
        let ratio = cost.lambda_gb_seconds / cost.shoal_configured_gb_seconds;
        assert!((9.2..9.4).contains(&ratio), "{ratio}");
        let measured_gb_s = (10.0 * 60.0 * 0.21004 + 0.18 * 60.0) / 1024.0;
        assert!((cost.shoal_measured_gb_seconds - measured_gb_s).abs() < 1e-9);
        let measured = cost.lambda_gb_seconds / cost.shoal_measured_gb_seconds;
        assert!(measured > 70.0, "{measured}");
        assert!((cost.shoal_cpu_seconds - 0.1).abs() < 1e-9);
        let sum = total("total", [&cost, &cost]);
        assert_eq!(sum.invocations, 20);
        assert_eq!(sum.lambda_billed_ms, 2 * cost.lambda_billed_ms);
    }
}
