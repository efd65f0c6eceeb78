//! A bounded fuzz run of every fuzz target on stable Rust, in the normal test suite: each
//! target gets its corpus under `fuzz/corpus/<target>` (seeds plus what the libFuzzer campaigns
//! found), then a few seconds of inputs mutated from it with a fixed seed. A panic fails the
//! test and prints the input. The long campaigns run with `cargo +nightly fuzz run <target>`
//! (see fuzz/README.md).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

/// Per target: at most this long, and at most this many mutated inputs.
const TIME: Duration = Duration::from_secs(3);
const INPUTS: usize = 200_000;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Bytes that mean something to the parsers: packet markers, lengths, separators.
const INTERESTING: [u8; 12] = [0x00, 0xFF, 0xFE, 0xFB, 0xFC, 0xFD, 0x01, b'\r', b'\n', b':', b'#', b'\''];

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 => out.insert(at, rng.next() as u8),
            3 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            4 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(32)).min(out.len());
                let copy = out[start..end].to_vec();
                out.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                out.splice(at..at, other[start..end].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn run(target: &str, entry: fn(&[u8])) {
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "no corpus for {target}");
    let check = |input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| entry(input))).is_err() {
            let shown: Vec<String> = input.iter().take(512).map(|b| format!("{b:02x}")).collect();
            panic!("{target} panicked on input ({} bytes): {}", input.len(), shown.join(""));
        }
    };
    for seed in &seeds {
        check(seed);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ target.len() as u64);
    let started = Instant::now();
    let mut inputs = 0;
    while inputs < INPUTS && started.elapsed() < TIME {
        let base = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        check(&mutate(&mut rng, base, other));
        inputs += 1;
    }
    eprintln!("{target}: {} corpus inputs, {inputs} mutated inputs in {:?}", seeds.len(), started.elapsed());
}

#[test]
fn mysql_response() {
    run("mysql_response", rwproxy::fuzzing::mysql_response);
}

#[test]
fn handshake() {
    run("handshake", rwproxy::fuzzing::handshake);
}

#[test]
fn classifier() {
    run("classifier", rwproxy::fuzzing::classifier);
}

#[test]
fn http() {
    run("http", rwproxy::fuzzing::http);
}

#[test]
fn config() {
    run("config", rwproxy::fuzzing::config);
}
