//! Harnesses shared by the integration tests (and, through `#[path]`, by some benches).
// Not every test uses every helper of a harness.
#![allow(dead_code)]

pub mod api_backend;
pub mod browser;
pub mod daemon_env;
pub mod engine_fixtures;
pub mod mock_venue;
pub mod mock_venue_subs;
pub mod nats_server;
pub mod sink_contract;
pub mod tools;
pub mod webhook_receiver;

/// A loopback address where connecting is refused, reserved for as long as the returned socket
/// lives: the socket is bound but never listens. (Binding a listener to port 0 and dropping it
/// would hand the port back, and a server started meanwhile by another test could take it.)
pub fn refused_addr() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}
