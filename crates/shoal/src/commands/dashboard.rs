//! `shoal dashboard`: where the live dashboard is, and a link that logs a browser in
//! once. The admin token stays out of the URL: the link carries a one-time code the
//! daemon trades for a session cookie.

use std::process::ExitCode;

use hyper::Method;
use shoal_api::DashboardLogin;

use crate::client::Client;

pub async fn run(client: &Client) -> anyhow::Result<ExitCode> {
    let login: DashboardLogin = client
        .request(
            Method::POST,
            "/admin/dashboard/login",
            &[],
            Default::default(),
        )
        .await?
        .parse()?;
    println!("dashboard:  {}", login.url);
    println!(
        "log in:     {}   (works once, within {} s)",
        login.login_url, login.expires_in_seconds
    );
    Ok(ExitCode::SUCCESS)
}
