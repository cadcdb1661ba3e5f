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
    /// The fd of the state a previous binary handed over (server only).
    pub upgrade_state: String,
    /// `upgrade`: the binary to upgrade to (default: the one each shim was started from).
    pub binary: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unexpected argument {arg:?} after action {action:?}")]
    Extra { arg: String, action: String },
    #[error("flag -{flag}: invalid boolean {value:?}")]
    Boolean { flag: String, value: String },
    #[error("flag -{0} needs a value")]
    NoValue(String),
    #[error("unknown flag -{0}")]
    Unknown(String),
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Flags, ArgsError> {
    let mut f = Flags::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if !f.action.is_empty() {
                return Err(ArgsError::Extra { arg, action: f.action });
            }
            f.action = arg;
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let boolean = |v: Option<String>| -> Result<bool, ArgsError> {
            match v.as_deref() {
                None | Some("true") | Some("1") => Ok(true),
                Some("false") | Some("0") => Ok(false),
                Some(other) => Err(ArgsError::Boolean { flag: name.into(), value: other.into() }),
            }
        };
        match name {
            "debug" => f.debug = boolean(inline)?,
            "v" | "version" => f.version = boolean(inline)?,
            "info" => f.info = boolean(inline)?,
            "namespace" | "id" | "address" | "publish-binary" | "socket" | "bundle" | "upgrade-state" | "binary" => {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| ArgsError::NoValue(name.into()))?,
                };
                match name {
                    "namespace" => f.namespace = value,
                    "id" => f.id = value,
                    "address" => f.address = value,
                    "publish-binary" => f.publish_binary = value,
                    "socket" => f.socket = value,
                    "upgrade-state" => f.upgrade_state = value,
                    "binary" => f.binary = value,
                    _ => f.bundle = value,
                }
            }
            other => return Err(ArgsError::Unknown(other.into())),
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
        let f =
            parse(args("-namespace default -address /run/c.sock -publish-binary /usr/bin/containerd -id c1 -debug start")).expect("parse");
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
        assert_eq!(parse(args("-id")), Err(ArgsError::NoValue("id".into())));
        assert_eq!(parse(args("-bogus 1")).map_err(|e| e.to_string()), Err("unknown flag -bogus".into()));
        assert!(matches!(parse(args("-debug=maybe")), Err(ArgsError::Boolean { .. })));
    }
}
