//! The public listener's timeouts and connection caps (docs/PROTOCOL.md § Limits), against the
//! real binary with raw TCP sockets: an idle connection, slowloris headers, a slow body, an
//! idle keep-alive, a refused upload, the per-address cap, and a client holding every socket it can under a low
//! open-file limit while health keeps answering.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herald_e2e::Herald;
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HEADER: Duration = Duration::from_secs(1);
const BODY: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);
/// A timeout never fires this much early (the clock starts at the accept, after our connect).
const EARLY: Duration = Duration::from_millis(150);

const TIMEOUT_FLAGS: &[&str] = &[
    "--header-read-timeout-secs",
    "1",
    "--body-read-timeout-secs",
    "1",
    "--idle-timeout-secs",
    "2",
];

fn server_addr(h: &Herald) -> anyhow::Result<SocketAddr> {
    Ok(h.url.trim_start_matches("http://").parse()?)
}

/// A connection from `local` (any 127/8 address is loopback).
async fn connect_from(local: &str, server: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{local}:0").parse()?)?;
    Ok(socket.connect(server).await?)
}

/// Reads until the server closes the connection: when (since `from`) and what it sent, or
/// `None` if it is still open `bound` after `from`.
async fn closed_by(
    stream: &mut (impl AsyncRead + Unpin),
    from: Instant,
    bound: Duration,
) -> Option<(Duration, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(from + bound);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((from.elapsed(), String::from_utf8_lossy(&got).into_owned()));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `GET path` on a kept-alive connection and reads one response: status and body.
async fn get(
    stream: &mut TcpStream,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: herald\r\n{auth}\r\n").as_bytes())
        .await?;
    let (status, _, body) = read_response(stream).await?;
    Ok((status, body))
}

/// Reads one response from a kept-alive connection: status, lower-cased head and body.
async fn read_response(stream: &mut TcpStream) -> anyhow::Result<(u16, String, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .context("no answer within 5 s")??;
        if n == 0 {
            bail!(
                "closed before answering: {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse())
        .transpose()?
        .unwrap_or(0);
    while got.len() < head_end + length {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .context("body not complete within 5 s")??;
        if n == 0 {
            bail!("closed mid-body");
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok((
        status,
        head,
        String::from_utf8_lossy(&got[head_end..head_end + length]).into_owned(),
    ))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The value of one metric line (`name{labels}`), 0 when absent.
async fn metric(metrics_url: &str, series: &str) -> anyhow::Result<f64> {
    let text = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(metrics_url)
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0))
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_timeout() -> anyhow::Result<()> {
    let h = Herald::start(TIMEOUT_FLAGS).await?;
    let from = Instant::now();
    let mut s = TcpStream::connect(server_addr(&h)?).await?;
    let (after, _) = closed_by(&mut s, from, HEADER + SLACK)
        .await
        .context("a connection that sends nothing is still open after the header timeout")?;
    assert!(
        after >= HEADER - EARLY,
        "closed after {after:?}, before the timeout"
    );
    Ok(())
}

#[tokio::test]
async fn slowloris_headers_are_cut_at_the_header_timeout() -> anyhow::Result<()> {
    let h = Herald::start(TIMEOUT_FLAGS).await?;
    let s = TcpStream::connect(server_addr(&h)?).await?;
    let (mut reader, mut writer) = s.into_split();
    let from = Instant::now();
    writer
        .write_all(b"GET /livez HTTP/1.1\r\nHost: herald\r\n")
        .await?;
    // One more header byte every 300 ms, never the end of the head.
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if writer.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let closed = closed_by(&mut reader, from, HEADER + SLACK).await;
    trickle.abort();
    let (after, sent) =
        closed.context("a head trickling in a byte at a time is still open after the timeout")?;
    assert!(after >= HEADER - EARLY, "closed after {after:?}");
    assert!(!sent.contains(" 200 "), "never answered: {sent:?}");
    Ok(())
}

#[tokio::test]
async fn a_slow_body_gets_408_and_the_connection_closes() -> anyhow::Result<()> {
    let h = Herald::start(TIMEOUT_FLAGS).await?;
    let s = TcpStream::connect(server_addr(&h)?).await?;
    let (mut reader, mut writer) = s.into_split();
    let head = format!(
        "POST /v1/admin/projects HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        h.admin_token
    );
    writer.write_all(head.as_bytes()).await?;
    let from = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..1000 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let closed = closed_by(&mut reader, from, BODY + SLACK).await;
    trickle.abort();
    let (after, sent) = closed.context("a body trickling in is still open after the timeout")?;
    assert!(after >= BODY - EARLY, "answered after {after:?}");
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent:?}");
    assert!(sent.contains(r#""code":"request_timeout""#), "{sent:?}");
    assert!(
        sent.to_lowercase().contains("connection: close"),
        "{sent:?}"
    );
    Ok(())
}

/// A refused upload (`413`) is read to its end before the answer, so the client gets the
/// answer (not a reset while it is still sending) and the connection serves its next request;
/// one over the drain cap is answered at once and closed.
#[tokio::test]
async fn a_refused_upload_gets_its_answer_and_keeps_the_connection() -> anyhow::Result<()> {
    let h = Herald::start(&["--max-payload-bytes", "1024"]).await?;
    h.create_project("uploads").await?;
    let key = h.create_key("uploads", &["publish_event"], None).await?;
    let key = key["key"].as_str().context("no key")?.to_owned();
    let head = |length: usize| {
        format!(
            "POST /v1/publishers/events/publish HTTP/1.1\r\nHost: herald\r\n\
             Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\n\r\n"
        )
    };
    let payload = "x".repeat(1_000_000);
    let body = format!(r#"{{"channelName":"orders","payload":"{payload}"}}"#);

    let mut s = TcpStream::connect(server_addr(&h)?).await?;
    for round in 0..3 {
        s.write_all(head(body.len()).as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let (status, head, answer) = read_response(&mut s)
            .await
            .with_context(|| format!("round {round}"))?;
        assert_eq!(status, 413, "round {round}: {answer}");
        assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    assert_eq!(
        get(&mut s, "/livez", None).await?.0,
        200,
        "the connection that carried the refused uploads serves the next request"
    );

    // Over the drain cap: not read, answered, closed.
    let over_cap = herald_protocol::limits::UNREAD_BODY_DRAIN_BYTES + 1_000_000;
    let (mut reader, mut writer) = TcpStream::connect(server_addr(&h)?).await?.into_split();
    writer.write_all(head(over_cap).as_bytes()).await?;
    let upload = tokio::spawn(async move {
        // The server stops reading after the limit: this write fails or stalls; either is fine.
        let _ = writer.write_all(&vec![b' '; over_cap]).await;
    });
    let from = Instant::now();
    let (_, sent) = closed_by(&mut reader, from, SLACK)
        .await
        .context("the connection of an upload over the drain cap stays open")?;
    upload.abort();
    assert!(sent.starts_with("HTTP/1.1 413"), "{sent:?}");
    assert!(
        sent.to_lowercase().contains("connection: close"),
        "{sent:?}"
    );
    h.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> anyhow::Result<()> {
    let h = Herald::start(TIMEOUT_FLAGS).await?;
    let mut s = TcpStream::connect(server_addr(&h)?).await?;
    assert_eq!(get(&mut s, "/livez", None).await?.0, 200);
    // Kept alive past the header timeout: between requests the idle timeout applies.
    tokio::time::sleep(HEADER + Duration::from_millis(500)).await;
    assert_eq!(
        get(&mut s, "/livez", None).await?.0,
        200,
        "a kept-alive connection serves a second request within the idle timeout"
    );
    let answered = Instant::now();
    if let Some((after, _)) = closed_by(&mut s, answered, IDLE - Duration::from_millis(300)).await {
        bail!("closed {after:?} after the answer, before the idle timeout");
    }
    let (after, _) = closed_by(&mut s, answered, IDLE + SLACK)
        .await
        .context("an idle kept-alive connection is still open after the idle timeout")?;
    assert!(after >= IDLE - EARLY, "closed after {after:?}");
    Ok(())
}

#[tokio::test]
async fn the_per_address_cap_refuses_the_next_connection_clearly() -> anyhow::Result<()> {
    let metrics_port = free_port()?;
    let metrics_bind = format!("127.0.0.1:{metrics_port}");
    let h = Herald::start(&[
        "--max-connections-per-ip",
        "4",
        "--metrics-bind",
        &metrics_bind,
    ])
    .await?;
    let metrics_url = format!("http://{metrics_bind}/metrics");
    let server = server_addr(&h)?;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from("127.0.0.2", server).await?;
        assert_eq!(get(&mut s, "/livez", None).await?.0, 200);
        held.push(s);
    }

    // The fifth from the same address: a JSON refusal, then the connection closes.
    let mut s = connect_from("127.0.0.2", server).await?;
    let from = Instant::now();
    let request = format!(
        "GET /v1/admin/projects HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {}\r\n\r\n",
        h.admin_token
    );
    s.write_all(request.as_bytes()).await?;
    let (_, sent) = closed_by(&mut s, from, SLACK)
        .await
        .context("the refused connection was not closed")?;
    assert!(sent.starts_with("HTTP/1.1 429"), "{sent:?}");
    assert!(
        sent.contains(r#""code":"too_many_connections""#),
        "{sent:?}"
    );
    assert!(
        sent.to_lowercase().contains("connection: close"),
        "{sent:?}"
    );

    // Health still answers on a connection over the cap, and other addresses are served.
    let mut s = connect_from("127.0.0.2", server).await?;
    assert_eq!(get(&mut s, "/livez", None).await?.0, 200);
    assert_eq!(
        h.request(Method::GET, "/livez", None, None, &[])
            .await?
            .status,
        200
    );
    let listed = h.admin(Method::GET, "/v1/admin/projects", None).await?;
    assert_eq!(listed.status, 200, "127.0.0.1 is served: {listed:?}");

    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from("127.0.0.2", server).await?;
        match get(&mut s, "/v1/admin/projects", Some(&h.admin_token)).await? {
            (200, _) => break,
            (429, _) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => bail!("after closing one, still refused: {other:?}"),
        }
    }
    assert!(
        metric(
            &metrics_url,
            r#"herald_connections_refused_total{reason="per_ip"}"#
        )
        .await?
            >= 2.0,
        "refusals are counted"
    );
    Ok(())
}

/// Opens connections from `local` in a loop, each held until the server closes it, then
/// reopened: a client holding as many sockets as it can.
fn flood(
    local: &'static str,
    server: SocketAddr,
    sockets: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..sockets)
        .map(|_| {
            tokio::spawn(async move {
                loop {
                    let Ok(mut s) = connect_from(local, server).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn health_answers_while_a_client_holds_every_socket_it_can() -> anyhow::Result<()> {
    let metrics_port = free_port()?;
    let metrics_bind = format!("127.0.0.1:{metrics_port}");
    // 256 file descriptors: at most 192 connections are served (docs/PROTOCOL.md § Limits).
    let h = Herald::start_wrapped(
        &["prlimit", "--nofile=256:256", "--"],
        &[
            "--header-read-timeout-secs",
            "30",
            "--metrics-bind",
            &metrics_bind,
        ],
    )
    .await?;
    let metrics_url = format!("http://{metrics_bind}/metrics");
    let server = server_addr(&h)?;
    let mut flooders = Vec::new();
    for local in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.7",
    ] {
        flooders.extend(flood(local, server, 60));
    }
    // Wait until the flood holds every connection the server serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&metrics_url, "herald_connections_open").await? < 192.0 {
        if Instant::now() > deadline {
            bail!("the flood never filled the server");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        let live = tokio::time::timeout(
            Duration::from_secs(5),
            h.request(Method::GET, "/livez", None, None, &[]),
        )
        .await
        .context("/livez did not answer within 5 s under the flood")??;
        assert_eq!(live.status, 200, "{live:?}");
        let busy = h.admin(Method::GET, "/v1/admin/projects", None).await?;
        assert_eq!(busy.status, 503, "{busy:?}");
        assert_eq!(busy.code(), "at_capacity");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&metrics_url, "herald_connections_open").await?,
        192.0
    );
    assert_eq!(
        metric(&metrics_url, "herald_accept_errors_total").await?,
        0.0,
        "the reserve kept accept() working"
    );
    assert!(
        metric(
            &metrics_url,
            r#"herald_connections_refused_total{reason="capacity"}"#
        )
        .await?
            > 0.0
    );

    for f in &flooders {
        f.abort();
    }
    for f in flooders {
        let _ = f.await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = h.admin(Method::GET, "/v1/admin/projects", None).await?;
        if listed.status == 200 {
            break;
        }
        if Instant::now() > deadline {
            bail!("still refused after the flood ended: {listed:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&metrics_url, "herald_connections_open").await? != 0.0 {
        if Instant::now() > deadline {
            bail!("connections still counted open after every client closed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
