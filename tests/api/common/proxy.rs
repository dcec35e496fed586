//! A TCP proxy in front of the shared PostgreSQL, so a test can take "the database" away from
//! one service without stopping the server other tests use: `refuse` closes the port and every
//! open connection, `blackhole` keeps accepting but never answers, `restore` brings it back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Blackhole,
}

pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    listener: Option<JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            mode: Arc::new(Mutex::new(Mode::Forward)),
            tasks: Arc::default(),
            listener: None,
        };
        proxy.listen(listener);
        proxy
    }

    fn listen(&mut self, listener: TcpListener) {
        let (upstream, mode, tasks) = (self.upstream, self.mode.clone(), self.tasks.clone());
        self.listener = Some(tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mode = *mode.lock().unwrap();
                let task = tokio::spawn(async move {
                    if mode == Mode::Blackhole {
                        // Hold the connection open and say nothing.
                        std::future::pending::<()>().await;
                    }
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        }));
    }

    /// Drops every connection through the proxy.
    fn cut_connections(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// The database refuses connections: the port is closed and open connections are reset.
    pub fn refuse(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        self.cut_connections();
    }

    /// The database hangs: connections are accepted and never answered.
    pub fn blackhole(&mut self) {
        *self.mode.lock().unwrap() = Mode::Blackhole;
        self.cut_connections();
    }

    /// The database is back, on the same port.
    pub async fn restore(&mut self) {
        *self.mode.lock().unwrap() = Mode::Forward;
        self.cut_connections();
        if self.listener.as_ref().is_none_or(|l| l.is_finished()) {
            // The old listener task is aborted; wait for its socket to close before rebinding.
            let mut tries = 0;
            let listener = loop {
                match TcpListener::bind(self.addr).await {
                    Ok(listener) => break listener,
                    Err(err) if tries < 100 => {
                        tries += 1;
                        let _ = err;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(err) => panic!("cannot rebind the proxy on {}: {err}", self.addr),
                }
            };
            self.listen(listener);
        }
    }

    /// `url` (a postgres:// URL to the real server) rewritten to go through this proxy.
    pub fn url(&self, url: &str) -> String {
        url.replacen(&self.upstream.to_string(), &self.addr.to_string(), 1)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        self.cut_connections();
    }
}
