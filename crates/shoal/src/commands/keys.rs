//! `shoal keys create|ls|rm`: access keys for AWS SDKs and the AWS CLI (SigV4). `create`
//! prints the pair in the shared-credentials format (`~/.aws/credentials`); the secret is
//! shown only then (the daemon keeps no copy: it derives it again when checking).

use std::process::ExitCode;

use bytes::Bytes;
use hyper::Method;
use shoal_api::keys::{CreateKey, CreatedKey, KeyList};
use shoal_api::Deleted;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Issue a key pair named NAME and print it as a credentials-file profile.
    Create { name: String },
    /// List keys (names and key ids, never secrets).
    Ls,
    /// Revoke the key named NAME.
    Rm { name: String },
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Create { name } => {
            let body = serde_json::to_vec(&CreateKey { name })?;
            let key: CreatedKey = client
                .request(
                    Method::POST,
                    "/admin/keys",
                    &[("content-type", "application/json")],
                    Bytes::from(body),
                )
                .await?
                .parse()?;
            println!("[{}]", key.name);
            println!("aws_access_key_id = {}", key.access_key_id);
            println!("aws_secret_access_key = {}", key.secret_access_key);
        }
        Command::Ls => {
            let list: KeyList = client.get("/admin/keys").await?;
            println!("{:<24} {:<22} CREATED", "NAME", "ACCESS KEY ID");
            for key in list.keys {
                println!(
                    "{:<24} {:<22} {}",
                    key.name,
                    key.access_key_id,
                    utc(key.created_at_ms)
                );
            }
        }
        Command::Rm { name } => {
            client
                .request(
                    Method::DELETE,
                    &format!("/admin/keys/{name}"),
                    &[],
                    Bytes::new(),
                )
                .await?
                .parse::<Deleted>()?;
            println!("removed key {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
