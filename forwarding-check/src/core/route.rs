//! What a request asks for ([`route`]): the endpoints, their parameters, and the refusal of
//! anything that could name an address other than the caller's; plus the response bodies in
//! each [`Style`].

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use wire::http::{Request, Response};

/// The body of `GET /`: what this server answers.
pub const USAGE: &str = "forwarding-check: tells you your WAN IP and whether a TCP port on it \
is reachable from here.\n\
\n\
GET /v1/wan-ip                 -> {\"wan_ip\":\"<your ip>\"}\n\
GET /v1/check?port=P           -> {\"ip\":\"<your ip>\",\"port\":P,\"proto\":\"TCP\",\"open\":true|false,\"ms\":N}\n\
GET /net.php?action=get_wan_ip -> <your ip>   (PyP2P)\n\
GET /net.php?action=is_port_forwarded&port=P&proto=TCP -> {\"result\": \"yes\"|\"no\"}   (PyP2P)\n\
\n\
Only TCP. The server connects back to the address your request comes from, never to another.\n";

/// How a request wants its answers: PyP2P's plain bodies or our JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `text/plain` errors; PyP2P's `{"result": "yes"}` for a check.
    Text,
    /// `application/json` everywhere, errors as `{"error":"..."}`.
    Json,
}

/// What a request asks for, decided by [`route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Answer at once with this.
    Reply(Response),
    /// Dial back the caller's observed IP on `port` (TCP), answer in `style`.
    Check {
        /// The port to try.
        port: u16,
        /// How to answer.
        style: Style,
    },
}

#[derive(Serialize)]
pub(super) struct CheckReply {
    pub(super) ip: IpAddr,
    pub(super) port: u16,
    pub(super) proto: &'static str,
    pub(super) open: bool,
    pub(super) ms: u64,
}

#[derive(Serialize)]
pub(super) struct WanIpReply {
    wan_ip: IpAddr,
}

#[derive(Serialize)]
pub(super) struct ErrorReply<'a> {
    error: &'a str,
}

pub(super) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"encoding: {e}\"}}"))
}

/// An error response in the request's style.
pub(super) fn error(style: Style, status: u16, message: &str) -> Response {
    match style {
        Style::Text => Response::text(status, format!("{message}\n")),
        Style::Json => Response::json(status, to_json(&ErrorReply { error: message })),
    }
}

/// Decides what a request asks for. `ip` is the caller's observed IP, the only address a
/// check ever dials.
///
/// Every endpoint is `GET` (else 405) and takes only its own parameters; a parameter that
/// could name an address (`ip`, `host`, `addr`, `target`, ... or any value that parses as an
/// IP address) is refused with 400, as is any other unknown or repeated parameter.
///
/// ```
/// use forwarding_check::core::{route, Route, Style};
/// use wire::http::Request;
///
/// let ip = "203.0.113.9".parse().unwrap();
/// let req = Request::parse(b"GET /v1/check?port=8080 HTTP/1.1\r\n\r\n", 8192).unwrap();
/// assert_eq!(route(&req, ip), Route::Check { port: 8080, style: Style::Json });
///
/// let req = Request::parse(b"GET /v1/check?port=22&ip=10.0.0.1 HTTP/1.1\r\n\r\n", 8192).unwrap();
/// let Route::Reply(response) = route(&req, ip) else { panic!() };
/// assert_eq!(response.status, 400);
/// ```
pub fn route(request: &Request, ip: IpAddr) -> Route {
    let style = if request.path.starts_with("/v1/") {
        Style::Json
    } else {
        Style::Text
    };
    match route_inner(request, ip, style) {
        Ok(route) => route,
        Err(response) => Route::Reply(response),
    }
}

