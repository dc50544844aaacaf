//! The fake webhook provider: an HTTP endpoint that keeps every SMS the worker posts to it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::State,
    routing::{get, post},
};
use serde_json::Value;
use tokio::task::JoinHandle;

/// SMS received by the fake webhook provider.
#[derive(Clone, Default)]
pub struct Inbox {
    pub messages: Arc<Mutex<Vec<Value>>>,
    /// When each message arrived.
    pub times: Arc<Mutex<Vec<std::time::Instant>>>,
    pub status: Arc<Mutex<u16>>,
}

impl Inbox {
    pub fn all(&self) -> Vec<Value> {
        self.messages.lock().unwrap().clone()
    }

    pub fn for_request(&self, request_id: &str) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|m| m["request_id"] == request_id)
            .collect()
    }
}

pub(crate) async fn start_inbox(status: u16) -> (Inbox, SocketAddr, JoinHandle<()>) {
    let inbox = Inbox {
        messages: Default::default(),
        times: Default::default(),
        status: Arc::new(Mutex::new(status)),
    };
    async fn receive(
        State(inbox): State<Inbox>,
        Json(body): Json<Value>,
    ) -> axum::http::StatusCode {
        let status = *inbox.status.lock().unwrap();
        if status == 200 {
            inbox.messages.lock().unwrap().push(body);
            inbox.times.lock().unwrap().push(std::time::Instant::now());
        }
        axum::http::StatusCode::from_u16(status).unwrap()
    }
    async fn list(State(inbox): State<Inbox>) -> Json<Value> {
        Json(Value::Array(inbox.all()))
    }
    let app = Router::new()
        .route("/sms", post(receive))
        .route("/received", get(list))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (inbox, addr, handle)
}
