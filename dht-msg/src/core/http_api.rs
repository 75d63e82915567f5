//! PyP2P's HTTP API (`GET /dht_msg.php?call=...`): one request, one response, then the
//! connection closes; `list` may wait for a message (a long poll).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use server_kit::ConnId;
use wire::http::{self, HttpError};
use wire::mailbox::{self, NodeId, Secret};

use super::{
    Action, Core, Denied, HTTP_PATH, MAX_NEIGHBOURS, MAX_NETWORK_ID_BYTES, Mailbox, Mode,
    NEIGHBOUR_FRESHNESS,
};

impl Core {
    // ----- HTTP API --------------------------------------------------------------------------

    pub(super) fn http_input(&mut self, now: Instant, id: ConnId) {
        let max_head = self.config.max_http_head_bytes();
        let Some(conn) = self.live_conn(id) else {
            return;
        };
        let Mode::Http(buf) = &mut conn.mode else {
            return;
        };
        let parsed = http::Request::parse(buf, max_head);
        if matches!(parsed, Err(HttpError::Partial { .. })) {
            return;
        }
        conn.mode = Mode::Done;
        conn.last_activity = now;
        self.stats.http_requests += 1;
        match parsed {
            Ok(request) => self.handle_http(now, id, &request),
            Err(e) => {
                self.stats.bad_lines += 1;
                let status = e.status().unwrap_or(400);
                self.respond(id, &failure(status, &e.to_string()));
            }
        }
    }

    /// Queues a complete HTTP response and closes once it is written.
    pub(super) fn respond(&mut self, id: ConnId, response: &http::Response) {
        let bytes = response.render();
        if let Some(conn) = self.conn_mut(id) {
            conn.mode = Mode::Done;
        }
        // An HTTP answer may exceed the line-protocol output cap (a long list); it is one
        // bounded response, so it is queued whole.
        if let Some(conn) = self.conn_mut(id)
            && !conn.closing
        {
            let was_empty = conn.out.is_empty();
            conn.out.extend_from_slice(&bytes);
            if was_empty {
                self.actions.push_back(Action::Flush(id));
            }
        }
        self.finish(id);
    }

    pub(super) fn handle_http(&mut self, now: Instant, id: ConnId, request: &http::Request) {
        let Some(peer) = self.conn(id).map(|c| c.peer) else {
            return;
        };
        if request.path != HTTP_PATH {
            self.stats.bad_lines += 1;
            let text = format!("not found: this server only serves {HTTP_PATH}\n");
            self.respond(id, &http::Response::text(404, text));
            return;
        }
        if request.method != "GET" {
            self.stats.bad_lines += 1;
            let text = format!("method {} not allowed: use GET\n", request.method);
            self.respond(
                id,
                &http::Response::text(405, text).with_header("Allow", "GET"),
            );
            return;
        }
        let call = request.query_param("call").unwrap_or_default();
        let outcome = match call {
            "register" => self.http_register(now, peer.ip(), request),
            "put" => self.http_put(now, peer.ip(), request),
            "list" => self.http_list(now, id, peer.ip(), request),
            "find_neighbours" => self.http_find_neighbours(now, peer.ip(), request),
            "last_alive" => self
                .http_owner(now, peer.ip(), request, "last_alive")
                .map(|_| Some(success())),
            other => Err(Denied::new(
                400,
                format!(
                    "unknown call {other:?}: expected register, put, list, find_neighbours or last_alive"
                ),
            )),
        };
        match outcome {
            Ok(Some(response)) => self.respond(id, &response),
            // A long poll: answered later.
            Ok(None) => {}
            Err(denied) => {
                self.stats.bad_lines += 1;
                self.stats.refusals[denied.kind()] += 1;
                self.respond(id, &failure(denied.status, &denied.reason));
            }
        }
    }

