//! Target `accept_encoding`: each line of the input is one `Accept-Encoding` field of a
//! request (lines that are no valid header value are left out). Asserted, against an
//! oracle written from RFC 9110 §12.5.3 and nginx's rules rather than from `negotiate`:
//!
//! - the choice is the coding with the highest q among gzip, br and zstd (`*` for the
//!   ones not listed, `x-gzip` as gzip, the highest q of a coding listed twice, an
//!   invalid q as 0), ties to gzip, then br, then zstd; so never one the header did
//!   not allow with q > 0, and None only when none is allowed;
//! - the same elements in one field, or in reverse order, give the same choice.

use http::header::{ACCEPT_ENCODING, HeaderMap, HeaderValue};

use crate::compress::{Encoding, negotiate};

pub fn run(data: &[u8]) {
    let fields: Vec<HeaderValue> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .take(16)
        .collect();
    let choice = negotiate(&headers(&fields));
    assert_eq!(choice, oracle(&fields), "{fields:?}");

    let elements: Vec<&[u8]> = fields.iter().flat_map(|f| f.as_bytes().split(|&b| b == b',')).collect();
    for order in [elements.clone(), elements.iter().rev().copied().collect()] {
        let one = HeaderValue::from_bytes(&order.join(&b","[..])).expect("joined valid values stay valid");
        assert_eq!(negotiate(&headers(&[one])), choice, "{fields:?} as one field");
    }
}

fn headers(fields: &[HeaderValue]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for field in fields {
        headers.append(ACCEPT_ENCODING, field.clone());
    }
    headers
}

/// q of gzip, br, zstd in thousandths (0 = not acceptable), then the best of them.
fn oracle(fields: &[HeaderValue]) -> Option<Encoding> {
    let mut listed: [Option<u32>; 3] = [None; 3];
    let mut star = None;
    for element in fields.iter().flat_map(|f| f.as_bytes().split(|&b| b == b',')) {
        let text = String::from_utf8_lossy(element);
        let mut parts = text.split(';');
        let coding = parts
            .next()
            .unwrap_or_default()
            .trim_matches([' ', '\t'])
            .to_ascii_lowercase();
        // The last `q` parameter counts; one that is not a qvalue means 0.
        let q = parts
            .filter_map(|p| p.split_once('='))
            .rfind(|(name, _)| name.trim_matches([' ', '\t']).eq_ignore_ascii_case("q"))
            .map_or(1000, |(_, v)| qvalue(v.trim_matches([' ', '\t'])).unwrap_or(0));
        let slot = match coding.as_str() {
            "" => continue,
            "*" => &mut star,
            "gzip" | "x-gzip" => &mut listed[0],
            "br" => &mut listed[1],
            "zstd" => &mut listed[2],
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0).max(q));
    }
    let q = |i: usize| listed[i].or(star).unwrap_or(0);
    let best = (0..3).map(q).max().unwrap_or(0);
    if best == 0 {
        return None;
    }
    // The first of gzip, br, zstd with the best q.
    let first = (0..3).find(|&i| q(i) == best)?;
    Some(Encoding::ALL[first])
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn qvalue(v: &str) -> Option<u32> {
    let (whole, fraction) = v.split_once('.').unwrap_or((v, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u32 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}
