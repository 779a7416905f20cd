//! The end of a run: the workers' counts merged into one JSON report, and
//! the samples CSV.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use crate::errors::{ERR_NAMES, N_ERR};
use crate::http::MAX_VERSION_LEN;
use std::sync::atomic::Ordering;

use crate::stats::{
    Sample, Shared, Stats, NO_VERSION, REASON_DURATION, REASON_REQUESTS, REASON_SIGNAL,
    REASON_STOP_FILE,
};

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    ms(sorted[idx] as u64)
}

pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub(crate) fn csv_safe(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        out.push(if b == b',' || b == b'"' || !(0x21..0x7f).contains(&b) {
            b'_'
        } else {
            b
        });
    }
}

pub(crate) fn write_samples(path: &Path, all: &[Stats], start_unix_us: u64) -> io::Result<()> {
    let mut rows: Vec<(&Sample, &Stats)> = Vec::new();
    for st in all {
        rows.extend(st.samples.iter().map(|s| (s, st)));
    }
    rows.sort_by_key(|(s, _)| s.start_us);
    let mut w = BufWriter::with_capacity(1 << 16, std::fs::File::create(path)?);
    w.write_all(b"start_unix_us,latency_us,method,status,version,error\n")?;
    let mut ver = Vec::with_capacity(MAX_VERSION_LEN);
    for (s, st) in rows {
        ver.clear();
        if s.version != NO_VERSION {
            csv_safe(&st.ver_names[s.version as usize], &mut ver);
        }
        write!(
            w,
            "{},{},{},{},",
            start_unix_us + s.start_us,
            s.latency_us,
            if s.post { "POST" } else { "GET" },
            s.status
        )?;
        w.write_all(&ver)?;
        w.write_all(b",")?;
        if let Some(k) = s.err {
            w.write_all(ERR_NAMES[k as usize].as_bytes())?;
        }
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// The workers' counts merged into the JSON report; also the number that
/// failed and the p50 and p99 latencies (ms), for the summary line.
pub(crate) fn summarize(
    all: &[Stats],
    sh: &Shared,
    elapsed: f64,
) -> (serde_json::Value, u64, f64, f64) {
    // Merge.
    let mut requests = 0u64;
    let mut ok = 0u64;
    let mut by_status = vec![0u64; 600];
    let mut errors = [0u64; N_ERR];
    let mut by_method = [[0u64; 2]; 2];
    let mut unexpected_version = 0u64;
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut lat: Vec<u32> = Vec::with_capacity(all.iter().map(|s| s.latencies_us.len()).sum());
    for st in all {
        requests += st.requests;
        ok += st.ok;
        for (a, b) in by_status.iter_mut().zip(&st.by_status) {
            *a += b;
        }
        for (a, b) in errors.iter_mut().zip(&st.errors) {
            *a += b;
        }
        for (a, b) in by_method.iter_mut().zip(&st.by_method) {
            a[0] += b[0];
            a[1] += b[1];
        }
        unexpected_version += st.unexpected_version;
        for (name, n) in st.ver_names.iter().zip(&st.ver_counts) {
            *versions
                .entry(String::from_utf8_lossy(name).into_owned())
                .or_insert(0) += n;
        }
        lat.extend_from_slice(&st.latencies_us);
    }
    lat.sort_unstable();
    let mut examples = serde_json::Map::new();
    for (i, name) in ERR_NAMES.iter().enumerate() {
        if let Some(ex) = all.iter().find_map(|st| st.examples[i].as_ref()) {
            examples.insert(name.to_string(), ex.clone().into());
        }
    }
    let failed = requests - ok;

    if let Some(path) = &sh.cfg.samples {
        if let Err(e) = write_samples(path, all, sh.start_unix_us) {
            eprintln!("load: cannot write samples to {}: {e}", path.display());
        }
    }

    let status_map: serde_json::Map<String, serde_json::Value> = by_status
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(s, &n)| (s.to_string(), n.into()))
        .collect();
    let error_map: serde_json::Map<String, serde_json::Value> = ERR_NAMES
        .iter()
        .zip(errors)
        .map(|(k, n)| (k.to_string(), n.into()))
        .collect();
    let (p50, p90, p99) = (
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
    );
    let max = lat.last().map(|&v| ms(v as u64)).unwrap_or(0.0);
    let stop_reason = match sh.reason.load(Ordering::Relaxed) {
        REASON_DURATION => "duration",
        REASON_REQUESTS => "requests",
        REASON_SIGNAL => "signal",
        REASON_STOP_FILE => "stop_file",
        _ => "unknown",
    };
    let rps = if elapsed > 0.0 {
        requests as f64 / elapsed
    } else {
        0.0
    };
    let report = serde_json::json!({
        "requests": requests,
        "ok": ok,
        "failed": failed,
        "by_status": status_map,
        "errors": error_map,
        "by_method": {
            "GET": {"requests": by_method[0][0], "failed": by_method[0][1]},
            "POST": {"requests": by_method[1][0], "failed": by_method[1][1]},
        },
        "versions": versions,
        "unexpected_version": unexpected_version,
        "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max},
        "duration_s": (elapsed * 1000.0).round() / 1000.0,
        "rps": (rps * 10.0).round() / 10.0,
        "error_examples": examples,
        "stop_reason": stop_reason,
    });

    (report, failed, p50, p99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_rank() {
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&us, 50.0), 50.0);
        assert_eq!(percentile(&us, 99.0), 99.0);
        assert_eq!(percentile(&us, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn csv_fields_stay_one_field() {
        let mut out = Vec::new();
        csv_safe(b"v1,\"x\" y", &mut out);
        assert_eq!(out, b"v1__x__y");
    }
}
