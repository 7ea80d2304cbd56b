//! The fuzz targets on stable: every seed, then a deterministic stream of inputs derived from
//! them (bit flips, truncations, splices, repeated and random bytes), through each target
//! function. A panic fails the test and prints the input that caused it. The input count is
//! `BACKLESS_FUZZ_ITERS` (default 2,000 per target).
//!
//! The target functions are `fuzz/src/lib.rs` itself, compiled here into the workspace's test
//! build (libFuzzer builds the same file in `fuzz/`, on nightly): the stable run costs no second
//! build of the crates it fuzzes.

use std::path::PathBuf;

#[path = "../../../fuzz/src/lib.rs"]
mod targets;

/// A small xorshift generator: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out.sort();
    out
}

fn mutate(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut d = pool[rng.below(pool.len())].clone();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = [0, 0xFF, 0x7F, 0x80][rng.below(4)];
            }
            2 => d.truncate(rng.below(d.len() + 1)),
            3 => {
                let other = &pool[rng.below(pool.len())];
                let at = rng.below(d.len() + 1);
                let from = rng.below(other.len() + 1);
                d.splice(at..at, other[from..].iter().copied().take(64));
            }
            4 => {
                let at = rng.below(d.len() + 1);
                let n = rng.below(32);
                d.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
            _ if d.len() >= 4 => {
                // A 32-bit field set to an extreme (sizes, counts, dimensions).
                let i = rng.below(d.len() - 3);
                let v = [0u32, 1, 0x7FFF_FFFF, u32::MAX, 65_535][rng.below(5)];
                d[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ => d.push(rng.next() as u8),
        }
    }
    d
}

#[test]
fn fuzz_targets_survive_seeds_and_generated_inputs() {
    let iters: usize = std::env::var("BACKLESS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    for (name, target) in targets::TARGETS {
        let pool = seeds(name);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        let inputs = pool
            .iter()
            .cloned()
            .chain((0..iters).map(|_| mutate(&mut rng, &pool)));
        for (i, input) in inputs.enumerate() {
            let caught = std::panic::catch_unwind(|| target(input.as_slice()));
            if caught.is_err() {
                let path = std::env::temp_dir().join(format!("backless-fuzz-{name}-{i}"));
                std::fs::write(&path, &input).unwrap();
                panic!("{name}: input {i} panicked; saved to {}", path.display());
            }
        }
        eprintln!("{name}: {} seeds + {iters} generated inputs", pool.len());
    }
}
