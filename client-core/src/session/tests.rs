//! The session's stories, with scripted server frames and a fake clock: no socket, no
//! timer, no sleep. Each test reads like the wire.

use std::time::Duration;

use herald_protocol::{ChannelName, ErrorCode, HandshakeAuth, ProjectId, SystemMessageCode};
use serde_json::json;

use super::*;

const OPEN: &str =
    r#"0{"sid":"e1","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
const CONNECTED: &str = r#"40{"sid":"s1"}"#;

type Out = Output<String>;

struct Harness {
    s: Session<String>,
    now: Instant,
    conn: Option<ConnId>,
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("valid name")
}

fn config() -> Config {
    Config {
        auth: HandshakeAuth {
            project_id: ProjectId::parse("acme").expect("valid id"),
        },
        has_token_provider: true,
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        max_reconnect_attempts: None,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        seed: 7,
    }
}

impl Harness {
    fn new(config: Config) -> Self {
        Self {
            s: Session::new(config),
            now: Instant::default(),
            conn: None,
        }
    }

    /// A session connected to the scripted server.
    fn connected() -> Self {
        let mut h = Self::new(config());
        let id = h.s.connect(h.now);
        let out = h.accept_handshake();
        assert!(out.contains(&Output::Complete {
            request: id,
            result: Ok(())
        }));
        assert!(out.contains(&Output::State(State::Connected)), "{out:?}");
        h
    }

    fn drain(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(o) = self.s.poll_output() {
            if let Output::OpenTransport(conn) = o {
                self.conn = Some(conn);
            }
            out.push(o);
        }
        out
    }

    /// Moves the clock to the next timeout (at most `limit` ahead) and fires it.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(next) = self.s.next_timeout().filter(|t| *t <= target) {
            self.now = next.max(self.now);
            self.s.handle_timeout(self.now);
            if self.s.next_timeout() == Some(next) {
                break; // nothing changed at this instant
            }
        }
        self.now = target;
        self.s.handle_timeout(self.now);
    }

    fn frame(&mut self, text: &str) {
        let conn = self.conn.expect("a transport");
        self.s.transport_frame(self.now, conn, text);
    }

    /// Expects an `OpenTransport` among the pending outputs (already drained or not) and
    /// plays the server's side of the handshake.
    fn accept_handshake(&mut self) -> Vec<Out> {
        let mut out = self.drain();
        assert!(self.conn.is_some(), "no transport opened: {out:?}");
        self.frame(OPEN);
        let sent = self.drain();
        assert!(
            matches!(sent.as_slice(), [Output::Send(c)] if c.starts_with("40{")),
            "CONNECT expected: {sent:?}"
        );
        self.frame(CONNECTED);
        out.extend(self.drain());
        out
    }

    fn close_transport(&mut self, end: TransportEnd<String>) {
        let conn = self.conn.expect("a transport");
        self.s.transport_closed(self.now, conn, end);
    }
}

fn dropped() -> TransportEnd<String> {
    TransportEnd::Failed {
        error: "connection reset".into(),
        retryable: true,
    }
}

/// The `(ack id, event, body)` of every request frame among `out`.
fn requests(out: &[Out]) -> Vec<(i64, String, serde_json::Value)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(frame) => frame.strip_prefix("42"),
            _ => None,
        })
        .filter_map(|rest| {
            let split = rest.find('[')?;
            let ack: i64 = rest[..split].parse().ok()?;
            let value: serde_json::Value = serde_json::from_str(&rest[split..]).ok()?;
            Some((ack, value[0].as_str()?.to_owned(), value[1].clone()))
        })
        .collect()
}

