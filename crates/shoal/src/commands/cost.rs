//! `shoal cost [NAME] [--since 1h]`: what Lambda would bill for the calls of a window,
//! next to what Shoal's instances used for them, per function and in total.

use std::process::ExitCode;

use shoal_api::{CostReport, FunctionCost};

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    /// One function (default: every deployed one).
    name: Option<String>,
    /// Only calls that ended this long ago or later (`30s`, `5m`, `1h`, `2d`); default:
    /// everything the logs still hold.
    #[arg(long, value_parser = parse_seconds)]
    since: Option<u64>,
    /// Lambda's price per GB-second, US dollars (default: x86, us-east-1).
    #[arg(long)]
    price_gb_second: Option<f64>,
    /// Lambda's price per request, US dollars (default: $0.20 per million).
    #[arg(long)]
    price_request: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_seconds(text: &str) -> Result<u64, String> {
    shoal_manifest::parse_duration_ms(text)
        .map(|ms| ms.div_ceil(1000))
        .ok_or_else(|| format!("{text:?} is not a duration (like 30s, 5m, 1h or 2d)"))
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let mut query = Vec::new();
    if let Some(name) = &args.name {
        query.push(format!("function={name}"));
    }
    if let Some(s) = args.since {
        query.push(format!("since_seconds={s}"));
    }
    if let Some(p) = args.price_gb_second {
        query.push(format!("gb_second_usd={p}"));
    }
    if let Some(p) = args.price_request {
        query.push(format!("request_usd={p}"));
    }
    let report: CostReport = client
        .get(&format!("/admin/cost?{}", query.join("&")))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as a table: one row per function, then the total.
pub fn render(report: &CostReport) -> String {
    let mut out = format!(
        "{:<16} {:>6} {:>5} | {:>12} {:>11} | {:>10} {:>12} {:>12} {:>8} | {:>7} {:>8}\n",
        "FUNCTION",
        "CALLS",
        "COLD",
        "LAMBDA GB-s",
        "LAMBDA $",
        "SHOAL s",
        "SHOAL GB-s*",
        "MEASURED GB-s",
        "CPU s",
        "RATIO*",
        "RATIO m"
    );
    let rows = report
        .functions
        .iter()
        .chain((report.functions.len() > 1).then_some(&report.total));
    for f in rows {
        out.push_str(&row(f));
    }
    out.push_str(&format!(
        "Lambda: each call at its configured memory for its billed duration (init included, \
         1 ms units) + the request fee; prices: ${}/GB-s, ${}/request ({}).\n\
         Shoal: instance time with calls in flight (each call's share) or starting; GB-s* at the \
         configured memory, MEASURED at resident memory. RATIO* = LAMBDA GB-s / SHOAL GB-s*, RATIO m = \
         LAMBDA GB-s / MEASURED GB-s. Idle warm instances are in neither.\n",
        report.prices.gb_second_usd, report.prices.request_usd, report.prices.source
    ));
    out
}

fn row(f: &FunctionCost) -> String {
    let ratio = |shoal: f64| {
        if shoal > 0.0 {
            format!("{:.1}x", f.lambda_gb_seconds / shoal)
        } else {
            "-".to_owned()
        }
    };
    format!(
        "{:<16} {:>6} {:>5} | {:>12.3} {:>11.6} | {:>10.3} {:>12.3} {:>12.4} {:>8.3} | {:>7} {:>8}\n",
        f.function,
        f.invocations,
        f.cold_starts,
        f.lambda_gb_seconds,
        f.lambda_usd,
        f.shoal_instance_seconds,
        f.shoal_configured_gb_seconds,
        f.shoal_measured_gb_seconds,
        f.shoal_cpu_seconds,
        ratio(f.shoal_configured_gb_seconds),
        ratio(f.shoal_measured_gb_seconds)
    )
}