    /// The `node_id` and `password` parameters, checked.
    pub(super) fn http_credentials(
        request: &http::Request,
        verb: &str,
    ) -> Result<(NodeId, Secret), Denied> {
        let node_id = param::<NodeId>(request, "node_id", verb)?;
        let secret = param::<Secret>(request, "password", verb)?;
        Ok((node_id, secret))
    }

    pub(super) fn http_owner(
        &mut self,
        now: Instant,
        ip: IpAddr,
        request: &http::Request,
        verb: &str,
    ) -> Result<NodeId, Denied> {
        let (node_id, secret) = Self::http_credentials(request, verb)?;
        self.authenticate(now, ip, &node_id, &secret, verb)?;
        Ok(node_id)
    }

    pub(super) fn http_register(
        &mut self,
        now: Instant,
        ip: IpAddr,
        request: &http::Request,
    ) -> Result<Option<http::Response>, Denied> {
        let (node_id, secret) = Self::http_credentials(request, "register")?;
        let network_id = request.query_param("network_id").unwrap_or("default");
        if network_id.len() > MAX_NETWORK_ID_BYTES {
            return Err(Denied::new(
                400,
                format!(
                    "register: network_id is {} bytes (limit {MAX_NETWORK_ID_BYTES})",
                    network_id.len()
                ),
            ));
        }
        let port = match request.query_param("port") {
            None | Some("") => 0,
            Some(text) => text.parse::<u16>().map_err(|_| {
                Denied::new(
                    400,
                    format!("register: port must be an integer in 0..=65535, got {text:?}"),
                )
            })?,
        };
        self.register(now, ip, &node_id, &secret, Some((network_id, port)))?;
        Ok(Some(success()))
    }

    /// PyP2P's `put`: the recipient is `dest_node_id`, or `node_id` when there is no
    /// `dest_node_id` (what PyP2P's client sends). With `dest_node_id`, a `node_id` and
    /// `password` that check out make `node_id` the proven sender; a wrong password fails.
    pub(super) fn http_put(
        &mut self,
        now: Instant,
        ip: IpAddr,
        request: &http::Request,
    ) -> Result<Option<http::Response>, Denied> {
        let (to, from) = match request.query_param("dest_node_id") {
            Some(dest) if !dest.is_empty() => {
                let to = parse_param::<NodeId>(dest, "dest_node_id", "put")?;
                let from = match request.query_param("password") {
                    Some(p) if !p.is_empty() => Some(self.http_owner(now, ip, request, "put")?),
                    _ => None,
                };
                (to, from)
            }
            _ => (param::<NodeId>(request, "node_id", "put")?, None),
        };
        let body = request.query_param("msg").unwrap_or_default();
        if body.is_empty() {
            return Err(Denied::new(400, "put: missing parameter msg".into()));
        }
        self.put(now, ip, &to, from, body)?;
        Ok(Some(success()))
    }