fn ack_ok(ack: i64) -> String {
    format!(r#"43{ack}[{{"ok":true}}]"#)
}

fn ack_refused(ack: i64, code: &str) -> String {
    format!(r#"43{ack}[{{"ok":false,"code":"{code}","message":"no"}}]"#)
}

fn completion(out: &[Out], id: RequestId) -> Option<&Result<(), SessionError<String>>> {
    out.iter().find_map(|o| match o {
        Output::Complete { request, result } if *request == id => Some(result),
        _ => None,
    })
}

fn fetches(out: &[Out]) -> Vec<(FetchId, ChannelName)> {
    out.iter()
        .filter_map(|o| match o {
            Output::FetchToken { fetch, channel } => Some((*fetch, channel.clone())),
            _ => None,
        })
        .collect()
}

fn has_state(out: &[Out], pred: impl Fn(&State<String>) -> bool) -> bool {
    out.iter().any(|o| matches!(o, Output::State(s) if pred(s)))
}

/// Listens to `name` and acknowledges it.
fn listen_ok(h: &mut Harness, name: &str, token: Option<&str>) {
    let id = h.s.listen(h.now, channel(name), token.map(str::to_owned));
    let out = h.drain();
    let sent = requests(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    assert_eq!(sent[0].1, "listen");
    h.frame(&ack_ok(sent[0].0));
    assert_eq!(completion(&h.drain(), id), Some(&Ok(())));
}

#[test]
fn handshake_then_listen_and_receive() {
    let mut h = Harness::connected();
    let id = h.s.listen(h.now, channel("orders"), None);
    let out = h.drain();
    let sent = requests(&out);
    assert_eq!(sent[0].2, json!({"channelName": "orders"}));
    h.frame(&ack_ok(sent[0].0));
    assert_eq!(completion(&h.drain(), id), Some(&Ok(())));
    assert_eq!(
        h.s.channels().map(|c| c.as_str()).collect::<Vec<_>>(),
        ["orders"]
    );

    h.frame(r#"42["event",{"id":"m1","channelName":"orders","payload":{"n":1}}]"#);
    let out = h.drain();
    assert!(
        matches!(&out[..], [Output::Event(e)] if e.payload == json!({"n": 1}) && e.id.as_deref() == Some("m1")),
        "{out:?}"
    );
    h.frame("2");
    assert_eq!(
        h.drain(),
        [Output::Send("3".into())],
        "ping answered with pong"
    );
}

#[test]
fn refused_handshake_is_final_and_reports_the_code() {
    let mut h = Harness::new(config());
    let id = h.s.connect(h.now);
    h.drain();
    h.frame(OPEN);
    h.drain();
    h.frame(r#"44{"message":"unknown_project: project acme does not exist"}"#);
    let out = h.drain();
    assert!(matches!(
        completion(&out, id),
        Some(Err(SessionError::Refused {
            code: ErrorCode::UnknownProject,
            ..
        }))
    ));
    assert!(has_state(&out, |s| matches!(
        s,
        State::Closed { cause: Some(_) }
    )));
    assert!(out.contains(&Output::CloseTransport));
}

#[test]
fn reconnects_with_backoff_and_relistens_every_channel_with_fresh_tokens() {
    let mut h = Harness::connected();
    listen_ok(&mut h, "orders", None);
    // A private channel: the token comes from the provider.
    let id = h.s.listen(h.now, channel("private-u1"), None);
    let f = fetches(&h.drain());
    assert_eq!(f.len(), 1);
    h.s.token_ready(h.now, f[0].0, Ok("t1".into()));
    let sent = requests(&h.drain());
    assert_eq!(
        sent[0].2,
        json!({"channelName": "private-u1", "authToken": "t1"})
    );
    h.frame(&ack_ok(sent[0].0));
    assert_eq!(completion(&h.drain(), id), Some(&Ok(())));

    let first = h.conn;
    h.close_transport(dropped());
    let out = h.drain();
    let delay = out
        .iter()
        .find_map(|o| match o {
            Output::State(State::Reconnecting {
                attempt: 1, delay, ..
            }) => Some(*delay),
            _ => None,
        })
        .expect("reconnecting announced");
    assert!(delay >= Duration::from_millis(250) && delay <= Duration::from_millis(500));
    assert_eq!(h.conn, first, "no new transport before the delay");

    h.advance(delay);
    let out = h.accept_handshake();
    assert_ne!(h.conn, first, "a new transport");
    assert!(
        !has_state(&out, |s| *s == State::Connected),
        "not before re-listening"
    );
    // The public channel is re-listened at once; the private one asks for a fresh token.
    let sent = requests(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].2, json!({"channelName": "orders"}));
    let f = fetches(&out);
    assert_eq!(
        f.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        ["private-u1"]
    );
    h.frame(&ack_ok(sent[0].0));
    assert!(!has_state(&h.drain(), |s| *s == State::Connected));
    h.s.token_ready(h.now, f[0].0, Ok("t2".into()));
    let sent = requests(&h.drain());
    assert_eq!(
        sent[0].2,
        json!({"channelName": "private-u1", "authToken": "t2"})
    );
    h.frame(&ack_ok(sent[0].0));
    assert!(has_state(&h.drain(), |s| *s == State::Connected));
}

#[test]
fn backoff_grows_between_failed_attempts_and_gives_up_at_the_limit() {
    let mut h = Harness::new(Config {
        max_reconnect_attempts: Some(3),
        ..config()
    });
    h.s.connect(h.now);
    h.accept_handshake();
    h.drain();
    h.close_transport(dropped());
    let mut ceilings = Vec::new();
    for _ in 0..3 {
        let out = h.drain();
        let Some((attempt, delay)) = out.iter().find_map(|o| match o {
            Output::State(State::Reconnecting { attempt, delay, .. }) => Some((*attempt, *delay)),
            _ => None,
        }) else {
            panic!("{out:?}");
        };
        ceilings.push((attempt, delay));
        h.advance(delay);
        assert!(matches!(h.drain().as_slice(), [Output::OpenTransport(_)]));
        h.close_transport(dropped());
    }
    let attempts: Vec<u32> = ceilings.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3]);
    for ((_, delay), ceiling) in ceilings.iter().zip([500u64, 1000, 2000]) {
        let ceiling = Duration::from_millis(ceiling);
        assert!(
            *delay >= ceiling / 2 && *delay <= ceiling,
            "{delay:?} vs {ceiling:?}"
        );
    }
    let out = h.drain();
    assert!(
        has_state(&out, |s| matches!(
            s,
            State::Closed {
                cause: Some(SessionError::Driver(_))
            }
        )),
        "{out:?}"
    );
    assert!(h.s.is_closed());
}

#[test]
fn an_ack_that_never_comes_is_resent_then_times_out() {
    let mut h = Harness::connected();
    let id = h.s.listen(h.now, channel("orders"), None);
    let first = requests(&h.drain());
    // Sent again after 1 s, then 2 s and 4 s later, under new ack ids; fails at the 10 s
    // deadline.
    let mut resent = Vec::new();
    let mut all = Vec::new();
    while let Some(next) = h.s.next_timeout() {
        h.advance(next.saturating_since(h.now));
        let out = h.drain();
        resent.extend(requests(&out).into_iter().map(|(ack, ..)| (ack, h.now)));
        let done = completion(&out, id).is_some();
        all.extend(out);
        if done {
            break;
        }
    }
    let at: Vec<u128> = resent
        .iter()
        .map(|(_, t)| t.since_origin().as_millis())
        .collect();
    assert_eq!(at, [1000, 3000, 7000]);
    assert!(resent.iter().all(|(ack, _)| *ack > first[0].0));
    assert_eq!(h.now.since_origin(), Duration::from_secs(10));
    assert!(
        matches!(completion(&all, id), Some(Err(SessionError::Timeout(t))) if t == "after 10000 ms waiting for listen orders"),
        "{all:?}"
    );
    // A late answer to any of its ids changes nothing.
    h.frame(&ack_ok(first[0].0));
    h.frame(&ack_ok(resent[2].0));
    assert!(h.drain().is_empty());
    assert_eq!(h.s.channels().count(), 0);
}

#[test]
fn requests_wait_for_the_connection_and_time_out_if_it_does_not_come() {
    let mut h = Harness::connected();
    h.close_transport(dropped());
    h.drain();
    // Called while reconnecting: waits.
    let waiting = h.s.listen(h.now, channel("orders"), None);
    assert!(requests(&h.drain()).is_empty());
    let delay = Duration::from_millis(500);
    h.advance(delay);
    let out = h.accept_handshake();
    let sent = requests(&out);
    assert_eq!(sent.len(), 1, "sent on the new connection: {out:?}");
    h.frame(&ack_ok(sent[0].0));
    assert_eq!(completion(&h.drain(), waiting), Some(&Ok(())));

    // Now a connection that never comes back: the request fails at its deadline.
    h.close_transport(dropped());
    h.drain();
    let doomed = h.s.listen(h.now, channel("news"), None);
    let mut failed = None;
    for _ in 0..100 {
        h.advance(Duration::from_millis(500));
        for o in h.drain() {
            match o {
                Output::OpenTransport(_) => h.close_transport(dropped()),
                Output::Complete { request, result } if request == doomed => failed = Some(result),
                _ => {}
            }
        }
        if failed.is_some() {
            break;
        }
    }
    assert!(
        matches!(failed, Some(Err(SessionError::Timeout(_)))),
        "{failed:?}"
    );
}

#[test]
fn a_token_provider_that_fails_or_is_slow() {
    let mut h = Harness::connected();
    // Fails on listen: the request fails with the provider's error.
    let id = h.s.listen(h.now, channel("private-a"), None);
    let f = fetches(&h.drain());
    h.s.token_ready(h.now, f[0].0, Err("backend down".into()));
    assert_eq!(
        completion(&h.drain(), id),
        Some(&Err(SessionError::Driver("backend down".into())))
    );
    // Too slow on listen: the request times out, the late token is ignored.
    let id = h.s.listen(h.now, channel("private-b"), None);
    let f = fetches(&h.drain());
    h.advance(Duration::from_secs(10));
    assert!(matches!(
        completion(&h.drain(), id),
        Some(Err(SessionError::Timeout(_)))
    ));
    h.s.token_ready(h.now, f[0].0, Ok("late".into()));
    assert!(h.drain().is_empty(), "a late token sends nothing");

    // On re-listen: a failing provider drops that channel (RelistenFailed), a slow one too,
    // and Connected comes once both are settled.
    listen_ok(&mut h, "private-c", Some("t"));
    listen_ok(&mut h, "private-d", Some("t"));
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_millis(500));
    let out = h.accept_handshake();
    let f = fetches(&out);
    assert_eq!(f.len(), 2);
    h.s.token_ready(h.now, f[0].0, Err("nope".into()));
    let out = h.drain();
    assert!(out.iter().any(
        |o| matches!(o, Output::RelistenFailed { channel, .. } if channel.as_str() == "private-c")
    ));
    assert!(!has_state(&out, |s| *s == State::Connected));
    h.advance(Duration::from_secs(10));
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o, Output::RelistenFailed { channel, error: SessionError::Timeout(_) } if channel.as_str() == "private-d")), "{out:?}");
    assert!(has_state(&out, |s| *s == State::Connected));
    assert_eq!(h.s.channels().count(), 0);
}

