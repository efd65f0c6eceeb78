//! Packet framing and response-boundary tracking, the per-packet work of the relay.
//!
//! Reproduce: `cargo bench --bench framing`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rwproxy::protocol::packet::{self, Header};
use rwproxy::protocol::wire::eof_packet;
use rwproxy::protocol::{ResponseKind, ResponseTracker};
use std::hint::black_box;

fn encode(c: &mut Criterion) {
    let payload = vec![7u8; 1024];
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("encode_1k_packet", |b| {
        let mut out = Vec::with_capacity(2048);
        b.iter(|| {
            out.clear();
            black_box(packet::encode_packet(0, black_box(&payload), &mut out))
        })
    });
    group.bench_function("decode_header", |b| {
        b.iter(|| black_box(Header::decode(black_box([0x10, 0x20, 0x00, 3]))))
    });
    group.finish();
}

/// A 1000-row, 3-column text result set, as (first byte, length, payload) triples.
fn result_set() -> Vec<(u8, usize, Vec<u8>)> {
    let mut packets = vec![(3u8, 1, vec![3u8])];
    for _ in 0..3 {
        packets.push((3, 40, vec![3; 40]));
    }
    packets.push((0xFE, 5, eof_packet(2, false)));
    for _ in 0..1000 {
        packets.push((4, 30, vec![4; 30]));
    }
    packets.push((0xFE, 5, eof_packet(2, false)));
    packets
}

fn track(c: &mut Criterion) {
    let packets = result_set();
    let mut group = c.benchmark_group("response");
    group.throughput(Throughput::Elements(packets.len() as u64));
    group.bench_function("track_1000_row_result", |b| {
        b.iter(|| {
            let mut t = ResponseTracker::new(ResponseKind::Query, false);
            for (first, len, payload) in &packets {
                let body: &[u8] = if t.needs_payload(*first, *len) { payload } else { &[] };
                black_box(t.accept(*first, *len, body).ok());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, encode, track);
criterion_main!(benches);
