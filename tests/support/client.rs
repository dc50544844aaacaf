//! Calling the API as the SDKs do (ACS3 or v1 signed), and reading its answers.

use std::time::Duration;

use msgcontact::signing;
use serde_json::Value;

use crate::app::TestApp;

pub const API_VERSION: &str = "2022-04-19";

pub struct Response {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Response {
    pub fn code(&self) -> &str {
        self.body["Code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, 200, "expected success, got {}", self.body);
        assert!(
            self.body["RequestId"]
                .as_str()
                .is_some_and(|r| r.len() == 36),
            "{}",
            self.body
        );
        &self.body
    }

    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "body: {}",
            self.body
        );
        for k in ["RequestId", "HostId", "Code", "Message", "Recommend"] {
            assert!(
                self.body.get(k).is_some(),
                "error body lacks {k}: {}",
                self.body
            );
        }
    }
}

#[derive(Clone)]
pub struct Key {
    pub id: String,
    pub secret: String,
    pub account: String,
}

/// An HTTP client (the process's TLS provider installed first: the client brings none of its own).
pub fn http_client() -> reqwest::Client {
    msgcontact::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// A GET with a fresh client, as `reqwest::get` does.
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}

pub fn now_stamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl TestApp {
    pub async fn call(&self, action: &str, params: &[(&str, &str)]) -> Response {
        self.call_with(&self.key, 0, action, params).await
    }

    /// An ACS3-signed call, parameters in the query string, as the official SDKs send it.
    pub async fn call_with(
        &self,
        key: &Key,
        instance: usize,
        action: &str,
        params: &[(&str, &str)],
    ) -> Response {
        let query: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let headers = signing::OutboundCall {
            host: &self.api_addrs[instance].to_string(),
            action,
            version: API_VERSION,
            query: &query,
            form_body: None,
        }
        .sign(&key.id, &key.secret, &now_stamp(), &nonce());
        self.send_raw(
            instance,
            "POST",
            &format!("/?{}", signing::canonical_query(&query)),
            &headers,
            Vec::new(),
        )
        .await
    }

    /// ACS3 headers for a call to the first API instance; parameters in the query, or in a form body.
    pub fn sign(
        &self,
        key: &Key,
        action: &str,
        query: &[(String, String)],
        form_body: Option<&[u8]>,
        date: &str,
        nonce: &str,
    ) -> Vec<(String, String)> {
        signing::OutboundCall {
            host: &self.api_addrs[0].to_string(),
            action,
            version: API_VERSION,
            query,
            form_body,
        }
        .sign(&key.id, &key.secret, date, nonce)
    }

    /// A v1 (HMAC-SHA1) signed call, as older SDKs and the CLI send it.
    pub async fn call_v1(
        &self,
        key: &Key,
        action: &str,
        params: &[(&str, &str)],
        timestamp: &str,
        nonce: &str,
    ) -> Response {
        let mut all: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in [
            ("Action", action),
            ("Version", API_VERSION),
            ("Format", "JSON"),
            ("AccessKeyId", key.id.as_str()),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", nonce),
            ("Timestamp", timestamp),
        ] {
            all.push((k.into(), v.into()));
        }
        let sig = signing::v1_signature(&key.secret, &signing::v1_string_to_sign("POST", &all));
        all.push(("Signature".into(), sig));
        self.send_raw(
            0,
            "POST",
            &format!("/?{}", signing::canonical_query(&all)),
            &[],
            Vec::new(),
        )
        .await
    }

    pub async fn send_raw(
        &self,
        instance: usize,
        method: &str,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Response {
        let url = format!("http://{}{}", self.api_addrs[instance], path_and_query);
        let mut req = self.http.request(method.parse().unwrap(), url).body(body);
        for (k, v) in headers {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
            .await
            .expect("API answered within 30 s")
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}"));
        Response {
            status,
            body,
            headers,
        }
    }

    pub async fn add_contact(&self, name: &str, phone: Option<&str>) -> String {
        let mut p = vec![
            ("Name", name),
            ("EmailAddress", "ops@example.com"),
            ("Title", "CEO"),
            ("MessageTypes.1", "ServiceMessage"),
        ];
        if let Some(ph) = phone {
            p.push(("PhoneNumber", ph));
        }
        let r = self.call("AddMessageContact", &p).await;
        r.assert_ok()["Contact"]["ContactId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until the send request reaches `status` (or panics after `secs`).
    pub async fn wait_status(&self, request_id: &str, status: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self
                .call("GetVerificationRequest", &[("RequestId", request_id)])
                .await;
            let body = r.assert_ok().clone();
            if body["Request"]["Status"] == status {
                return body["Request"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "request {request_id} stuck at {}",
                body["Request"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
