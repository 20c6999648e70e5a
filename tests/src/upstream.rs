//! Local upstreams for the tests, on 127.0.0.x with ephemeral ports, that count what
//! reaches them: the proof that something did, or did not, get out of a bottle.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

/// The reply body of [`TcpUpstream`].
pub const UPSTREAM_BODY: &str = "hello from upstream\n";

/// A TCP server that answers any request with a small HTTP/1.0 response and counts
/// connections.
pub struct TcpUpstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl TcpUpstream {
    pub fn start(ip: &str) -> TcpUpstream {
        let ip: IpAddr = ip.parse().expect("ip");
        let listener = TcpListener::bind((ip, 0)).expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf);
                    let reply = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{UPSTREAM_BODY}",
                        UPSTREAM_BODY.len()
                    );
                    let _ = stream.write_all(reply.as_bytes());
                });
            }
        });
        TcpUpstream { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A UDP socket that counts datagrams.
pub struct UdpReceiver {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl UdpReceiver {
    pub fn start(addr: &str) -> UdpReceiver {
        let socket = UdpSocket::bind(addr).expect("bind udp receiver");
        let addr = socket.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while socket.recv_from(&mut buf).is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        UdpReceiver { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