#[test]
fn no_token_provider_fails_private_listens_at_once() {
    let mut h = Harness::new(Config {
        has_token_provider: false,
        ..config()
    });
    h.s.connect(h.now);
    h.accept_handshake();
    h.drain();
    let id = h.s.listen(h.now, channel("private-a"), None);
    let out = h.drain();
    let result = completion(&out, id).expect("completed");
    assert!(matches!(result, Err(e) if e.code() == Some(ErrorCode::TokenMissing)));
    // With a token given, re-listens reuse it.
    listen_ok(&mut h, "private-b", Some("given"));
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_millis(500));
    let sent = requests(&h.accept_handshake());
    assert_eq!(
        sent[0].2,
        json!({"channelName": "private-b", "authToken": "given"})
    );
}

#[test]
fn a_frame_of_the_old_transport_during_reconnect_is_ignored() {
    let mut h = Harness::connected();
    listen_ok(&mut h, "orders", None);
    let old = h.conn.expect("conn");
    h.close_transport(dropped());
    h.drain();
    h.s.transport_frame(
        h.now,
        old,
        r#"42["event",{"id":"m1","channelName":"orders","payload":1}]"#,
    );
    assert!(h.drain().is_empty(), "no event from an abandoned socket");
    h.advance(Duration::from_millis(500));
    let out = h.accept_handshake();
    // An event that arrives on the new socket before the re-listen is answered is delivered.
    h.frame(r#"42["event",{"id":"m2","channelName":"orders","payload":2}]"#);
    assert!(matches!(h.drain().as_slice(), [Output::Event(e)] if e.payload == json!(2)));
    // The old transport's late close changes nothing.
    h.s.transport_closed(h.now, old, dropped());
    assert!(h.drain().is_empty());
    let _ = out;
}

#[test]
fn a_slow_consumer_close_reconnects_at_once_and_relistens() {
    let mut h = Harness::connected();
    listen_ok(&mut h, "orders", None);
    h.frame(r#"42["system_message",{"code":"Error","message":"you did not read","data":{"errorCode":"slow_consumer"}}]"#);
    let out = h.drain();
    assert!(matches!(&out[0], Output::System(m) if m.code == SystemMessageCode::Error));
    assert!(out.contains(&Output::CloseTransport));
    assert!(
        has_state(&out, |s| matches!(
            s,
            State::Reconnecting { attempt: 1, cause, .. } if cause.code() == Some(ErrorCode::SlowConsumer)
        )),
        "{out:?}"
    );
    // The 4008 close arriving afterwards belongs to the abandoned socket.
    h.close_transport(TransportEnd::Closed {
        code: Some(4008),
        reason: "slow_consumer".into(),
    });
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(500));
    let sent = requests(&h.accept_handshake());
    assert_eq!(sent[0].2, json!({"channelName": "orders"}));
}

#[test]
fn a_4008_close_without_the_message_is_a_slow_consumer_loss() {
    let mut h = Harness::connected();
    h.close_transport(TransportEnd::Closed {
        code: Some(4008),
        reason: "slow_consumer".into(),
    });
    let out = h.drain();
    assert!(has_state(&out, |s| matches!(
        s,
        State::Reconnecting { cause, .. } if cause.code() == Some(ErrorCode::SlowConsumer)
    )));
}

#[test]
fn removed_from_channel_while_it_is_being_relistened() {
    let mut h = Harness::connected();
    listen_ok(&mut h, "private-a", Some("t"));
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_millis(500));
    let f = fetches(&h.accept_handshake());
    h.s.token_ready(h.now, f[0].0, Ok("t2".into()));
    let relisten = requests(&h.drain());
    // The key is revoked while the re-listen is on its way.
    h.frame(r#"42["system_message",{"code":"RemovedFromChannel","message":"key deleted","data":{"channels":["private-a"]}}]"#);
    let out = h.drain();
    assert!(
        matches!(&out[..], [Output::System(m)] if m.code == SystemMessageCode::RemovedFromChannel)
    );
    assert_eq!(h.s.channels().count(), 0);
    // The server accepted the re-listen before it learnt of the revocation: undo it quietly.
    h.frame(&ack_ok(relisten[0].0));
    let out = h.drain();
    let sent = requests(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    assert_eq!(sent[0].1, "remove");
    assert!(has_state(&out, |s| *s == State::Connected));
    // And the next reconnection does not listen to it again.
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_millis(500));
    let out = h.accept_handshake();
    assert!(requests(&out).is_empty() && fetches(&out).is_empty());
    assert!(has_state(&out, |s| *s == State::Connected));
}

#[test]
fn a_refused_relisten_is_reported_and_dropped() {
    let mut h = Harness::connected();
    listen_ok(&mut h, "private-a", Some("t"));
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_millis(500));
    let f = fetches(&h.accept_handshake());
    h.s.token_ready(h.now, f[0].0, Ok("expired".into()));
    let sent = requests(&h.drain());
    h.frame(&ack_refused(sent[0].0, "token_expired"));
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::RelistenFailed {
            error: SessionError::Refused {
                code: ErrorCode::TokenExpired,
                ..
            },
            ..
        }
    )));
    assert!(has_state(&out, |s| *s == State::Connected));
}

