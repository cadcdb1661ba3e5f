//! The command line containerd gives a shim: Go-style flags
//! (`-namespace ns`, `-debug`, `--id=x`) and an action (`start`, `delete`,
//! none for the server).

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub socket: String,
    pub bundle: String,
    pub debug: bool,
    pub version: bool,
    pub info: bool,
    pub action: String,
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if !f.action.is_empty() {
                return Err(format!("unexpected argument {arg:?} after action {:?}", f.action));
            }
            f.action = arg;
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let boolean = |v: Option<String>| -> Result<bool, String> {
            match v.as_deref() {
                None | Some("true") | Some("1") => Ok(true),
                Some("false") | Some("0") => Ok(false),
                Some(other) => Err(format!("flag -{name}: invalid boolean {other:?}")),
            }
        };
        match name {
            "debug" => f.debug = boolean(inline)?,
            "v" | "version" => f.version = boolean(inline)?,
            "info" => f.info = boolean(inline)?,
            "namespace" | "id" | "address" | "publish-binary" | "socket" | "bundle" => {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| format!("flag -{name} needs a value"))?,
                };
                match name {
                    "namespace" => f.namespace = value,
                    "id" => f.id = value,
                    "address" => f.address = value,
                    "publish-binary" => f.publish_binary = value,
                    "socket" => f.socket = value,
                    _ => f.bundle = value,
                }
            }
            other => return Err(format!("unknown flag -{other}")),
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn containerd_start_command_line() {
        let f = parse(args("-namespace default -address /run/c.sock -publish-binary /usr/bin/containerd -id c1 -debug start")).expect("parse");
        assert_eq!(f.namespace, "default");
        assert_eq!(f.id, "c1");
        assert_eq!(f.address, "/run/c.sock");
        assert!(f.debug);
        assert_eq!(f.action, "start");
    }

    #[test]
    fn equals_form_and_errors() {
        let f = parse(args("--id=x -debug=false delete")).expect("parse");
        assert_eq!(f.id, "x");
        assert!(!f.debug);
        assert!(parse(args("-id")).expect_err("missing value").contains("-id"));
        assert!(parse(args("-bogus 1")).expect_err("unknown").contains("bogus"));
    }
}
