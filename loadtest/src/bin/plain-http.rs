//! The ceiling of the HTTP stack on this machine: a plain actix-web server (the workspace's
//! actix-web, same worker count as the gateway under test) answering every
//! `GET /v1/members/{id}` with the same fixed JSON bytes the gateway serves, with no lookup, no
//! authentication and no middleware. `loadtest/bench.sh` drives it and the gateway with the same
//! wrk client, threads, connections and duration.
//!
//! Usage: `plain-http <port> <body-file> [workers]` (workers: default 2).

use actix_web::{web, App, HttpResponse, HttpServer};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || std::io::Error::other("usage: plain-http <port> <body-file> [workers]");
    let port: u16 = args.next().and_then(|p| p.parse().ok()).ok_or_else(usage)?;
    let body = web::Bytes::from(std::fs::read(args.next().ok_or_else(usage)?)?);
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    eprintln!(
        "plain-http: {} bytes on 127.0.0.1:{port}, {workers} workers",
        body.len()
    );
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let body = body.clone();
            App::new().route(
                "/v1/members/{id}",
                web::get().to(move || {
                    let body = body.clone();
                    async move {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(body)
                    }
                }),
            )
        })
        .workers(workers)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
