//! The live dashboard's files, served from the binary on the control listener: one HTML
//! page, its script and its style sheet, written by hand, no framework, no build step,
//! no charting library (the charts are a few SVG polylines drawn by `app.js`).
//!
//! The page holds no data and no secret: it reads the control API's own routes
//! (`/admin/status`, `/admin/functions`, `/admin/cost`, `/metrics`) once a second with
//! the session cookie the login gave it (see `auth.rs`). Routing and answers stay in
//! `control.rs` and `control/respond.rs`.

/// One file of the dashboard.
#[derive(Debug)]
pub(crate) struct Asset {
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static str,
}

static INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_str!("dashboard/index.html"),
};
static SCRIPT: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("dashboard/app.js"),
};
static STYLE: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: include_str!("dashboard/style.css"),
};

/// The file at `path` under `/dashboard/` (`""` is the page).
pub(crate) fn asset(path: &str) -> Option<&'static Asset> {
    match path {
        "" | "index.html" => Some(&INDEX),
        "app.js" => Some(&SCRIPT),
        "style.css" => Some(&STYLE),
        _ => None,
    }
}
