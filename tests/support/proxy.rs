//! A TCP proxy in front of the shared RabbitMQ that a test can cut and restore: a broker outage
//! for one app only, so broker-loss tests run beside the others without restarting the broker.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct BrokerProxy {
    pub addr: SocketAddr,
    upstream: String,
    up: Arc<AtomicBool>,
    /// Cancelled on `cut`: ends every piped connection of the current generation.
    generation: Arc<Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

/// `host:port` of an `amqp://[user:pass@]host:port/vhost` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

impl BrokerProxy {
    pub async fn start() -> Self {
        let upstream = host_port(&super::amqp_url());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let task = {
            let (up, generation, upstream) = (up.clone(), generation.clone(), upstream.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    // While cut, a connection is accepted and dropped at once: the client sees
                    // the broker go away during the handshake, as with a restarting node.
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    let token = generation.lock().unwrap().clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        }
                    });
                }
            })
        };
        Self {
            addr,
            upstream,
            up,
            generation,
            task,
        }
    }

    /// The shared broker's URL, through this proxy.
    pub fn url(&self) -> String {
        super::amqp_url().replacen(&self.upstream, &self.addr.to_string(), 1)
    }

    /// Drops every connection through the proxy and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut g = self.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
