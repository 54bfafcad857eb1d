//! The membership core fed hostile datagrams: a member that has joined a small cluster
//! takes any sequence of datagrams (each input is split into datagrams at 0xff 0xfe)
//! and timer calls, and never panics, whatever the datagrams claim.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use murmur::internals::swim::{Identity, MapStore, Swim, SwimConfig};
use murmur_protocol::swim::{encode_message, Body, Entry, Message, Status};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let me = Identity { name: "me".into(), generation: 1, addr: SocketAddr::from(([127, 0, 0, 1], 7946)) };
    let mut core = Swim::new(me, SwimConfig::default(), MapStore::default(), 1, t0);
    core.set_local("node", Some("x"), t0);
    let peer = SocketAddr::from(([127, 0, 0, 2], 7946));
    // A known member first, so datagrams can speak of someone.
    let hello = encode_message(&Message {
        from: "peer".into(),
        body: Body::Members {
            seq: 1,
            entries: vec![Entry {
                name: "peer".into(),
                generation: 1,
                incarnation: 0,
                status: Status::Alive,
                addr: peer,
                version: 3,
            }],
        },
    });
    core.handle_datagram(peer, &hello, t0);
    let mut now = t0;
    let mut rest = data;
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == [0xff, 0xfe]).unwrap_or(rest.len());
        let (datagram, tail) = rest.split_at(end);
        let mut d = vec![murmur_protocol::swim::SWIM_VERSION];
        d.extend_from_slice(datagram);
        core.handle_datagram(peer, &d, now);
        now += Duration::from_millis(37);
        core.handle_timeout(now);
        while core.poll_transmit().is_some() {}
        while core.poll_event().is_some() {}
        rest = tail.get(2..).unwrap_or(&[]);
    }
    core.handle_timeout(now + Duration::from_secs(600));
});
