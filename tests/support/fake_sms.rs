//! A scripted fake of Alibaba Cloud SMS (Dysmsapi 2017-05-25 `SendSms`) on a raw TCP listener, so
//! it can also hang after accepting a request or reset the connection mid-body.
//!
//! It verifies each request's ACS3 signature with the same secret the worker is given, and logs
//! what it received and whether it counted as delivered (the SMS went out).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use msgcontact::signing::{self, Acs3Authorization, Acs3Request};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

pub const ACCESS_KEY_ID: &str = "fakeAK";
pub const ACCESS_KEY_SECRET: &str = "fakeSecret";

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// `Code: OK`: delivered.
    Ok,
    /// An HTTP error status, optionally with `Retry-After` seconds: not delivered.
    Status(u16, Option<u64>),
    /// HTTP 200 with a business error code: not delivered.
    Biz(&'static str),
    /// Delivered, but the answer comes only after this long (the worker times out first).
    Hang(Duration),
    /// Delivered, then the connection is cut in the middle of the answer.
    Reset,
    /// Not delivered: this HTTP error status, answered only after this long.
    SlowStatus(Duration, u16),
    /// Not delivered: this HTTP status, with the whole request (line, headers, body) echoed back
    /// in the answer's `Code`, `Message` and body, as some proxies and providers do.
    Echo(u16),
    /// Not delivered: a redirect with this status to `Location`.
    Redirect(u16, String),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub out_id: String,
    pub phone_numbers: String,
    pub code: String,
    pub signature_ok: bool,
    pub delivered: bool,
}

#[derive(Clone)]
pub struct FakeSms {
    pub addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Step>>>,
    log: Arc<Mutex<Vec<Received>>>,
    /// Until then every request is answered 503 (a provider outage).
    down_until: Arc<Mutex<Option<std::time::Instant>>>,
}

impl FakeSms {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            addr: listener.local_addr().unwrap(),
            script: Default::default(),
            log: Default::default(),
            down_until: Default::default(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let f = f.clone();
                tokio::spawn(async move { f.serve(sock).await });
            }
        });
        fake
    }

    /// Answers every request with 503 for `d` from now.
    pub fn outage(&self, d: Duration) {
        *self.down_until.lock().unwrap() = Some(std::time::Instant::now() + d);
    }

    /// Appends answers; once the script is empty every request gets `Ok`.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.script.lock().unwrap().extend(steps);
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    pub fn for_request(&self, request_id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.out_id == request_id)
            .collect()
    }

    pub fn delivered(&self, request_id: &str) -> usize {
        self.for_request(request_id)
            .iter()
            .filter(|r| r.delivered)
            .count()
    }

    async fn serve(&self, mut sock: tokio::net::TcpStream) {
        // Keep-alive: serve requests on this connection until it closes.
        loop {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default();
            let target = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = buf[head_end + 4..].to_vec();
            while body.len() < length {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                }
            }
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let decode = |s: &str| -> Vec<(String, String)> {
                form_urlencoded::parse(s.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            };
            let query_params = decode(query);
            let mut params = query_params.clone();
            params.extend(decode(&String::from_utf8_lossy(&body)));
            let get = |n: &str| {
                params
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let signature_ok = verify(path, &query_params, &headers, &body);
            let code = serde_json::from_str::<serde_json::Value>(&get("TemplateParam"))
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let action = headers
                .iter()
                .find(|(k, _)| k == "x-acs-action")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            let down = self
                .down_until
                .lock()
                .unwrap()
                .is_some_and(|t| std::time::Instant::now() < t);
            let step = if !signature_ok || action != "SendSms" {
                Step::Status(400, None)
            } else if down {
                Step::Status(503, None)
            } else {
                self.script.lock().unwrap().pop_front().unwrap_or(Step::Ok)
            };
            let delivered = matches!(step, Step::Ok | Step::Hang(_) | Step::Reset);
            self.log.lock().unwrap().push(Received {
                out_id: get("OutId"),
                phone_numbers: get("PhoneNumbers"),
                code,
                signature_ok,
                delivered,
            });
            let ok_body = format!(
                r#"{{"Code":"OK","Message":"OK","BizId":"biz-{}","RequestId":"fake"}}"#,
                get("OutId")
            );
            let step = match step {
                Step::SlowStatus(d, s) => {
                    tokio::time::sleep(d).await;
                    Step::Status(s, None)
                }
                other => other,
            };
            let (status, extra, body) = match &step {
                Step::Ok | Step::Hang(_) | Step::Reset => (200, String::new(), ok_body),
                Step::SlowStatus(..) => unreachable!("answered as a Status above"),
                Step::Echo(s) => {
                    let echoed = format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body));
                    (
                        *s,
                        String::new(),
                        serde_json::json!({ "Code": echoed, "Message": echoed, "BizId": echoed })
                            .to_string(),
                    )
                }
                Step::Redirect(s, location) => {
                    (*s, format!("Location: {location}\r\n"), String::new())
                }
                Step::Status(s, ra) => (
                    *s,
                    ra.map(|r| format!("Retry-After: {r}\r\n"))
                        .unwrap_or_default(),
                    format!(
                        r#"{{"Code":"{}","Message":"scripted failure","RequestId":"fake"}}"#,
                        if *s == 400 {
                            "SignatureDoesNotMatch"
                        } else {
                            "ServiceUnavailable"
                        }
                    ),
                ),
                Step::Biz(c) => (
                    200,
                    String::new(),
                    format!(
                        r#"{{"Code":"{c}","Message":"scripted business error","RequestId":"fake"}}"#
                    ),
                ),
            };
            if let Step::Hang(d) = &step {
                tokio::time::sleep(*d).await;
            }
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json;charset=utf-8\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if let Step::Reset = step {
                let cut = response.len() - body.len() / 2;
                let _ = sock.write_all(&response.as_bytes()[..cut]).await;
                let _ = sock.shutdown().await;
                return;
            }
            if sock.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

fn verify(
    path: &str,
    params: &[(String, String)],
    headers: &[(String, String)],
    body: &[u8],
) -> bool {
    let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let Some(auth) = h("authorization")
        .as_deref()
        .and_then(Acs3Authorization::parse)
    else {
        return false;
    };
    if auth.access_key_id != ACCESS_KEY_ID {
        return false;
    }
    // The body is covered by its hash, and a form body's reading by its signed content type.
    let payload_hash = h("x-acs-content-sha256").unwrap_or_default();
    if payload_hash != signing::sha256_hex(body)
        || (!body.is_empty() && !auth.signed_headers.split(';').any(|n| n == "content-type"))
    {
        return false;
    }
    let signed: Vec<(String, String)> = auth
        .signed_headers
        .split(';')
        .map(|n| (n.to_owned(), h(n).unwrap_or_default()))
        .collect();
    let expected = Acs3Request {
        method: "POST",
        path,
        query: params,
        headers: &signed,
        signed_headers: &auth.signed_headers,
        payload_hash: &h("x-acs-content-sha256").unwrap_or_default(),
    }
    .signature(ACCESS_KEY_SECRET);
    signing::signatures_equal(&expected, &auth.signature)
}