#[test]
fn a_refused_listen_gives_the_server_code() {
    let mut h = Harness::connected();
    let id = h.s.listen(h.now, channel("private-a"), Some("bad".into()));
    let sent = requests(&h.drain());
    h.frame(&ack_refused(sent[0].0, "token_malformed"));
    assert!(matches!(
        completion(&h.drain(), id),
        Some(Err(SessionError::Refused {
            code: ErrorCode::TokenMalformed,
            ..
        }))
    ));
    assert_eq!(h.s.channels().count(), 0);
}

#[test]
fn silence_beyond_the_heartbeat_limit_is_a_lost_connection() {
    let mut h = Harness::connected();
    h.advance(Duration::from_secs(44));
    h.frame("2");
    h.drain();
    h.advance(Duration::from_secs(44));
    assert!(h.drain().is_empty(), "a ping reset the silence clock");
    h.advance(Duration::from_secs(2));
    let out = h.drain();
    assert!(
        has_state(&out, |s| matches!(
            s,
            State::Reconnecting {
                cause: SessionError::Timeout(t),
                ..
            } if t == "no heartbeat from the server for 45000 ms"
        )),
        "{out:?}"
    );
    assert!(out.contains(&Output::CloseTransport));
}

#[test]
fn a_handshake_that_hangs_times_out_and_retries() {
    let mut h = Harness::connected();
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_millis(500));
    assert!(matches!(h.drain().as_slice(), [Output::OpenTransport(_)]));
    h.advance(Duration::from_secs(5));
    let out = h.drain();
    assert!(out.contains(&Output::CloseTransport));
    assert!(
        has_state(&out, |s| matches!(
            s,
            State::Reconnecting {
                attempt: 2,
                cause: SessionError::Timeout(_),
                ..
            }
        )),
        "{out:?}"
    );
}

#[test]
fn close_is_polite_and_fails_what_waits() {
    let mut h = Harness::connected();
    let id = h.s.listen(h.now, channel("orders"), None);
    h.drain();
    h.s.close(h.now);
    let out = h.drain();
    assert_eq!(out[0], Output::Send("41".into()));
    assert_eq!(out[1], Output::CloseTransport);
    assert_eq!(completion(&out, id), Some(&Err(SessionError::Closed)));
    assert!(has_state(&out, |s| *s == State::Closed { cause: None }));
    h.s.close(h.now);
    assert!(h.drain().is_empty(), "closing twice is harmless");
    let late = h.s.listen(h.now, channel("orders"), None);
    assert_eq!(
        completion(&h.drain(), late),
        Some(&Err(SessionError::Closed))
    );
    assert_eq!(h.s.next_timeout(), None, "no timer after close");
}

