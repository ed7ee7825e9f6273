//! A minimal HTTP/1.1 client for our own API, which answers small bodies: enough for the
//! end-to-end test here and for the tests (testkit includes this file), without an HTTP crate.

use std::io::{Read, Write};
use std::time::Duration;

/// Sends one request over a fresh connection; returns the status code and the body.
pub fn request(method: &str, address: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()))
}
