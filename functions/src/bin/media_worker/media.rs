//! The four functions of the `video-encode` pack, simulated: each does CPU
//! work sized by its arguments (so a benchmark sees realistic, uneven cost)
//! and answers with outputs derived only from its arguments (so a test, a
//! rerun or the Python worker get the same answers). `media_worker.py`
//! implements the same definitions; change both together.

use serde::{Deserialize, Serialize};
use stoa_functions::Failure;

/// The functions this module serves.
pub const FUNCTIONS: [&str; 4] = ["media.split", "media.encode", "media.assemble", "media.index"];

/// Mixing rounds in one unit of work: 0.7 to 1.5 ms on one core in a release
/// build (measured on the development machine). The costliest call (encoding
/// AV1) is 10 units, so every call stays under about 15 ms at scale 1; a debug
/// build is several times slower.
const ROUNDS_PER_UNIT: f64 = 230_000.0;

#[derive(Debug, Deserialize)]
pub struct SplitArgs {
    pub uri: String,
    pub chunk_seconds: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SplitResult {
    pub chunks: u32,
    pub prefix: String,
}

#[derive(Debug, Deserialize)]
pub struct EncodeArgs {
    pub uri: String,
    pub codec: String,
    pub index: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UriResult {
    pub uri: String,
}

#[derive(Debug, Deserialize)]
pub struct AssembleArgs {
    pub source: String,
    pub parts: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct IndexArgs {
    pub uri: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexResult {
    pub index: String,
}

/// Splits a source into chunks of `chunk_seconds`. The source's length is
/// made up from its URI: between 1 minute and 1 hour.
pub fn split(args: &SplitArgs, work_scale: f64) -> Result<SplitResult, Failure> {
    if args.chunk_seconds == 0 {
        return Err(Failure::fatal("chunk_seconds must be at least 1"));
    }
    let hash = fnv1a(&[&args.uri]);
    let duration_seconds = 60 + (hash % 3541) as u32;
    let chunks = duration_seconds.div_ceil(args.chunk_seconds);
    work(hash, 1 + (chunks / 100).min(3), work_scale);
    Ok(SplitResult { chunks, prefix: format!("s3://chunks/{}-{}", stem(&args.uri), hex8(hash)) })
}

/// Encodes one chunk; the codec sets the cost.
pub fn encode(args: &EncodeArgs, work_scale: f64) -> Result<UriResult, Failure> {
    if args.codec.is_empty() {
        return Err(Failure::fatal("codec is empty"));
    }
    let index = args.index.to_string();
    let hash = fnv1a(&[&args.uri, &args.codec, &index]);
    work(hash, codec_cost(&args.codec), work_scale);
    Ok(UriResult { uri: format!("s3://encoded/{}/{:05}-{}.mp4", hex8(hash), args.index, args.codec) })
}

/// Joins the encoded parts, in the order given.
pub fn assemble(args: &AssembleArgs, work_scale: f64) -> Result<UriResult, Failure> {
    if args.parts.is_empty() {
        return Err(Failure::fatal("no parts to assemble"));
    }
    let mut fields = vec![args.source.as_str()];
    fields.extend(args.parts.iter().map(String::as_str));
    let hash = fnv1a(&fields);
    work(hash, 1 + (args.parts.len() as u32 / 50).min(9), work_scale);
    Ok(UriResult { uri: format!("s3://out/{}-{}.mp4", stem(&args.source), hex8(hash)) })
}

/// Indexes an assembled file; the index sits beside it.
pub fn index(args: &IndexArgs, work_scale: f64) -> Result<IndexResult, Failure> {
    let hash = fnv1a(&[&args.uri]);
    work(hash, 2, work_scale);
    Ok(IndexResult { index: format!("{}.idx", without_extension(&args.uri)) })
}

/// Units of work to encode one chunk with `codec`.
fn codec_cost(codec: &str) -> u32 {
    match codec {
        "h264" => 4,
        "vp9" => 6,
        "hevc" | "h265" => 8,
        "av1" => 10,
        _ => 5,
    }
}

/// Burns `units` of CPU deterministically (splitmix64 rounds from `seed`).
fn work(seed: u64, units: u32, scale: f64) {
    let rounds = (f64::from(units) * ROUNDS_PER_UNIT * scale.max(0.0)) as u64;
    let mut state = seed;
    for _ in 0..rounds {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state ^= z ^ (z >> 31);
    }
    // Keeps the optimizer from deleting the loop.
    std::hint::black_box(state);
}

/// FNV-1a (64 bits) over the fields, each after the first preceded by a
/// 0x1f unit separator: simple enough to write the same in Python.
pub fn fnv1a(fields: &[&str]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (i, field) in fields.iter().enumerate() {
        let separator: &[u8] = if i > 0 { &[0x1f] } else { &[] };
        for &byte in separator.iter().chain(field.as_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

fn hex8(hash: u64) -> String {
    format!("{hash:016x}")[..8].to_owned()
}

/// The last path segment without its extension: `s3://in/movie.mov` → `movie`.
fn stem(uri: &str) -> &str {
    let name = uri.rsplit('/').next().unwrap_or(uri);
    let stem = match name.rfind('.') {
        Some(dot) if dot > 0 => &name[..dot],
        _ => name,
    };
    if stem.is_empty() {
        "media"
    } else {
        stem
    }
}

/// The URI without the extension of its last segment.
fn without_extension(uri: &str) -> &str {
    let name_start = uri.rfind('/').map_or(0, |slash| slash + 1);
    match uri[name_start..].rfind('.') {
        Some(dot) if dot > 0 => &uri[..name_start + dot],
        _ => uri,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference() {
        // Reference values of FNV-1a 64 for "" and "a".
        assert_eq!(fnv1a(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
    }

    #[test]
    fn outputs_are_derived_from_the_arguments() {
        let split = split(&SplitArgs { uri: "s3://in/movie.mov".into(), chunk_seconds: 10 }, 0.0).unwrap();
        assert!(split.prefix.starts_with("s3://chunks/movie-"), "{split:?}");
        assert!((6..=360).contains(&split.chunks), "{split:?}");

        let encoded =
            encode(&EncodeArgs { uri: "s3://chunks/movie/3.mov".into(), codec: "h264".into(), index: 3 }, 0.0);
        assert!(encoded.unwrap().uri.ends_with("/00003-h264.mp4"));

        let assembled = assemble(&AssembleArgs { source: "s3://in/movie.mov".into(), parts: vec!["a".into()] }, 0.0);
        assert!(assembled.unwrap().uri.starts_with("s3://out/movie-"));

        let indexed = index(&IndexArgs { uri: "s3://out/movie-1234.mp4".into() }, 0.0).unwrap();
        assert_eq!(indexed.index, "s3://out/movie-1234.idx");
        assert_eq!(without_extension("s3://out.d/movie"), "s3://out.d/movie");
        assert_eq!(stem("s3://in/.hidden"), ".hidden");
    }

    #[test]
    fn bad_arguments_are_fatal() {
        assert!(!split(&SplitArgs { uri: "u".into(), chunk_seconds: 0 }, 0.0).unwrap_err().is_retryable());
        assert!(!assemble(&AssembleArgs { source: "s".into(), parts: vec![] }, 0.0).unwrap_err().is_retryable());
    }
}
