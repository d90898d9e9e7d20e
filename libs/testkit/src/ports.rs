//! Free loopback ports.

use std::net::TcpListener;

/// A TCP port free on 127.0.0.1 right now (the OS picks it).
pub fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