    pub(super) fn http_list(
        &mut self,
        now: Instant,
        id: ConnId,
        ip: IpAddr,
        request: &http::Request,
    ) -> Result<Option<http::Response>, Denied> {
        let node_id = self.http_owner(now, ip, request, "list")?;
        let pop = request.query_param("list_pop") != Some("0");
        let wait = match request.query_param("wait") {
            None | Some("") => Duration::ZERO,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(1e9)))
                .ok_or_else(|| {
                    Denied::new(
                        400,
                        format!("list: wait must be a number of seconds, got {text:?}"),
                    )
                })?
                .min(self.config.max_list_wait),
        };
        let has_messages = self
            .mailboxes
            .get(&node_id)
            .is_some_and(|m| !m.messages.is_empty());
        if has_messages || wait.is_zero() {
            return Ok(Some(self.list_response(&node_id, pop)));
        }
        let deadline = now + wait;
        if let Some(conn) = self.conn_mut(id) {
            conn.mode = Mode::HttpWaiting {
                node_id: node_id.clone(),
                pop,
                deadline,
            };
        }
        self.waiting.insert((deadline, id));
        if let Some(mailbox) = self.mailboxes.get_mut(&node_id) {
            mailbox.waiters.push(id);
        }
        Ok(None)
    }

    /// The JSON array of pending messages; with `pop`, they are deleted.
    pub(super) fn list_response(&mut self, node_id: &NodeId, pop: bool) -> http::Response {
        let pending = self.pending(node_id);
        if pop {
            for delivery in &pending {
                self.remove_message(delivery.id.0);
                self.stats.deleted += 1;
            }
        }
        let bodies: Vec<&str> = pending.iter().map(|d| d.body.as_str()).collect();
        let json = serde_json::to_string(&bodies).unwrap_or_else(|_| "[]".to_string());
        http::Response::json(200, json)
    }

    pub(super) fn answer_waiter(&mut self, _now: Instant, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let Mode::HttpWaiting {
            node_id,
            pop,
            deadline,
        } = &conn.mode
        else {
            return;
        };
        let (node_id, pop, deadline) = (node_id.clone(), *pop, *deadline);
        conn.mode = Mode::Done;
        self.waiting.remove(&(deadline, id));
        if let Some(mailbox) = self.mailboxes.get_mut(&node_id) {
            mailbox.waiters.retain(|&w| w != id);
        }
        let response = self.list_response(&node_id, pop);
        self.respond(id, &response);
    }

    pub(super) fn http_find_neighbours(
        &mut self,
        now: Instant,
        ip: IpAddr,
        request: &http::Request,
    ) -> Result<Option<http::Response>, Denied> {
        let node_id = self.http_owner(now, ip, request, "find_neighbours")?;
        let network_id = request.query_param("network_id").unwrap_or("default");
        // Neighbours in the asker's address family only: PyP2P (IPv4) never sees an IPv6
        // address, and an IPv6 asker gets addresses it can dial.
        let family = server_kit::family_index(ip);
        let mut fresh: Vec<(&NodeId, &Mailbox)> = self
            .mailboxes
            .iter()
            .filter(|(id, m)| {
                **id != node_id
                    && m.network_id == network_id
                    && m.ip
                        .is_some_and(|ip| server_kit::family_index(ip) == family)
                    && now.saturating_duration_since(m.last_seen) < NEIGHBOUR_FRESHNESS
            })
            .collect();
        fresh.sort_by(|a, b| b.1.last_seen.cmp(&a.1.last_seen).then(a.0.cmp(b.0)));
        let neighbours: Vec<serde_json::Value> = fresh
            .into_iter()
            .take(MAX_NEIGHBOURS)
            .map(|(id, m)| {
                serde_json::json!({
                    "ip": m.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    "port": m.port,
                    "id": id.as_str(),
                    "can_test": 0,
                })
            })
            .collect();
        let json = serde_json::Value::Array(neighbours).to_string();
        Ok(Some(http::Response::json(200, json)))
    }
}

pub(super) fn success() -> http::Response {
    http::Response::text(200, "success")
}

/// PyP2P's clients expect the body `failure`; the reason goes in a header and the status.
pub(super) fn failure(status: u16, reason: &str) -> http::Response {
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(mailbox::MAX_ERROR_BYTES)
        .collect();
    http::Response::text(status, "failure").with_header("X-Dht-Msg-Error", &reason)
}

pub(super) fn param<T>(request: &http::Request, name: &str, verb: &str) -> Result<T, Denied>
where
    T: std::str::FromStr<Err = mailbox::WireError>,
{
    match request.query_param(name) {
        Some(value) if !value.is_empty() => parse_param(value, name, verb),
        _ => Err(Denied::new(
            400,
            format!("{verb}: missing parameter {name}"),
        )),
    }
}

pub(super) fn parse_param<T>(value: &str, name: &str, verb: &str) -> Result<T, Denied>
where
    T: std::str::FromStr<Err = mailbox::WireError>,
{
    value
        .parse()
        .map_err(|e| Denied::new(400, format!("{verb}: {name}: {e}")))
}
