//! Deterministic content: every byte of a body is a function of (seed, offset),
//! so a client can check a body it streams without the upstream telling it
//! anything but what the request's path already says. Plus a small RNG.

/// One 64-bit word of the stream `seed`, for the 8 bytes at `8 * index`.
fn word(seed: u64, index: u64) -> u64 {
    splitmix(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn byte(seed: u64, offset: u64) -> u8 {
    word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `out` with the bytes of stream `seed` from `offset` on. Text streams
/// are lower-case letters and newlines (compressible, valid UTF-8).
pub(crate) fn fill(seed: u64, text: bool, offset: u64, out: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < out.len() && !pos.is_multiple_of(8) {
        out[i] = byte(seed, pos);
        i += 1;
        pos += 1;
    }
    let mut words = out[i..].chunks_exact_mut(8);
    for chunk in &mut words {
        chunk.copy_from_slice(&word(seed, pos / 8).to_le_bytes());
        pos += 8;
    }
    for b in words.into_remainder() {
        *b = byte(seed, pos);
        pos += 1;
    }
    if text {
        for (b, at) in out.iter_mut().zip(offset..) {
            *b = if at % 64 == 63 { b'\n' } else { b'a' + (*b % 16) };
        }
    }
}

/// `len` bytes of stream `seed` from `offset`.
pub(crate) fn bytes(seed: u64, text: bool, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    fill(seed, text, offset, &mut out);
    out
}

/// Checks a body piece by piece against the stream it should be.
pub(crate) struct Check {
    seed: u64,
    text: bool,
    expected_len: u64,
    pos: u64,
    first_wrong: Option<u64>,
    scratch: Vec<u8>,
}

impl Check {
    pub(crate) fn new(seed: u64, text: bool, expected_len: u64) -> Check {
        Check {
            seed,
            text,
            expected_len,
            pos: 0,
            first_wrong: None,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        if self.first_wrong.is_none() {
            let room = self.expected_len.saturating_sub(self.pos) as usize;
            let n = data.len().min(room);
            self.scratch.resize(n, 0);
            fill(self.seed, self.text, self.pos, &mut self.scratch);
            if let Some(i) = self.scratch.iter().zip(&data[..n]).position(|(a, b)| a != b) {
                self.first_wrong = Some(self.pos + i as u64);
            } else if n < data.len() {
                self.first_wrong = Some(self.expected_len);
            }
        }
        self.pos += data.len() as u64;
    }

    pub(crate) fn received(&self) -> u64 {
        self.pos
    }

    /// Ok when exactly the expected bytes came; else what is wrong.
    pub(crate) fn verdict(&self) -> Result<(), String> {
        match self.first_wrong {
            Some(at) => Err(format!(
                "{} bytes, expected {}; first wrong byte at {at}",
                self.pos, self.expected_len
            )),
            None if self.pos != self.expected_len => Err(format!("{} bytes, expected {}", self.pos, self.expected_len)),
            None => Ok(()),
        }
    }
}

/// xorshift64*: small, fast, reproducible from its seed.
#[derive(Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }

    /// An index into `weights`, drawn in proportion to them.
    pub(crate) fn weighted(&mut self, weights: &[u64]) -> usize {
        let mut x = self.next_u64() % weights.iter().sum::<u64>();
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

#[test]
fn pieces_match_the_whole() {
    let whole = bytes(7, false, 0, 1000);
    let mut check = Check::new(7, false, 1000);
    for piece in whole.chunks(37) {
        check.feed(piece);
    }
    assert_eq!(check.verdict(), Ok(()));
    assert_eq!(bytes(7, false, 13, 100), whole[13..113]);
    let mut short = Check::new(7, false, 1000);
    short.feed(&whole[..999]);
    assert!(short.verdict().is_err());
    let mut wrong = Check::new(7, false, 1000);
    let mut bad = whole.clone();
    bad[500] ^= 1;
    wrong.feed(&bad);
    assert!(wrong.verdict().unwrap_err().contains("at 500"));
    let text = bytes(7, true, 0, 200);
    assert!(text.iter().all(|b| b.is_ascii_lowercase() || *b == b'\n'));
}