#[test]
fn a_failed_first_attempt_fails_connect_and_allows_another() {
    let mut h = Harness::new(config());
    let id = h.s.connect(h.now);
    h.drain();
    h.close_transport(dropped());
    let out = h.drain();
    assert_eq!(
        completion(&out, id),
        Some(&Err(SessionError::Driver("connection reset".into())))
    );
    assert!(has_state(&out, |s| matches!(
        s,
        State::Closed { cause: Some(_) }
    )));
    assert!(!h.s.is_closed(), "connect may be called again");
    let again = h.s.connect(h.now);
    let out = h.accept_handshake();
    assert_eq!(completion(&out, again), Some(&Ok(())));
}

#[test]
fn remove_while_disconnected_succeeds_and_is_not_relistened() {
    let mut h = Harness::connected();
    listen_ok(&mut h, "orders", None);
    listen_ok(&mut h, "news", None);
    h.close_transport(dropped());
    h.drain();
    let id = h.s.remove(h.now, channel("orders"));
    assert_eq!(completion(&h.drain(), id), Some(&Ok(())));
    h.advance(Duration::from_millis(500));
    let sent = requests(&h.accept_handshake());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].2, json!({"channelName": "news"}));
}

#[test]
fn an_unanswered_listen_moves_to_the_next_connection() {
    let mut h = Harness::connected();
    let id = h.s.listen(h.now, channel("orders"), None);
    h.drain();
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_millis(500));
    let sent = requests(&h.accept_handshake());
    assert_eq!(sent.len(), 1);
    h.frame(&ack_ok(sent[0].0));
    assert_eq!(completion(&h.drain(), id), Some(&Ok(())));
}

#[test]
fn undecodable_frames_are_skipped() {
    let mut h = Harness::connected();
    for junk in ["", "9", "42[", "42[\"event\",{}]", "\u{0}"] {
        h.frame(junk);
    }
    assert!(h.drain().is_empty());
    h.frame("2");
    assert_eq!(h.drain(), [Output::Send("3".into())]);
}

// --- positions and recovery ---------------------------------------------------------------

/// An event frame of `name` at `offset` in `epoch`.
fn event_at(name: &str, offset: u64, epoch: &str) -> String {
    format!(
        r#"42["event",{{"id":"m{offset}","channelName":"{name}","payload":{offset},"offset":{offset},"epoch":"{epoch}"}}]"#
    )
}

/// Listens to `name`; the ack answers `ack_body` (e.g. a position).
fn listen_with_ack(h: &mut Harness, name: &str, ack_body: &str) {
    let id = h.s.listen(h.now, channel(name), None);
    let sent = requests(&h.drain());
    h.frame(&format!("43{}[{ack_body}]", sent[0].0));
    assert_eq!(completion(&h.drain(), id), Some(&Ok(())));
}

/// Drops the transport and reconnects; answers nothing yet. The re-listen requests sent.
fn reconnect(h: &mut Harness) -> Vec<(i64, String, serde_json::Value)> {
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_secs(1));
    let out = h.accept_handshake();
    requests(&out)
}

fn recoveries(out: &[Out]) -> Vec<(String, bool, Option<&'static str>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Recovery(r) => Some((
                r.channel.as_str().to_owned(),
                r.recovered,
                r.reason.map(RecoveryReason::as_str),
            )),
            _ => None,
        })
        .collect()
}

