//! `comments healthcheck`: probes `/readyz` over plain HTTP/1.1, for container health checks in
//! an image that has no shell and no curl. Exit 0 when ready, 1 otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Where to probe when only the listen address is known: a wildcard means this host.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `Ok` when `/readyz` answers 200 within `timeout`; otherwise what went wrong.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
    stream
        .set_read_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: comments-healthcheck\r\nConnection: close\r\n\r\n"
    )
    .map_err(|err| format!("cannot send the probe: {err}"))?;

    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 256 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => break,
            Err(err) => return Err(format!("no answer from {addr}: {err}")),
        }
    }
    let status_line = String::from_utf8_lossy(&head);
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("/readyz answered {code}")),
        None => Err(format!("not an HTTP answer: {:?}", status_line.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_probed_on_loopback() {
        let probed = probe_addr("0.0.0.0:8080".parse().unwrap());
        assert_eq!(probed, "127.0.0.1:8080".parse().unwrap());
        let probed = probe_addr("[::]:8080".parse().unwrap());
        assert_eq!(probed, "[::1]:8080".parse().unwrap());
        let probed = probe_addr("10.0.0.5:9000".parse().unwrap());
        assert_eq!(probed, "10.0.0.5:9000".parse().unwrap());
    }

    #[test]
    fn nothing_listening_is_a_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(check(addr, Duration::from_millis(500)).is_err());
    }
}
