//! API Gateway semantics for Shoal's HTTP gateway, as pure functions over plain Rust types.
//!
//! This crate owns three things: building the API Gateway HTTP API event (payload format
//! 2.0) that a function receives for an HTTP request ([`build_v2_event`]), mapping the
//! function's Lambda proxy result back to an HTTP response ([`map_v2_response`]), and
//! matching requests to routes ([`RouteTable`]). It must not touch sockets, processes, SQL
//! or the clock, and it uses no hyper/http types: the server reads the request, maps hyper
//! types into [`HttpRequest`] and maps [`HttpResponse`] back out, so everything here can be
//! tested with data files alone (`tests/cases/`).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]
#![forbid(unsafe_code)]

mod percent;
mod request;
mod response;
mod route;

pub use request::{build_v2_event, HttpRequest, RouteMatch};
pub use response::{
    is_framing_header, map_v2_response, try_map_v2_response, HttpResponse, ResponseError,
    MAX_HEADERS, MAX_HEADER_BYTES,
};
pub use route::{RouteError, RouteTable};

/// Result of route table edits.
pub type Result<T, E = RouteError> = std::result::Result<T, E>;
