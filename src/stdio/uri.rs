//! containerd's stdio strings: `""` (nothing), a fifo path, or a `fifo://`,
//! `file://` or `binary://` URI with %-escaped path and arguments.

use std::path::PathBuf;

use super::{Result, StdioError};

/// Where an output stream goes, decoded from containerd's string.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

/// Decodes `""`, a fifo path, `fifo://`, `file://` and `binary://` URIs.
pub fn parse_target(uri: &str) -> Result<Target> {
    let bad = |reason: &str| StdioError::BadUri { uri: uri.into(), reason: reason.into() };
    if uri.is_empty() {
        return Ok(Target::Null);
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return if uri.starts_with('/') { Ok(Target::Fifo(uri.into())) } else { Err(bad("not an absolute path or a URI")) };
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute (scheme:///abs/path)"));
    }
    // containerd escapes URI paths (a space is %20): the file is the decoded name.
    let path = percent_decode(path).ok_or_else(|| bad("malformed %-escape"))?;
    match scheme {
        "fifo" => Ok(Target::Fifo(path.into())),
        "file" => Ok(Target::File(path.into())),
        "binary" => {
            let dec = |s: &str| percent_decode(&s.replace('+', " ")).ok_or_else(|| bad("malformed %-escape"));
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(dec(k)?);
                if !v.is_empty() {
                    args.push(dec(v)?);
                }
            }
            Ok(Target::Binary { path: path.into(), args })
        }
        _ => Err(bad("unsupported scheme (want fifo, file or binary)")),
    }
}

/// Decodes %XX escapes; `None` for a malformed escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Code;

    #[test]
    fn targets_decode_like_containerd_writes_them() {
        assert_eq!(parse_target("").expect("empty"), Target::Null);
        assert_eq!(parse_target("/run/x/stdout").expect("fifo"), Target::Fifo("/run/x/stdout".into()));
        assert_eq!(parse_target("file:///var/log/c.log").expect("file"), Target::File("/var/log/c.log".into()));
        assert_eq!(
            parse_target("binary:///usr/bin/logger?id=1&verbose").expect("binary"),
            Target::Binary { path: "/usr/bin/logger".into(), args: vec!["id".into(), "1".into(), "verbose".into()] }
        );
    }

    #[test]
    fn escaped_paths_and_args_are_decoded() {
        assert_eq!(
            parse_target("file:///logs%20dir/my%20app%20%281%29.log").expect("file"),
            Target::File("/logs dir/my app (1).log".into())
        );
        assert_eq!(
            parse_target("binary:///opt/my%20logger?tag=a%20b&x=1+2").expect("binary"),
            Target::Binary { path: "/opt/my logger".into(), args: vec!["tag".into(), "a b".into(), "x".into(), "1 2".into()] }
        );
        assert_eq!(parse_target("file:///x%zz").expect_err("bad escape").code(), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn bad_uris_are_invalid_arguments() {
        for uri in ["ftp:///x", "file://relative/path", "relative", "binary://"] {
            let err = parse_target(uri).expect_err(uri);
            assert_eq!(err.code(), Code::INVALID_ARGUMENT, "{uri}");
            assert!(err.to_string().contains(uri), "message names the uri: {err}");
        }
    }
}
