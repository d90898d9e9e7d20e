//! Free loopback ports, and the child processes of the servers tests start.

use std::net::TcpListener;

/// A TCP port free on 127.0.0.1 right now (the OS picks it).
pub fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Whether a server's process is running (started, and not exited).
pub fn running(child: &mut Option<std::process::Child>) -> bool {
    match child.as_mut() {
        Some(c) => matches!(c.try_wait(), Ok(None)),
        None => false,
    }
}

/// Kills a server's process with SIGKILL (an outage, not a shutdown) and reaps it. Idempotent.
pub fn kill(child: &mut Option<std::process::Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