fn event_offsets(out: &[Out]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => e.offset.map(|o| o.get()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_reconnect_recovers_from_the_last_event_seen() {
    let mut h = Harness::connected();
    listen_with_ack(&mut h, "orders", r#"{"ok":true,"epoch":"e1","offset":2}"#);
    for n in 3..=4 {
        h.frame(&event_at("orders", n, "e1"));
    }
    assert_eq!(event_offsets(&h.drain()), [3, 4]);

    let sent = reconnect(&mut h);
    assert_eq!(
        sent[0].2,
        json!({"channelName": "orders", "since": {"offset": 4, "epoch": "e1"}}),
        "the session sends since by itself"
    );
    // The server replays the missed events before the ack, then says recovered.
    for n in 5..=6 {
        h.frame(&event_at("orders", n, "e1"));
    }
    h.frame(&format!(
        r#"43{}[{{"ok":true,"recovered":true,"epoch":"e1","offset":6}}]"#,
        sent[0].0
    ));
    let out = h.drain();
    assert_eq!(event_offsets(&out), [5, 6]);
    assert_eq!(recoveries(&out), [("orders".to_owned(), true, None)]);
    let recovery_at = out.iter().position(|o| matches!(o, Output::Recovery(_)));
    let connected_at = out
        .iter()
        .position(|o| *o == Output::State(State::Connected));
    assert!(
        recovery_at < connected_at,
        "the outcome comes before Connected: {out:?}"
    );

    // The next reconnect continues from there.
    h.frame(&event_at("orders", 7, "e1"));
    h.drain();
    let sent = reconnect(&mut h);
    assert_eq!(sent[0].2["since"], json!({"offset": 7, "epoch": "e1"}));
}

#[test]
fn a_reconnect_that_cannot_recover_reports_each_reason() {
    for reason in ["history_expired", "epoch_changed", "history_disabled"] {
        let mut h = Harness::connected();
        listen_with_ack(&mut h, "orders", r#"{"ok":true,"epoch":"e1","offset":0}"#);
        h.frame(&event_at("orders", 1, "e1"));
        h.drain();
        let sent = reconnect(&mut h);
        assert_eq!(sent[0].2["since"], json!({"offset": 1, "epoch": "e1"}));
        let position = if reason == "history_disabled" {
            String::new()
        } else {
            r#","epoch":"e2","offset":3"#.to_owned()
        };
        h.frame(&format!(
            r#"43{}[{{"ok":true,"recovered":false,"reason":"{reason}"{position}}}]"#,
            sent[0].0
        ));
        let out = h.drain();
        assert_eq!(
            recoveries(&out),
            [("orders".to_owned(), false, Some(reason))],
            "{reason}"
        );
        assert!(has_state(&out, |s| *s == State::Connected));
        // The session continues from the channel's new position (or holds none).
        let sent = reconnect(&mut h);
        if reason == "history_disabled" {
            assert_eq!(sent[0].2, json!({"channelName": "orders"}));
        } else {
            assert_eq!(sent[0].2["since"], json!({"offset": 3, "epoch": "e2"}));
        }
    }
}

#[test]
fn no_position_known_relistens_plainly_and_says_it_could_not_recover() {
    let mut h = Harness::connected();
    // History off: a plain ack, events without offsets.
    listen_ok(&mut h, "orders", None);
    h.frame(r#"42["event",{"id":"m1","channelName":"orders","payload":1}]"#);
    h.drain();
    let sent = reconnect(&mut h);
    assert_eq!(sent[0].2, json!({"channelName": "orders"}), "no since");
    h.frame(&ack_ok(sent[0].0));
    let out = h.drain();
    assert_eq!(
        recoveries(&out),
        [("orders".to_owned(), false, Some("history_disabled"))]
    );
}

#[test]
fn a_plain_listen_ack_gives_the_position_before_any_event() {
    let mut h = Harness::connected();
    listen_with_ack(&mut h, "orders", r#"{"ok":true,"epoch":"e1","offset":0}"#);
    // Nothing received, then the connection drops: the ack's position is presented.
    let sent = reconnect(&mut h);
    assert_eq!(
        sent[0].2,
        json!({"channelName": "orders", "since": {"offset": 0, "epoch": "e1"}})
    );
    h.frame(&event_at("orders", 1, "e1"));
    h.frame(&format!(
        r#"43{}[{{"ok":true,"recovered":true,"epoch":"e1","offset":1}}]"#,
        sent[0].0
    ));
    let out = h.drain();
    assert_eq!(event_offsets(&out), [1]);
    assert_eq!(recoveries(&out), [("orders".to_owned(), true, None)]);
}

#[test]
fn live_events_sent_before_the_ack_are_not_taken_back_by_it() {
    let mut h = Harness::connected();
    let id = h.s.listen(h.now, channel("orders"), None);
    let sent = requests(&h.drain());
    // The ack said offset 5 but event 6 overtook it.
    h.frame(&event_at("orders", 6, "e1"));
    h.frame(&format!(
        r#"43{}[{{"ok":true,"epoch":"e1","offset":5}}]"#,
        sent[0].0
    ));
    let out = h.drain();
    assert_eq!(completion(&out, id), Some(&Ok(())));
    assert_eq!(
        recoveries(&out),
        [],
        "no gap while the listen was unanswered"
    );
    let sent = reconnect(&mut h);
    assert_eq!(sent[0].2["since"], json!({"offset": 6, "epoch": "e1"}));
}

#[test]
fn a_gap_in_offsets_is_reported_and_the_event_still_delivered() {
    let mut h = Harness::connected();
    listen_with_ack(&mut h, "orders", r#"{"ok":true,"epoch":"e1","offset":0}"#);
    h.frame(&event_at("orders", 1, "e1"));
    h.frame(&event_at("orders", 2, "e1"));
    assert_eq!(recoveries(&h.drain()), []);
    h.frame(&event_at("orders", 5, "e1"));
    let out = h.drain();
    assert_eq!(
        recoveries(&out),
        [("orders".to_owned(), false, Some("offset_gap"))]
    );
    assert!(
        matches!(&out[..], [Output::Recovery(_), Output::Event(e)] if e.offset.map(|o| o.get()) == Some(5)),
        "reported just before the event: {out:?}"
    );
    // An offset at or below the last one is delivered and reports nothing.
    h.frame(&event_at("orders", 5, "e1"));
    let out = h.drain();
    assert_eq!((event_offsets(&out), recoveries(&out)), (vec![5], vec![]));
    // A new epoch starting at 1 is no gap; one starting above 1 is.
    h.frame(&event_at("orders", 1, "e2"));
    assert_eq!(recoveries(&h.drain()), []);
    h.frame(&event_at("orders", 3, "e3"));
    assert_eq!(
        recoveries(&h.drain()),
        [("orders".to_owned(), false, Some("offset_gap"))]
    );
}

#[test]
fn event_frames_with_a_trailing_extra_argument_are_read() {
    let mut h = Harness::connected();
    listen_with_ack(&mut h, "orders", r#"{"ok":true,"epoch":"e1","offset":16}"#);
    // socket.io-client's own recovery appends the offset as a last argument.
    h.frame(
        r#"42["event",{"id":"m17","channelName":"orders","payload":{"n":17},"offset":17,"epoch":"e1"},"17:orders"]"#,
    );
    let out = h.drain();
    assert!(
        matches!(&out[..], [Output::Event(e)] if e.payload == json!({"n": 17}) && e.offset.map(|o| o.get()) == Some(17)),
        "{out:?}"
    );
    let sent = reconnect(&mut h);
    assert_eq!(sent[0].2["since"], json!({"offset": 17, "epoch": "e1"}));
}

#[test]
fn a_removed_channel_forgets_its_position() {
    let mut h = Harness::connected();
    listen_with_ack(&mut h, "orders", r#"{"ok":true,"epoch":"e1","offset":4}"#);
    let id = h.s.remove(h.now, channel("orders"));
    let sent = requests(&h.drain());
    h.frame(&ack_ok(sent[0].0));
    assert_eq!(completion(&h.drain(), id), Some(&Ok(())));
    listen_ok(&mut h, "orders", None);
    let sent = reconnect(&mut h);
    assert_eq!(sent[0].2, json!({"channelName": "orders"}));
}

// --- presence ---------------------------------------------------------------------------

const ROOM: &str = "presence-room";

fn member_json(user: &str) -> String {
    format!(r#"{{"userId":"{user}","info":{{"name":"{user}"}}}}"#)
}

fn snapshot_ack(ack: i64, users: &[&str], version: u64) -> String {
    let members: Vec<String> = users.iter().map(|u| member_json(u)).collect();
    format!(
        r#"43{ack}[{{"ok":true,"members":[{}],"presenceVersion":{version}}}]"#,
        members.join(",")
    )
}

fn presence_frame(action: &str, user: &str, version: u64) -> String {
    format!(
        r#"42["presence",{{"channelName":"{ROOM}","action":"{action}","member":{},"version":{version}}}]"#,
        member_json(user)
    )
}

fn member_ids(h: &Harness) -> Vec<String> {
    h.s.members(&channel(ROOM))
        .into_iter()
        .map(|m| m.user_id.as_str().to_owned())
        .collect()
}

/// The `(action, user)` of every `Output::Presence`, and the member lists of every
/// `Output::PresenceSynced`.
fn presence_outputs(out: &[Out]) -> (Vec<(&'static str, String)>, Vec<Vec<String>>) {
    let mut changes = Vec::new();
    let mut syncs = Vec::new();
    for o in out {
        match o {
            Output::Presence(c) => {
                changes.push((c.action.as_str(), c.member.user_id.as_str().to_owned()))
            }
            Output::PresenceSynced { members, .. } => syncs.push(
                members
                    .iter()
                    .map(|m| m.user_id.as_str().to_owned())
                    .collect(),
            ),
            _ => {}
        }
    }
    (changes, syncs)
}

/// Listens to the presence room with a token; the ack is a snapshot of `users` at `version`.
fn listen_presence(h: &mut Harness, users: &[&str], version: u64) -> Vec<Out> {
    let id = h.s.listen(h.now, channel(ROOM), Some("t".into()));
    let sent = requests(&h.drain());
    h.frame(&snapshot_ack(sent[0].0, users, version));
    let out = h.drain();
    assert_eq!(completion(&out, id), Some(&Ok(())));
    out
}

#[test]
fn the_listen_ack_gives_the_members_and_events_move_them_in_order() {
    let mut h = Harness::connected();
    let out = listen_presence(&mut h, &["ann", "me"], 4);
    assert_eq!(presence_outputs(&out).1, [vec!["ann", "me"]]);
    assert_eq!(member_ids(&h), ["ann", "me"]);
    // The synced list comes before the listen completes (the caller sees the members).
    let synced = out
        .iter()
        .position(|o| matches!(o, Output::PresenceSynced { .. }));
    let complete = out
        .iter()
        .position(|o| matches!(o, Output::Complete { .. }));
    assert!(synced < complete, "{out:?}");

    h.frame(&presence_frame("member_added", "bob", 5));
    h.frame(&presence_frame("member_removed", "ann", 6));
    let out = h.drain();
    assert_eq!(
        presence_outputs(&out).0,
        [
            ("member_added", "bob".to_owned()),
            ("member_removed", "ann".to_owned())
        ]
    );
    assert_eq!(member_ids(&h), ["bob", "me"]);
    assert!(
        requests(&out).is_empty(),
        "no re-sync without a gap: {out:?}"
    );
    // The info travels with the member.
    let bob = h.s.members(&channel(ROOM)).remove(0);
    assert_eq!(bob.info.map(|i| i.to_value()), Some(json!({"name": "bob"})));
}

#[test]
fn stale_presence_events_are_ignored() {
    let mut h = Harness::connected();
    listen_presence(&mut h, &["ann", "me"], 4);
    // Already in the snapshot (version 4 and before): a late delivery changes nothing.
    h.frame(&presence_frame("member_removed", "ann", 4));
    h.frame(&presence_frame("member_added", "old", 2));
    h.frame(&presence_frame("member_added", "cy", 5));
    // 5 again (a duplicate from another instance): stale now.
    h.frame(&presence_frame("member_removed", "cy", 5));
    let out = h.drain();
    assert_eq!(
        presence_outputs(&out).0,
        [("member_added", "cy".to_owned())]
    );
    assert_eq!(member_ids(&h), ["ann", "cy", "me"]);
}

#[test]
fn a_gap_in_versions_is_applied_then_resynced_with_a_presence_query() {
    let mut h = Harness::connected();
    listen_presence(&mut h, &["ann", "me"], 4);
    // Version 5 (bob joined) is missing: 6 is applied, then the channel is re-synced.
    h.frame(&presence_frame("member_added", "cy", 6));
    let out = h.drain();
    assert_eq!(
        presence_outputs(&out).0,
        [("member_added", "cy".to_owned())]
    );
    let sent = requests(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    assert_eq!(
        (sent[0].1.as_str(), &sent[0].2),
        ("presence", &json!({"channelName": ROOM}))
    );
    assert_eq!(member_ids(&h), ["ann", "cy", "me"]);
    // A second gap while the query is out asks nothing more yet.
    h.frame(&presence_frame("member_added", "dee", 8));
    assert!(requests(&h.drain()).is_empty());
    // The answer is at version 6, older than the 8 applied since: not taken (the list would
    // go back), and asked again since a gap was seen while it was out.
    h.frame(&snapshot_ack(sent[0].0, &["ann", "bob", "cy", "me"], 6));
    let out = h.drain();
    assert_eq!(presence_outputs(&out).1, Vec::<Vec<String>>::new());
    assert_eq!(member_ids(&h), ["ann", "cy", "dee", "me"]);
    let again = requests(&out);
    assert_eq!(again.len(), 1, "{out:?}");
    assert_eq!(again[0].1, "presence");
    // The second answer replaces the list: bob and eve, whose events never came, are in it.
    h.frame(&snapshot_ack(
        again[0].0,
        &["ann", "bob", "cy", "dee", "eve", "me"],
        9,
    ));
    let out = h.drain();
    assert_eq!(
        presence_outputs(&out).1,
        [vec!["ann", "bob", "cy", "dee", "eve", "me"]]
    );
    assert!(requests(&out).is_empty(), "{out:?}");
    assert_eq!(member_ids(&h), ["ann", "bob", "cy", "dee", "eve", "me"]);
}

#[test]
fn events_before_the_listen_ack_are_buffered_and_filtered_by_its_version() {
    let mut h = Harness::connected();
    let id = h.s.listen(h.now, channel(ROOM), Some("t".into()));
    let sent = requests(&h.drain());
    // The server joined the socket, then transitions overtook the ack (out of order too).
    h.frame(&presence_frame("member_added", "dee", 7));
    h.frame(&presence_frame("member_added", "bob", 5)); // in the snapshot already
    h.frame(&presence_frame("member_added", "cy", 6));
    let out = h.drain();
    assert_eq!(
        presence_outputs(&out),
        (vec![], vec![]),
        "held until the ack"
    );
    assert!(member_ids(&h).is_empty());
    h.frame(&snapshot_ack(sent[0].0, &["ann", "bob", "me"], 5));
    let out = h.drain();
    assert_eq!(completion(&out, id), Some(&Ok(())));
    let (changes, syncs) = presence_outputs(&out);
    assert_eq!(syncs, [vec!["ann", "bob", "me"]]);
    assert_eq!(
        changes,
        [
            ("member_added", "cy".to_owned()),
            ("member_added", "dee".to_owned())
        ]
    );
    assert!(requests(&out).is_empty(), "6 and 7 follow 5: {out:?}");
    assert_eq!(member_ids(&h), ["ann", "bob", "cy", "dee", "me"]);
}

#[test]
fn presence_events_of_a_channel_not_listened_to_are_ignored() {
    let mut h = Harness::connected();
    h.frame(&presence_frame("member_added", "bob", 1));
    assert_eq!(presence_outputs(&h.drain()), (vec![], vec![]));
    assert!(member_ids(&h).is_empty());
    listen_presence(&mut h, &["me"], 1);
    let id = h.s.remove(h.now, channel(ROOM));
    let sent = requests(&h.drain());
    h.frame(&ack_ok(sent[0].0));
    assert_eq!(completion(&h.drain(), id), Some(&Ok(())));
    assert!(
        member_ids(&h).is_empty(),
        "a removed channel has no members"
    );
    h.frame(&presence_frame("member_added", "bob", 2));
    assert_eq!(presence_outputs(&h.drain()), (vec![], vec![]));
}

#[test]
fn a_reconnect_resyncs_presence_from_the_relisten_ack() {
    let mut h = Harness::connected();
    listen_presence(&mut h, &["ann", "bob", "me"], 4);
    h.close_transport(dropped());
    h.drain();
    // While down, the list is the last one known.
    assert_eq!(member_ids(&h), ["ann", "bob", "me"]);
    h.advance(Duration::from_secs(1));
    let out = h.accept_handshake();
    let wanted = fetches(&out);
    assert_eq!(wanted.len(), 1, "a fresh token for the re-listen: {out:?}");
    h.s.token_ready(h.now, wanted[0].0, Ok("t2".into()));
    let sent = requests(&h.drain());
    assert_eq!(sent[0].1, "listen");
    // A transition after the re-join overtakes the ack: buffered.
    h.frame(&presence_frame("member_added", "eve", 8));
    assert_eq!(presence_outputs(&h.drain()), (vec![], vec![]));
    // Bob left and cy joined while the client was away (versions 5 to 7, never replayed):
    // the snapshot has it, and nothing older than it is applied.
    h.frame(&snapshot_ack(sent[0].0, &["ann", "cy", "me"], 7));
    let out = h.drain();
    let (changes, syncs) = presence_outputs(&out);
    assert_eq!(syncs, [vec!["ann", "cy", "me"]]);
    assert_eq!(changes, [("member_added", "eve".to_owned())]);
    assert!(has_state(&out, |s| *s == State::Connected), "{out:?}");
    let synced = out
        .iter()
        .position(|o| matches!(o, Output::PresenceSynced { .. }));
    let connected = out
        .iter()
        .position(|o| matches!(o, Output::State(State::Connected)));
    assert!(synced < connected, "re-synced before Connected: {out:?}");
    assert_eq!(member_ids(&h), ["ann", "cy", "eve", "me"]);
    // Old versions from before the disconnection are stale against the new snapshot.
    h.frame(&presence_frame("member_removed", "ann", 6));
    assert_eq!(presence_outputs(&h.drain()), (vec![], vec![]));
    assert_eq!(member_ids(&h), ["ann", "cy", "eve", "me"]);
}

#[test]
fn a_query_lost_with_the_connection_is_not_applied_after_the_resync() {
    let mut h = Harness::connected();
    listen_presence(&mut h, &["me"], 1);
    h.frame(&presence_frame("member_added", "bob", 3));
    let query = requests(&h.drain());
    assert_eq!(query[0].1, "presence");
    h.close_transport(dropped());
    h.drain();
    h.advance(Duration::from_secs(1));
    let out = h.accept_handshake();
    let wanted = fetches(&out);
    h.s.token_ready(h.now, wanted[0].0, Ok("t2".into()));
    let sent = requests(&h.drain());
    assert_eq!(
        sent.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(),
        ["listen"],
        "the query is not sent again: the re-listen re-syncs"
    );
    h.frame(&snapshot_ack(sent[0].0, &["me"], 4));
    h.drain();
    assert_eq!(member_ids(&h), ["me"]);
}
