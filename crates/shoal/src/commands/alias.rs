//! `shoal alias set|ls|rm`: Lambda's aliases. `set NAME ALIAS VERSION` points ALIAS at a
//! version; `--additional-version V --weight W` sends a share W (0..1) of its calls to V,
//! as Lambda's routing config does for a gradual rollout.

use std::process::ExitCode;

use bytes::Bytes;
use hyper::Method;
use shoal_api::aliases::{AliasInfo, AliasList, SetAlias};
use shoal_api::Deleted;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create or move ALIAS of function NAME to VERSION.
    Set {
        name: String,
        alias: String,
        version: u32,
        /// A second version that takes `--weight` of the calls.
        #[arg(long, requires = "weight")]
        additional_version: Option<u32>,
        /// The share of calls (0 to 1) the additional version takes.
        #[arg(long, requires = "additional_version")]
        weight: Option<f64>,
    },
    /// List the aliases of function NAME.
    Ls { name: String },
    /// Remove ALIAS of function NAME.
    Rm { name: String, alias: String },
}

fn describe(alias: &AliasInfo) -> String {
    match (alias.additional_version, alias.additional_weight) {
        (Some(v), Some(w)) => format!(
            "{} -> version {} ({:.0}%), version {v} ({:.0}%)",
            alias.name,
            alias.version,
            (1.0 - w) * 100.0,
            w * 100.0
        ),
        _ => format!("{} -> version {}", alias.name, alias.version),
    }
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Set {
            name,
            alias,
            version,
            additional_version,
            weight,
        } => {
            let body = serde_json::to_vec(&SetAlias {
                version,
                additional_version,
                additional_weight: weight,
            })?;
            let set: AliasInfo = client
                .request(
                    Method::PUT,
                    &format!("/admin/functions/{name}/aliases/{alias}"),
                    &[("content-type", "application/json")],
                    Bytes::from(body),
                )
                .await?
                .parse()?;
            println!("{}", describe(&set));
        }
        Command::Ls { name } => {
            let list: AliasList = client
                .get(&format!("/admin/functions/{name}/aliases"))
                .await?;
            for alias in &list.aliases {
                println!("{}", describe(alias));
            }
        }
        Command::Rm { name, alias } => {
            client
                .request(
                    Method::DELETE,
                    &format!("/admin/functions/{name}/aliases/{alias}"),
                    &[],
                    Bytes::new(),
                )
                .await?
                .parse::<Deleted>()?;
            println!("removed alias {alias} of {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