pub(super) fn route_inner(request: &Request, ip: IpAddr, style: Style) -> Result<Route, Response> {
    if request.method != "GET" {
        let msg = format!(
            "method {} not allowed: every endpoint is GET",
            request.method
        );
        return Err(error(style, 405, &msg).with_header("Allow", "GET"));
    }
    match request.path.as_str() {
        "/" => {
            only_params(request, &[], ip, style)?;
            Ok(Route::Reply(Response::text(200, USAGE)))
        }
        "/v1/wan-ip" => {
            only_params(request, &[], ip, style)?;
            Ok(Route::Reply(Response::json(
                200,
                to_json(&WanIpReply { wan_ip: ip }),
            )))
        }
        "/v1/check" => {
            only_params(request, &["port", "proto"], ip, style)?;
            let port = port_param(request, style)?;
            Ok(Route::Check { port, style })
        }
        "/net.php" => match request.query_param("action") {
            Some("get_wan_ip") => {
                only_params(request, &["action"], ip, style)?;
                Ok(Route::Reply(Response::text(200, ip.to_string())))
            }
            Some("is_port_forwarded") => {
                only_params(request, &["action", "port", "proto"], ip, style)?;
                let port = port_param(request, style)?;
                Ok(Route::Check { port, style })
            }
            Some(other) => Err(error(
                style,
                400,
                &format!(
                    "unknown action {other:?}: use action=get_wan_ip or \
                     action=is_port_forwarded&port=P&proto=TCP"
                ),
            )),
            None => Err(error(
                style,
                400,
                "missing parameter `action` (get_wan_ip or is_port_forwarded)",
            )),
        },
        other => Err(error(
            style,
            404,
            &format!(
                "no such endpoint: {other:?}; try /v1/wan-ip, /v1/check?port=P, \
                 /net.php?action=get_wan_ip or /net.php?action=is_port_forwarded&port=P&proto=TCP"
            ),
        )),
    }
}

/// Refuses unknown, repeated and address-naming parameters.
pub(super) fn only_params(
    request: &Request,
    allowed: &[&str],
    ip: IpAddr,
    style: Style,
) -> Result<(), Response> {
    for (i, (name, value)) in request.query.iter().enumerate() {
        if allowed.contains(&name.as_str()) {
            if request.query[..i].iter().any(|(n, _)| n == name) {
                let msg = format!("parameter `{name}` given more than once");
                return Err(error(style, 400, &msg));
            }
            continue;
        }
        if names_an_address(name, value) {
            let msg = format!(
                "refused: this server only ever connects back to the address your request \
                 comes from ({ip}); it never dials an address named in the request \
                 (parameter `{name}`)"
            );
            return Err(error(style, 400, &msg));
        }
        let msg = if allowed.is_empty() {
            format!("unknown parameter `{name}`: this endpoint takes no parameters")
        } else {
            format!(
                "unknown parameter `{name}`: this endpoint takes {}",
                allowed.join(", ")
            )
        };
        return Err(error(style, 400, &msg));
    }
    Ok(())
}

pub(super) fn names_an_address(name: &str, value: &str) -> bool {
    const WORDS: [&str; 10] = [
        "ip", "host", "addr", "target", "dest", "dst", "remote", "server", "url", "peer",
    ];
    let name = name.to_ascii_lowercase();
    WORDS.iter().any(|w| name.contains(w))
        || name == "to"
        || value.parse::<IpAddr>().is_ok()
        || value.parse::<SocketAddr>().is_ok()
}

/// `port` (required, 1..=65535) and `proto` (optional, TCP only).
pub(super) fn port_param(request: &Request, style: Style) -> Result<u16, Response> {
    match request.query_param("proto") {
        None => {}
        Some(p) if p.eq_ignore_ascii_case("tcp") => {}
        Some(p) if p.eq_ignore_ascii_case("udp") => {
            return Err(error(
                style,
                400,
                "proto=UDP is not supported: a UDP probe cannot tell an open port from one that \
                 silently drops packets, so only TCP is checked",
            ));
        }
        Some(p) => {
            let msg = format!("parameter `proto` must be TCP, got {p:?}");
            return Err(error(style, 400, &msg));
        }
    }
    let Some(text) = request.query_param("port") else {
        return Err(error(
            style,
            400,
            "missing parameter `port` (the TCP port to check, 1..=65535)",
        ));
    };
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            let msg = format!("parameter `port` must be a TCP port in 1..=65535, got {text:?}");
            error(style, 400, &msg)
        })
}
