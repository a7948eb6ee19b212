//! `shoal ls`: deployed functions.

use std::process::ExitCode;

use shoal_api::{Concurrency, FunctionList};

use crate::client::Client;

pub async fn run(client: &Client) -> anyhow::Result<ExitCode> {
    let list: FunctionList = client.get("/admin/functions").await?;
    println!(
        "{:<20} {:>7} {:<9} {:<11} {:>9}  ROUTES",
        "NAME", "VERSION", "RUNTIME", "CONCURRENCY", "INSTANCES"
    );
    for f in list.functions {
        let runtime = format!("{:?}", f.runtime).to_lowercase();
        let concurrency = match f.concurrency {
            Concurrency::Auto => "auto".to_owned(),
            Concurrency::Fixed(n) => n.to_string(),
        };
        println!(
            "{:<20} {:>7} {:<9} {:<11} {:>9}  {}",
            f.name,
            f.version,
            runtime,
            concurrency,
            f.instances,
            f.routes.join(", ")
        );
        for event in &f.events {
            match event.next_fire_ms {
                Some(next) => println!(
                    "{:<20} {} {}, next fire {}",
                    "",
                    event.kind,
                    event.source,
                    utc(next)
                ),
                None => println!("{:<20} {} {}", "", event.kind, event.source),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-29 21:40:00 UTC`, computed without a calendar crate (proleptic Gregorian).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_epoch_ms() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_795_987_800_000), "2026-11-29 21:30:00 UTC");
    }
}
