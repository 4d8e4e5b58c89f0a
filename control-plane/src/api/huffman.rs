//! HPACK's Huffman code (RFC 7541, appendix B), as much as `uds.rs` needs to read and rewrite a
//! Huffman-coded `:authority` (netty, used by grpc-java, codes every value that gets shorter). The code is
//! canonical, so the table is just each symbol's code length; codes follow from them.

use std::sync::OnceLock;

/// Code length in bits of each symbol: bytes 0-255, then 256 (EOS).
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];
const EOS: usize = 256;
const MAX_LEN: usize = 30;

struct Code {
    /// Each symbol's code (right-aligned).
    codes: [u32; 257],
    /// Symbols in code order (by length, then value).
    symbols: [u16; 257],
    /// Per length: the first code of that length, where its symbols start in `symbols`, and how many.
    first: [u32; MAX_LEN + 1],
    start: [u16; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
}

fn code() -> &'static Code {
    static CODE: OnceLock<Code> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut c =
            Code { codes: [0; 257], symbols: [0; 257], first: [0; 31], start: [0; 31], count: [0; MAX_LEN + 1] };
        let mut order: Vec<u16> = (0..257).collect();
        order.sort_by_key(|&s| (LENGTHS[usize::from(s)], s));
        c.symbols.copy_from_slice(&order);
        for &l in &LENGTHS {
            c.count[usize::from(l)] += 1;
        }
        let (mut next, mut at) = (0u32, 0u16);
        for len in 1..=MAX_LEN {
            c.first[len] = next;
            c.start[len] = at;
            next = (next + u32::from(c.count[len])) << 1;
            at += c.count[len];
        }
        for len in 1..=MAX_LEN {
            let from = usize::from(c.start[len]);
            for (k, &s) in c.symbols[from..from + usize::from(c.count[len])].iter().enumerate() {
                c.codes[usize::from(s)] = c.first[len] + k as u32;
            }
        }
        c
    })
}

/// Decodes a Huffman-coded string; `None` if it is not valid HPACK (EOS inside, or padding that is
/// longer than 7 bits or not all ones).
pub fn decode(src: &[u8]) -> Option<Vec<u8>> {
    let c = code();
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let (mut value, mut len) = (0u32, 0usize);
    for byte in src {
        for bit in (0..8).rev() {
            value = value << 1 | u32::from(byte >> bit & 1);
            len += 1;
            if len > MAX_LEN {
                return None;
            }
            let offset = value.wrapping_sub(c.first[len]);
            if value >= c.first[len] && offset < u32::from(c.count[len]) {
                let s = usize::from(c.symbols[usize::from(c.start[len]) + offset as usize]);
                if s == EOS {
                    return None;
                }
                out.push(s as u8);
                value = 0;
                len = 0;
            }
        }
    }
    // What is left must be a prefix of EOS (all ones), shorter than a byte.
    (len < 8 && value == (1 << len) - 1).then_some(out)
}

/// Huffman-codes `src`, padded with ones to a whole byte.
pub fn encode(src: &[u8]) -> Vec<u8> {
    let c = code();
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
    for &b in src {
        let len = u32::from(LENGTHS[usize::from(b)]);
        acc = acc << len | u64::from(c.codes[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push((acc << (8 - bits) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc_7541_examples_round_trip() {
        // C.4.1: "www.example.com".
        let www = [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        assert_eq!(encode(b"www.example.com"), www);
        assert_eq!(decode(&www).unwrap(), b"www.example.com");
        // C.4.2: "no-cache".
        let nc = [0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf];
        assert_eq!(encode(b"no-cache"), nc);
        assert_eq!(decode(&nc).unwrap(), b"no-cache");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        let mut www = encode(b"www.example.com");
        *www.last_mut().unwrap() &= 0xfe; // padding not all ones
        assert!(decode(&www).is_none());
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_none()); // EOS (30 ones) inside
        let mut long = encode(b"a");
        long.push(0xff); // 8+ bits of padding
        assert!(decode(&long).is_none());
    }
}
